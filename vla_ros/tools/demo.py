"""
`vla-ros demo`: the closed loop in simulation, headless, with a report folder.

Starts sim_node and the four pipeline nodes as separate processes (``tools/up.py``), all on
sim time, runs a few seeded episodes of every task and writes ``runs/<timestamp>/``:
``summary.json`` and ``summary.md`` (success per task, rates, real-time factor), a video of
the head camera with the instruction overlaid (MP4 when imageio has an ffmpeg backend,
otherwise GIF), plots of commanded vs measured arm joints and base velocity, and the node
logs. ``--expert`` replaces inference_node by the scripted expert inside sim_node (it
publishes ``vla/action_tokens``), so the same detokenizer → interpolation → sim path runs
with actions that solve the tasks.

Between episodes the demo closes the motion gate (``vla/enable`` false), resets the sim
(``sim/reset`` after setting its ``task``/``seed`` parameters) and opens the gate again,
which makes interpolation_node re-sync to the new measured joint state.
"""

import argparse
import datetime
import json
import os
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from vla_ros_interfaces.msg import ActionTokens

from .up import ProcessGroup
from ..graph import dds_profile_env, pipeline_nodes
from ..nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from ..paths import default_model_dir, default_params_file
from ..sim.tasks import TASK_NAMES, TASKS

DEFAULT_EPISODES = 1
VIDEO_EVERY = 2          # keep every 2nd camera frame (12.5 Hz → ~6 fps) for the video
VIDEO_MAX_FRAMES = 900


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


class Recorder:
    """A node in the demo process: records the graph and drives the episodes."""

    def __init__(self, video_tasks: Sequence[str]):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TwistStamped
        from nav_msgs.msg import Odometry
        from rcl_interfaces.srv import SetParameters
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import SetBool, Trigger

        rclpy.init()
        self.rclpy = rclpy
        self.node = node = Node('vla_demo')
        self.lock = threading.Lock()
        self.sim_now = 0.0
        self.status: Dict = {}
        self.tokens = 0
        self.video_tasks = set(video_tasks)
        self.recording_video = False
        self.frames: List = []
        self.frame_count = 0
        self.image_times: List[float] = []
        self.state_times: List[float] = []
        self.arm_times: List[float] = []
        self.diagnostics: Dict[str, Dict[str, str]] = {}
        self.measured: List = []     # (sim t, arm q[7])
        self.commanded: List = []    # (sim t, arm q[7])
        self.base_cmd: List = []     # (sim t, vx, vy, wz)
        self.base_meas: List = []
        self.instruction = ''
        self._state_skip = 0
        node.create_subscription(Image, 'camera/image_raw', self._on_image, SENSOR_QOS)
        node.create_subscription(JointState, 'joint_states', self._on_joints, SENSOR_QOS)
        node.create_subscription(Float64MultiArray, 'arm_controller/commands', self._on_arm,
                                 COMMAND_QOS)
        node.create_subscription(TwistStamped, 'cmd_vel', self._on_cmd_vel, COMMAND_QOS)
        node.create_subscription(Odometry, 'odom', self._on_odom, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        node.create_subscription(String, 'sim/task_status', self._on_status, LATCHED_QOS)
        node.create_subscription(ActionTokens, 'vla/action_tokens', self._on_tokens,
                                 COMMAND_QOS)
        self.enable = node.create_client(SetBool, 'vla/enable')
        self.reset = node.create_client(Trigger, 'sim/reset')
        self.set_params = node.create_client(SetParameters, 'sim_node/set_parameters')
        self._types = {'SetBool': SetBool, 'Trigger': Trigger, 'SetParameters': SetParameters}
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self._running and self.rclpy.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                break

    # -- callbacks ------------------------------------------------------------------------
    def _on_image(self, msg):
        with self.lock:
            self.image_times.append(time.monotonic())
            self.frame_count += 1
            if (self.recording_video and self.frame_count % VIDEO_EVERY == 0
                    and len(self.frames) < VIDEO_MAX_FRAMES):
                image = np.frombuffer(bytes(msg.data), np.uint8).reshape(
                    msg.height, msg.width, 3)
                self.frames.append((image.copy(), self.instruction,
                                    dict(self.status)))

    def _on_joints(self, msg):
        # joint_states carry sim time; the demo keeps no /clock subscription of its own
        # (250 more callbacks a second in this process would slow the graph it measures).
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.sim_now = t
            self.state_times.append(time.monotonic())
            self._state_skip += 1
            if self._state_skip % 5 == 0:  # 50 Hz is plenty for the plots
                self.measured.append((t, np.array(msg.position[:7])))

    def _on_arm(self, msg):
        with self.lock:
            self.arm_times.append(time.monotonic())
            self.commanded.append((self.sim_now, np.array(msg.data)))

    def _on_diagnostics(self, msg):
        with self.lock:
            for status in msg.status:
                if status.hardware_id == 'vla_ros':
                    self.diagnostics[status.name.split('/')[-1]] = {
                        kv.key: kv.value for kv in status.values}

    def _on_cmd_vel(self, msg):
        with self.lock:
            tw = msg.twist
            self.base_cmd.append((self.sim_now, tw.linear.x, tw.linear.y, tw.angular.z))

    def _on_odom(self, msg):
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        tw = msg.twist.twist
        with self.lock:
            self.base_meas.append((t, tw.linear.x, tw.linear.y, tw.angular.z))

    def _on_status(self, msg):
        self.status = json.loads(msg.data)

    def _on_tokens(self, msg):
        self.tokens += 1

    # -- driving ----------------------------------------------------------------------------
    def call(self, client, request, timeout: float = 15.0):
        """Call a service from the main thread (the executor thread spins)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f'service {client.srv_name} is not available after {timeout} s')
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f'service {client.srv_name} did not answer in {timeout} s')
            time.sleep(0.01)
        return future.result()

    def set_enabled(self, enabled: bool):
        """Open or close the interpolation node's motion gate."""
        request = self._types['SetBool'].Request(data=enabled)
        return self.call(self.enable, request)

    def start_episode(self, task: str, seed: int) -> Dict:
        """Gate closed → sim parameters → sim/reset → gate open; returns the episode."""
        from rclpy.parameter import Parameter
        self.set_enabled(False)
        request = self._types['SetParameters'].Request()
        request.parameters = [Parameter('task', value=task).to_parameter_msg(),
                              Parameter('seed', value=int(seed)).to_parameter_msg()]
        result = self.call(self.set_params, request)
        if not all(r.successful for r in result.results):
            raise RuntimeError(f'sim_node refused task={task} seed={seed}: '
                               f'{[r.reason for r in result.results]}')
        response = self.call(self.reset, self._types['Trigger'].Request())
        if not response.success:
            raise RuntimeError(f'sim/reset failed: {response.message}')
        episode = json.loads(response.message)
        self.instruction = episode['instruction']
        # Let a few post-reset joint_states reach interpolation_node, then open the gate:
        # opening re-syncs its commanded state to the measured one.
        time.sleep(0.1)
        self.set_enabled(True)
        return episode

    def wait_done(self, task: str, seed: int, timeout: float) -> Dict:
        """Block until sim/task_status says this episode is done (or the wall timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status
            if s.get('task') == task and s.get('seed') == seed and s.get('done'):
                return dict(s)
            time.sleep(0.05)
        s = dict(self.status)
        s['done'] = False
        s['timed_out_wall'] = True
        return s

    def wait_for(self, predicate, timeout: float) -> bool:
        """Poll ``predicate`` until true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self):
        """Stop spinning and shut rclpy down."""
        self._running = False
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _rate(times: List[float], since: float) -> float:
    t = [x for x in times if x >= since]
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 and t[-1] > t[0] else 0.0


def _overlay(image: np.ndarray, instruction: str, status: Dict) -> np.ndarray:
    from PIL import Image as PILImage, ImageDraw, ImageFont
    canvas = PILImage.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw.rectangle((0, 0, image.shape[1], 20), fill=(0, 0, 0))
    draw.text((4, 3), instruction, fill=(255, 255, 255), font=font)
    if status:
        ok = status.get('success')
        text = f't={status.get("episode_time", 0):.1f}s' + ('  success' if ok else '')
        draw.rectangle((0, image.shape[0] - 20, image.shape[1], image.shape[0]), fill=(0, 0, 0))
        draw.text((4, image.shape[0] - 17), text, fill=(120, 255, 120) if ok else (230, 230, 230),
                  font=font)
    return np.asarray(canvas)


def write_video(frames, out_dir: str, fps: float) -> Optional[str]:
    """MP4 if imageio has an ffmpeg/pyav backend, else GIF; returns the file name."""
    import imageio
    if not frames:
        return None
    images = [_overlay(img, text, status) for img, text, status in frames]
    mp4 = os.path.join(out_dir, 'camera.mp4')
    try:
        imageio.mimsave(mp4, images, fps=fps)
        return 'camera.mp4'
    except Exception:  # no ffmpeg backend here: GIF needs only Pillow
        if os.path.exists(mp4):
            os.remove(mp4)
    gif = os.path.join(out_dir, 'camera.gif')
    imageio.mimsave(gif, images, duration=1.0 / fps, loop=0)
    return 'camera.gif'


def _finish(plt, fig, axes, out_dir: str, name: str, title: str, xlabel: str) -> str:
    """Label, save and close one figure; return its file name."""
    axes[0].legend(loc='upper right', fontsize=8)
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=90)
    plt.close(fig)
    return name


def write_plots(rec: Recorder, out_dir: str, episodes: List[Dict]) -> List[str]:
    """Commanded vs measured arm joints and base velocity, against sim time."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    files = []
    with rec.lock:
        measured, commanded = list(rec.measured), list(rec.commanded)
        base_cmd, base_meas = list(rec.base_cmd), list(rec.base_meas)
    if measured:
        fig, axes = plt.subplots(7, 1, figsize=(11, 13), sharex=True)
        tm = np.array([t for t, _ in measured])
        qm = np.array([q for _, q in measured])
        tc = np.array([t for t, _ in commanded]) if commanded else np.zeros(0)
        qc = np.array([q for _, q in commanded]) if commanded else np.zeros((0, 7))
        for j, ax in enumerate(axes):
            ax.plot(tm, qm[:, j], lw=1.0, label='measured (joint_states)')
            if len(tc):
                ax.plot(tc, qc[:, j], lw=0.8, ls='--', label='commanded (arm_controller)')
            ax.set_ylabel(f'joint {j + 1} (rad)')
            for e in episodes:
                ax.axvline(e['start_sim_time'], color='0.7', lw=0.6)
        files.append(_finish(plt, fig, axes, out_dir, 'arm_joints.png',
                             'Arm: commanded vs measured joint positions',
                             'sim time (s); grey lines: episode starts'))
    if base_meas:
        fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
        bm = np.array(base_meas)
        bc = np.array(base_cmd) if base_cmd else np.zeros((0, 4))
        for i, (ax, name) in enumerate(zip(axes, ('vx (m/s)', 'vy (m/s)', 'wz (rad/s)'))):
            ax.plot(bm[:, 0], bm[:, i + 1], lw=1.0, label='measured (odom)')
            if len(bc):
                ax.plot(bc[:, 0], bc[:, i + 1], lw=0.8, ls='--', label='commanded (cmd_vel)')
            ax.set_ylabel(name)
        files.append(_finish(plt, fig, axes, out_dir, 'base_velocity.png',
                             'Base: commanded vs measured velocity (base frame)',
                             'sim time (s)'))
    return files


def summary_markdown(summary: Dict) -> str:
    """Human-readable report."""
    lines = ['# vla_ros closed-loop demo', '']
    lines.append(f'- when: {summary["started"]}  (wall {summary["wall_time_s"]:.0f} s)')
    lines.append(f'- actions from: {summary["action_source"]}')
    if summary['model_note']:
        lines.append(f'- **{summary["model_note"]}**')
    lines.append(f'- real-time factor (sim): requested {summary["real_time_factor_requested"]}'
                 f', achieved {summary["real_time_factor"]:.2f}')
    r = summary['rates_hz']
    lines.append(f'- rates seen by the demo (wall Hz): camera/image_raw {r["camera"]:.1f}, '
                 f'joint_states {r["joint_states"]:.1f}, vla/action_tokens '
                 f'{r["action_tokens"]:.2f}, arm_controller/commands {r["arm_commands"]:.2f}')
    f = summary['pipeline']
    if f:
        lines.append(
            '- pipeline, from the node diagnostics (sim clock, 4 ms /clock steps): inference '
            f'{f["inference_rate_hz"]} Hz, model run p50/p99 {f["model_ms_p50"]}/'
            f'{f["model_ms_p99"]} ms; control {f["control_rate_hz"]} Hz, period jitter p99 '
            f'{f["control_jitter_ms_p99"]} ms; camera stamp → first command p50/p99 '
            f'{f["latency_ms_p50"]}/{f["latency_ms_p99"]} ms')
    lines += ['', '| task | success | rate |', '|---|---|---|']
    for task, t in summary['tasks'].items():
        lines.append(f'| {task} | {t["successes"]}/{t["episodes"]} | '
                     f'{100 * t["success_rate"]:.0f} % |')
    lines += ['', '| task | seed | instruction | success | episode time (s) |',
              '|---|---|---|---|---|']
    for e in summary['episodes']:
        lines.append(f'| {e["task"]} | {e["seed"]} | {e["instruction"]} | '
                     f'{"yes" if e["success"] else "no"} | {e["episode_time"]:.1f} |')
    lines += ['', 'Files: ' + ', '.join(summary['files']), '']
    return '\n'.join(lines)


def _pipeline_figures(diagnostics: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    """Pick the inference/control figures out of the latest /diagnostics of the nodes."""
    inf = diagnostics.get('inference_node', {})
    ctl = diagnostics.get('interpolation_node', {})
    return {
        'inference_rate_hz': inf.get('rate_hz', 'n/a'),
        'model_ms_p50': inf.get('model_ms_p50', 'n/a'),
        'model_ms_p99': inf.get('model_ms_p99', 'n/a'),
        'control_rate_hz': ctl.get('rate_hz', 'n/a'),
        'control_jitter_ms_p99': ctl.get('jitter_ms_p99', 'n/a'),
        'latency_ms_p50': ctl.get('latency_ms_p50', 'n/a'),
        'latency_ms_p99': ctl.get('latency_ms_p99', 'n/a'),
    }


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
        'sim_node': {'real_time_factor': float(args.real_time_factor),
                     'expert_actions': bool(args.expert)}}
    if args.expert:
        source = 'scripted expert (sim_node publishes vla/action_tokens)'
        note = ''
    else:
        if not os.path.isfile(policy):
            print(f'vla-ros demo: no policy at {policy}; run `make models` (or pass '
                  '--model-dir, or --expert)', file=sys.stderr)
            return 2
        trained = model_trained(policy)
        overrides['inference_node'] = {'model_file_path': policy}
        source = f'policy {policy}'
        note = ('' if trained else
                'The model is UNTRAINED (metadata vla_ros.trained is not "true"): its actions '
                'are seeded random weights, so task success near 0 % is expected. Use --expert '
                'to see the tasks solved through the same pipeline.')
    if note:
        print(f'vla-ros demo: {note}')
    specs = pipeline_nodes(with_sim=True, overrides=overrides,
                           without=('inference_node',) if args.expert else ())
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
        rec = Recorder(args.tasks)
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
        print(f'vla-ros demo: graph ready after {time.monotonic() - t_start:.1f} s', flush=True)
        measure_from = time.monotonic()
        tokens_from = rec.tokens
        for task in args.tasks:
            limit = TASKS[task].time_limit
            for i in range(args.episodes):
                seed = args.first_seed + i
                rec.recording_video = i < args.video_episodes
                episode = rec.start_episode(task, seed)
                start_sim = rec.sim_now
                status = rec.wait_done(task, seed, (limit + 2.0) / args.real_time_factor + 15.0)
                rec.recording_video = False
                problem = group.failed()
                if problem:
                    raise RuntimeError(problem)
                result = {'task': task, 'seed': seed, 'instruction': episode['instruction'],
                          'success': bool(status.get('success')),
                          'episode_time': float(status.get('episode_time', 0.0)),
                          'start_sim_time': start_sim}
                episodes.append(result)
                print(f'  [{len(episodes):3d}/{len(args.tasks) * args.episodes}] {task:16s} '
                      f'seed {seed:3d} {"SUCCESS" if result["success"] else "fail   "} '
                      f'{result["episode_time"]:5.1f} s  "{episode["instruction"]}"  '
                      f'(rtf {status.get("real_time_factor", 0):.2f})', flush=True)
        wall = time.monotonic() - measure_from
        rates = {'camera': _rate(rec.image_times, measure_from),
                 'joint_states': _rate(rec.state_times, measure_from),
                 'action_tokens': (rec.tokens - tokens_from) / wall if wall > 0 else 0.0,
                 'arm_commands': _rate(rec.arm_times, measure_from)}
        with rec.lock:
            pipeline = _pipeline_figures(rec.diagnostics)
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
        video = write_video(rec.frames, out, fps=12.5 / VIDEO_EVERY)
        files += ([video] if video else []) + write_plots(rec, out, episodes)
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
