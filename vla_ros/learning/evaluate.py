"""
``vla-ros eval MODEL_DIR``: closed-loop success of an exported policy, in process.

The exported ``policy.onnx`` (the file inference_node runs, on ONNX Runtime) drives the
simulated robot through the nodes' chain (detokenize → compose → ControlLoop → MuJoCo),
faster than real time, on seeds never used for collection (``EVAL_SEED_START`` and up).
Per task: successes, Wilson 95 % interval, mean time to success, failed seeds; a GIF of
every failure; everything in ``OUT/eval.json``.

Phrasings: ``canonical`` (the task's own instruction), ``train`` (a random training
synonym), ``heldout`` (paraphrases training never saw), or ``--instructions FILE`` (your
templates, ``{task: [template, ...]}`` with ``{colour}``/``{side}``/``{action}``/
``{state}``). Combinations: ``seen`` skips the (task, colour) pairs kept out of training,
``heldout`` evaluates only those pairs. ``--grounding sim_tasks`` grounds every instruction
first, as inference_node's ``instruction_grounding`` does (a refused one fails its episode).
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import instructions
from .collect import EVAL_SEED_START
from .learner import LearnerDecider
from .progress import Progress
from ..core.action_space import ActionSpace, ActionTokenizer
from ..paths import default_action_space_file
from ..runtime.grounding import grounding_from_parameter, GroundingError
from ..sim.pipeline import Observation, Pipeline
from ..sim.tasks import TASK_NAMES

PHRASINGS = ('canonical', 'train', 'heldout')
COMBOS = ('seen', 'heldout', 'all')


def wilson(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval of a success rate (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def parse_seeds(text: str) -> Tuple[int, int]:
    """Parse ``A:B`` (B exclusive)."""
    a, _, b = text.partition(':')
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        raise ValueError(f'--seeds expects A:B, found {text!r}') from None
    if not 0 <= lo < hi:
        raise ValueError(f'--seeds expects 0 <= A < B, found {text!r}')
    return lo, hi


def _save_gif(frames: List[np.ndarray], path: str, instruction: str):
    import imageio
    os.makedirs(os.path.dirname(path), exist_ok=True)
    small = [f[::2, ::2] for f in frames]
    imageio.mimsave(path, small, duration=0.2, loop=0)
    with open(path + '.txt', 'w', encoding='utf-8') as stream:
        stream.write(instruction + '\n')


def wanted(task: str, params: Dict, combos: str) -> bool:
    """Tell whether an episode's (task, colour) belongs to ``combos`` (seen/heldout/all)."""
    held = instructions.is_held_out(task, params)
    return not ((combos == 'seen' and held) or (combos == 'heldout' and not held))


def evaluation_seeds(env, task: str, count: int, start: int = EVAL_SEED_START,
                     combos: str = 'seen') -> List[int]:
    """Return the first ``count`` seeds from ``start`` that ``evaluate_policy`` would run."""
    seeds, seed = [], start
    while len(seeds) < count:
        if wanted(task, env.reset(task, seed).params, combos):
            seeds.append(seed)
        seed += 1
    return seeds


def evaluate_policy(model_dir: str, tasks: Sequence[str], episodes: int,
                    seeds: Tuple[int, int], phrasing: str = 'canonical',
                    templates: Optional[Dict[str, List[str]]] = None, combos: str = 'seen',
                    out: Optional[str] = None, action_space_file: Optional[str] = None,
                    params_file: Optional[str] = None, gifs: bool = True,
                    quiet: bool = False, chunk_execute: int = 0,
                    latency_ms: float = 0.0, frame_age_ms: float = 0.0,
                    max_in_flight: int = 0, served_chunks: bool = False,
                    grounding: str = '') -> Dict:
    """Closed-loop evaluation; see the module docstring. Returns the JSON-able results."""
    space = ActionSpace.from_yaml(action_space_file or default_action_space_file())
    tokenizer = ActionTokenizer(space)
    pipeline = Pipeline.from_params(tokenizer, params_file)
    env = pipeline.env
    robot = env.robot
    learner = LearnerDecider(model_dir, space, chunk_execute=chunk_execute)
    grounder = (grounding_from_parameter(grounding, learner.policy.text_encoder.encode)
                if grounding else None)
    latency_ticks = int(round(latency_ms / 1e3 / pipeline.config.control_period))
    age_ticks = int(round(frame_age_ms / 1e3 / pipeline.config.control_period))
    rng = np.random.default_rng(seeds[0])
    results: Dict = {}
    progress = Progress(len(tasks) * episodes, 'eval', quiet=quiet)
    start = time.monotonic()
    for task in tasks:
        runs = []
        seed = seeds[0]
        while len(runs) < episodes and seed < seeds[1]:
            episode = env.reset(task, seed)
            if not wanted(task, episode.params, combos):
                seed += 1
                continue
            values = instructions.slots(task, episode.params)
            if templates is not None:
                if task not in templates:
                    raise ValueError(f'instructions file has no templates for {task!r}')
                text = instructions.fill(str(rng.choice(templates[task])), values)
            elif phrasing == 'train':
                text = str(rng.choice(instructions.training_phrasings(task, episode.params)))
            elif phrasing == 'heldout':
                text = instructions.fill(str(rng.choice(instructions.HELD_OUT[task])), values)
            else:
                text = episode.instruction
            said = text
            if grounder is not None:  # as inference_node's instruction_grounding
                try:
                    text = grounder.ground(said).text
                except GroundingError:  # refused: the robot does not move, a failure
                    runs.append({'seed': seed, 'success': False, 'sim_time': 0.0,
                                 'instruction': said, 'refused': True})
                    seed += 1
                    progress.step()
                    continue
            learner.instruction = text
            learner.reset()
            frames: List[np.ndarray] = []

            def decide(obs: Observation) -> np.ndarray:
                frames.append(obs.image)
                return learner.whole_chunk(obs) if served_chunks else learner(obs)

            status = pipeline.run_episode(decide, render=True, latency_ticks=latency_ticks,
                                          frame_age_ticks=age_ticks,
                                          max_in_flight=max_in_flight,
                                          whole_chunks=served_chunks)
            runs.append({'seed': seed, 'success': bool(status['success']),
                         'sim_time': status['sim_time'], 'instruction': said,
                         'grounded': text})
            if not status['success'] and gifs and out:
                _save_gif(frames, os.path.join(out, 'failures', f'{task}_{seed}.gif'), said)
            seed += 1
            progress.step()
            ok = sum(r['success'] for r in runs)
            progress.note(f'{task} {ok}/{len(runs)}')
        ok = [r for r in runs if r['success']]
        lo, hi = wilson(len(ok), len(runs))
        results[task] = {
            'episodes': len(runs), 'successes': len(ok),
            'success_rate': len(ok) / len(runs) if runs else None,
            'wilson95': [round(lo, 4), round(hi, 4)],
            'mean_time_to_success': (round(float(np.mean([r['sim_time'] for r in ok])), 3)
                                     if ok else None),
            'failed_seeds': [r['seed'] for r in runs if not r['success']],
            'instructions': sorted({r['instruction'] for r in runs})[:20],
            'refused': sum(bool(r.get('refused')) for r in runs),
        }
    progress.close()
    robot.close()
    rates = [r['success_rate'] for r in results.values() if r['success_rate'] is not None]
    summary = {
        'model_dir': os.path.abspath(model_dir),
        'weights_sha256': learner.policy.metadata.get('vla_ros.weights_sha256'),
        'settings': {'tasks': list(tasks), 'episodes': episodes, 'seeds': list(seeds),
                     'phrasing': 'file' if templates is not None else phrasing,
                     'combinations': combos, 'chunk_steps': learner.policy.chunk_steps,
                     'chunk_execute': learner.runner.execute,
                     'latency_ms': latency_ticks * pipeline.config.control_period * 1e3,
                     'frame_age_ms': age_ticks * pipeline.config.control_period * 1e3,
                     'max_in_flight': max_in_flight, 'served_chunks': served_chunks,
                     'grounding': grounding},
        'tasks': results,
        'mean_success_rate': round(float(np.mean(rates)), 4) if rates else None,
        'model_ms_p50': round(float(np.median(learner.model_ms)), 3) if learner.model_ms
        else None,
        'wall_seconds': round(time.monotonic() - start, 1),
    }
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, 'eval.json'), 'w', encoding='utf-8') as stream:
            json.dump(summary, stream, indent=2, sort_keys=True)
            stream.write('\n')
    return summary


def format_results(summary: Dict) -> str:
    """Plain-text table with Wilson intervals."""
    lines = [f'{"task":16s} {"success":>9s} {"rate":>7s}  {"95% interval":>15s}  mean t (s)']
    for task, r in summary['tasks'].items():
        if not r['episodes']:
            lines.append(f'{task:16s} {"no episodes":>9s}')
            continue
        t = r['mean_time_to_success']
        lines.append(f'{task:16s} {r["successes"]:4d}/{r["episodes"]:<4d} '
                     f'{100 * r["success_rate"]:6.1f}%  [{100 * r["wilson95"][0]:5.1f}, '
                     f'{100 * r["wilson95"][1]:5.1f}]%  {("%.2f" % t) if t else "-"}')
    if summary['mean_success_rate'] is not None:
        lines.append(f'mean success {100 * summary["mean_success_rate"]:.1f}% '
                     f'(policy p50 {summary["model_ms_p50"]} ms, wall '
                     f'{summary["wall_seconds"]} s)')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros eval``."""
    parser = argparse.ArgumentParser(prog='vla-ros eval', description=__doc__.split('\n')[1])
    parser.add_argument('model_dir', help='exported model folder (policy.onnx, ...)')
    parser.add_argument('--tasks', nargs='+', default=TASK_NAMES, choices=TASK_NAMES)
    parser.add_argument('--episodes', type=int, default=50, help='episodes per task')
    parser.add_argument('--seeds', default=f'{EVAL_SEED_START}:{EVAL_SEED_START + 100000}',
                        help='seed range A:B to draw episodes from (default: the '
                        'evaluation seeds, never used for collection)')
    parser.add_argument('--phrasing', default='canonical', choices=PHRASINGS)
    parser.add_argument('--instructions', default=None, metavar='FILE',
                        help='your templates per task (YAML/JSON); overrides --phrasing')
    parser.add_argument('--grounding', default='', metavar='SOURCE',
                        help="ground each instruction first, as inference_node's "
                        'instruction_grounding: sim_tasks or a templates file (a refused '
                        'instruction is a failed episode); default: none')
    parser.add_argument('--combinations', default='seen', choices=COMBOS,
                        help='(task, colour) pairs: seen in training, held out, or all')
    parser.add_argument('--out', default=None, help='folder for eval.json and failure GIFs')
    parser.add_argument('--action-space', default=None)
    parser.add_argument('--params-file', default=None)
    parser.add_argument('--no-gifs', action='store_true')
    parser.add_argument('--quiet', action='store_true')
    parser.add_argument('--chunk-execute', type=int, default=0, metavar='M',
                        help='chunked models: steps of each predicted chunk executed before '
                        'the next inference (default 0: all of them)')
    parser.add_argument('--latency-ms', type=float, default=0.0, metavar='MS',
                        help='tokens reach the detokenizer this long after their frame '
                        '(rounded to control ticks; the ROS graph adds 40-160 ms, a remote '
                        "policy its round trip); default 0: on the frame's own tick")
    parser.add_argument('--frame-age-ms', type=float, default=0.0, metavar='MS',
                        help='the policy sees the image taken this long before its decision '
                        '(rounded to control ticks), with the current state input')
    parser.add_argument('--max-in-flight', type=int, default=0, metavar='N',
                        help='with --latency-ms: skip a policy tick while N decisions are on '
                        "their way (the remote backend's max_in_flight); 0: never skip")
    parser.add_argument('--served-chunks', action='store_true',
                        help='chunked models: each chunk travels as one reply (--latency-ms '
                        'once per chunk), its steps run one per policy period from its '
                        'arrival and the next frame waits for them, as inference_node runs '
                        'a served chunked model (use with --max-in-flight 1)')
    args = parser.parse_args(argv)
    if not (args.latency_ms >= 0 and args.frame_age_ms >= 0 and args.max_in_flight >= 0):
        print('vla-ros eval: --latency-ms, --frame-age-ms and --max-in-flight must be >= 0',
              file=sys.stderr)
        return 2
    try:
        seeds = parse_seeds(args.seeds)
        templates = (instructions.load_templates(args.instructions)
                     if args.instructions else None)
        summary = evaluate_policy(args.model_dir, args.tasks, args.episodes, seeds,
                                  args.phrasing, templates, args.combinations, args.out,
                                  args.action_space, args.params_file, not args.no_gifs,
                                  args.quiet, args.chunk_execute, args.latency_ms,
                                  args.frame_age_ms, args.max_in_flight,
                                  args.served_chunks, args.grounding)
    except ValueError as exc:
        print(f'vla-ros eval: {exc}', file=sys.stderr)
        return 2
    print(format_results(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
