"""
`vla-ros demo`: the closed loop in simulation, headless, with a report folder.

Starts sim_node and the four pipeline nodes as separate processes (``tools/up.py``), all on
sim time, runs a few seeded episodes of every task and writes ``runs/<timestamp>/``:
``summary.json`` and ``summary.md`` (success per task, rates, real-time factor), a video of
the head camera with the instruction overlaid (MP4 when imageio has an ffmpeg backend,
otherwise GIF), plots of commanded vs measured arm joints and base velocity, and the node
logs. ``--expert`` replaces inference_node by expert_node (the scripted expert, deciding
from sim_node's ground truth on ``sim/state``), so the same detokenizer → interpolation →
sim path runs with actions that solve the tasks.

Between episodes the demo closes the motion gate (``vla/enable`` false), resets the sim
(``sim/reset`` after setting its ``task``/``seed`` parameters) and opens the gate again,
which makes interpolation_node re-sync to the new measured joint state.
"""

import argparse
import datetime
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from .demo_report import pipeline_figures, rate, summary_markdown, write_plots, write_video
from ..graph import dds_profile_env, pipeline_nodes
from ..paths import default_model_dir, default_params_file
from ..processes import ProcessGroup
from ..sim.tasks import TASK_NAMES, TASKS
from ..testing.sim_probe import SimProbe, VIDEO_EVERY

DEFAULT_EPISODES = 1


def model_trained(policy_path: str) -> Optional[bool]:
    """Read ``vla_ros.trained`` from the ONNX metadata (None when it cannot be read)."""
    try:
        import onnx
        model = onnx.load(policy_path, load_external_data=False)
    except Exception:
        return None
    meta = {p.key: p.value for p in model.metadata_props}
    if 'vla_ros.trained' not in meta:
        return None
    return meta['vla_ros.trained'].strip().lower() == 'true'


def wait_ready(rec: SimProbe, group: ProcessGroup):
    """Wait until sim_node runs and action tokens flow, gate closed; RuntimeError if not."""
    ready = rec.wait_for(lambda: len(rec.state_times) > 10 and rec.status, 60.0)
    if not ready:
        raise RuntimeError('sim_node did not come up within 60 s')
    rec.set_enabled(False)
    # The policy (or expert) is ready once action tokens flow.
    if not rec.wait_for(lambda: rec.tokens > 0 or group.failed(), 180.0):
        raise RuntimeError('no vla/action_tokens within 180 s; is inference_node running?')
    problem = group.failed()
    if problem:
        raise RuntimeError(problem)


def run_episode(rec: SimProbe, group: ProcessGroup, task: str, seed: int,
                real_time_factor: float) -> Dict:
    """
    Run one episode (reset, gate open, until sim_node says done); return its result.

    The result: task, seed, instruction, success, episode_time (sim s), start_sim_time
    (sim time when the gate opened), end_sim_time (the episode's end in sim time) and
    real_time_factor (sim_node's). RuntimeError when a node process died.
    """
    limit = TASKS[task].time_limit
    episode = rec.start_episode(task, seed)
    start_sim = rec.sim_now
    status = rec.wait_done(task, seed, (limit + 2.0) / real_time_factor + 15.0)
    problem = group.failed()
    if problem:
        raise RuntimeError(problem)
    episode_time = float(status.get('episode_time', 0.0))
    return {'task': task, 'seed': seed, 'instruction': episode['instruction'],
            'success': bool(status.get('success')), 'episode_time': episode_time,
            'start_sim_time': start_sim,
            'end_sim_time': float(episode.get('sim_time', start_sim)) + episode_time,
            'real_time_factor': float(status.get('real_time_factor', 0.0))}


def episode_line(result: Dict) -> str:
    """One line for a finished episode."""
    return (f'{result["task"]:16s} seed {result["seed"]:3d} '
            f'{"SUCCESS" if result["success"] else "fail   "} '
            f'{result["episode_time"]:5.1f} s  "{result["instruction"]}"  '
            f'(rtf {result["real_time_factor"]:.2f})')


def main(argv: Sequence[str] = None) -> int:
    """Run the demo; exit status 0 when it ran (success rates are reported, not judged)."""
    parser = argparse.ArgumentParser(prog='vla-ros demo', description=__doc__.split('\n')[0])
    parser.add_argument('--expert', action='store_true',
                        help='scripted expert instead of the policy (replaces inference_node)')
    parser.add_argument('--episodes', type=int, default=DEFAULT_EPISODES,
                        help='episodes per task (seeds first-seed, first-seed+1, ...)')
    parser.add_argument('--first-seed', type=int, default=100000,
                        help='first seed (default: the evaluation seeds, never used for '
                        'collecting training data)')
    parser.add_argument('--tasks', nargs='+', default=TASK_NAMES, choices=TASK_NAMES)
    parser.add_argument('--model-dir', default=default_model_dir(),
                        help='exported policy folder (policy.onnx, text_encoder.onnx, ...)')
    parser.add_argument('--params-file', default=default_params_file())
    parser.add_argument('--grounding', default='sim_tasks', metavar='SOURCE',
                        help="inference_node's instruction_grounding (default sim_tasks: "
                        'the trained phrasing an instruction means goes to the policy); '
                        "'' to hand it the instructions as they are")
    parser.add_argument('--real-time-factor', type=float, default=1.0,
                        help='sim seconds per wall second (the graph runs on sim time)')
    parser.add_argument('--out', default='', help='run folder (default runs/<timestamp>)')
    parser.add_argument('--video-episodes', type=int, default=1,
                        help='episodes per task that go into the video')
    parser.add_argument('--verbose', action='store_true', help='forward node logs')
    parser.add_argument('--dds-profile', action=argparse.BooleanOptionalAction, default=True,
                        help='shipped Fast DDS profile (large shared memory) for the nodes and '
                             'this process (default); --no-dds-profile: Fast DDS defaults')
    args = parser.parse_args(argv)

    started = datetime.datetime.now()
    out = args.out or os.path.join('runs', started.strftime('%Y%m%d-%H%M%S'))
    os.makedirs(out, exist_ok=True)
    policy = os.path.join(args.model_dir, 'policy.onnx')
    trained = None
    overrides: Dict[str, Dict[str, object]] = {
        'sim_node': {'real_time_factor': float(args.real_time_factor)}}
    if args.expert:
        source = "scripted expert (expert_node, from sim_node's ground truth)"
        note = ''
    else:
        if not os.path.isfile(policy):
            print(f'vla-ros demo: no policy at {policy}; run `make models` (or pass '
                  '--model-dir, or --expert)', file=sys.stderr)
            return 2
        trained = model_trained(policy)
        overrides['inference_node'] = {'model_file_path': policy,
                                       'instruction_grounding': args.grounding}
        source = f'policy {policy}'
        note = ('' if trained else
                'The model is UNTRAINED (metadata vla_ros.trained is not "true"): its actions '
                'are seeded random weights, so task success near 0 % is expected. Use --expert '
                'to see the tasks solved through the same pipeline.')
    if note:
        print(f'vla-ros demo: {note}')
    specs = pipeline_nodes(with_sim=True, overrides=overrides, expert=bool(args.expert))
    print(f'vla-ros demo: starting {", ".join(s.name for s in specs)} (sim time, real-time '
          f'factor {args.real_time_factor:g}); writing {out}/', flush=True)

    t_start = time.monotonic()
    group = ProcessGroup(args.params_file, use_sim_time=True, quiet=not args.verbose,
                         dds_profile=args.dds_profile)
    # This process subscribes to the camera too: same transport (read at rclpy.init).
    os.environ.update(dds_profile_env(os.environ, args.dds_profile))
    episodes: List[Dict] = []
    rec = None
    code = 0
    try:
        group.start_all(specs)
        rec = SimProbe(args.tasks)
        wait_ready(rec, group)
        print(f'vla-ros demo: graph ready after {time.monotonic() - t_start:.1f} s', flush=True)
        measure_from = time.monotonic()
        tokens_from = rec.tokens
        for task in args.tasks:
            for i in range(args.episodes):
                seed = args.first_seed + i
                rec.recording_video = i < args.video_episodes
                result = run_episode(rec, group, task, seed, args.real_time_factor)
                rec.recording_video = False
                episodes.append(result)
                print(f'  [{len(episodes):3d}/{len(args.tasks) * args.episodes}] '
                      f'{episode_line(result)}', flush=True)
        wall = time.monotonic() - measure_from
        rates = {'camera': rate(rec.image_times, measure_from),
                 'joint_states': rate(rec.state_times, measure_from),
                 'action_tokens': (rec.tokens - tokens_from) / wall if wall > 0 else 0.0,
                 'arm_commands': rate(rec.arm_times, measure_from)}
        pipeline = pipeline_figures(rec.diagnostics)
        rtf = float(rec.status.get('real_time_factor', 0.0))
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f'vla-ros demo: stopped early: {exc}', file=sys.stderr)
        rates = {'camera': 0.0, 'joint_states': 0.0, 'action_tokens': 0.0, 'arm_commands': 0.0}
        pipeline = {}
        rtf = 0.0
        code = 1
    finally:
        if rec is not None:
            rec.recording_video = False
        codes = group.stop()
    with open(os.path.join(out, 'nodes.log'), 'w', encoding='utf-8') as stream:
        for name, lines in group.lines.items():
            stream.writelines(f'[{name}] {line}\n' for line in lines)
    files = ['summary.json', 'summary.md', 'nodes.log']
    if rec is not None:
        print('vla-ros demo: writing video and plots', flush=True)
        files += write_video(rec.frames, out, fps=12.5 / VIDEO_EVERY) + write_plots(
            rec, out, episodes)
        rec.close()
    tasks = {}
    for task in args.tasks:
        runs = [e for e in episodes if e['task'] == task]
        ok = sum(e['success'] for e in runs)
        tasks[task] = {'episodes': len(runs), 'successes': ok,
                       'success_rate': ok / len(runs) if runs else 0.0}
    summary = {
        'started': started.isoformat(timespec='seconds'),
        'wall_time_s': time.monotonic() - t_start,
        'action_source': source, 'model_trained': trained, 'model_note': note,
        'real_time_factor_requested': args.real_time_factor, 'real_time_factor': rtf,
        'rates_hz': rates, 'pipeline': pipeline, 'tasks': tasks, 'episodes': episodes,
        'node_exit_codes': codes,
        'files': files, 'completed': code == 0,
    }
    with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as stream:
        json.dump(summary, stream, indent=2)
    with open(os.path.join(out, 'summary.md'), 'w', encoding='utf-8') as stream:
        stream.write(summary_markdown(summary))
    print(summary_markdown(summary))
    print(f'vla-ros demo: report in {out}/')
    return code


if __name__ == '__main__':
    sys.exit(main())
