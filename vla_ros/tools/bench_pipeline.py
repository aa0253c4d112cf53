"""
`vla-ros bench pipeline`: run the four nodes for a fixed time and print their timing.

A driver node in this process (a ``testing/probe.Probe``) plays the camera and the robot
(joint_states); the nodes run as separate processes exactly as `vla-ros up` starts them.
Figures come from two places: the nodes' own /diagnostics (timer period jitter measured
inside each process, camera stamp → first command latency measured by interpolation_node)
and this process's arrival times of vla/action_tokens and arm commands (what a consumer
sees). Resident memory (RSS) of every node process is read from /proc at the start and the
end of the measured window and every 10 s in between (flat memory over a long run), and
camera_node's own count of published frames is taken at both ends (frames delivered, as
the node saw them).

Length (over 300 lines): one benchmark: graph start, load generation, measurement and the
report.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Sequence

import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from vla_ros_interfaces.msg import ActionTokens

from ..conversions import array_to_image
from ..core.action_space import ActionSpace, DEFAULT_ARM_JOINTS
from ..graph import dds_profile_env, DDS_PROFILE_VARS, pipeline_nodes
from ..nodes.common import COMMAND_QOS, LATCHED_QOS, LATEST_IMAGE_QOS, SENSOR_QOS
from ..paths import default_action_space_file, default_model_dir, default_params_file
from ..processes import ProcessGroup
from ..testing import known_model
from ..testing.probe import Probe


def _percentiles(values: List[float]) -> Dict[str, float]:
    if not values:
        return {'p50': float('nan'), 'p99': float('nan'), 'max': float('nan')}
    a = np.asarray(values)
    return {'p50': float(np.percentile(a, 50)), 'p99': float(np.percentile(a, 99)),
            'max': float(a.max())}


def _arrival_stats(times: List[float], nominal: float) -> Dict[str, float]:
    if len(times) < 3:
        return {'rate_hz': float('nan'), 'count': len(times)}
    periods = np.diff(np.asarray(times))
    out = {'rate_hz': float(1.0 / periods.mean()), 'count': len(times)}
    out.update({f'jitter_{k}_ms': v * 1e3 for k, v in
                _percentiles(list(np.abs(periods - 1.0 / nominal))).items()})
    return out


def _rss_mb(pid: int) -> float:
    """Return the resident set size of a process in MiB (NaN when it is gone)."""
    try:
        with open(f'/proc/{pid}/status', encoding='ascii') as stream:
            for line in stream:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float('nan')


class BenchDriver(Probe):
    """
    The probe that plays the camera driver and the robot, and times what comes back.

    Publishes ``camera/image_raw`` (one random frame, at ``camera_hz``, while
    ``camera_on``) and ``joint_states`` (100 Hz); records arrival times of
    ``vla/action_tokens`` and arm commands and the source stamps sent and seen on
    ``vla/image`` while ``recording``.
    """

    def __init__(self, width: int, height: int, camera_hz: float):
        """Create the endpoints and timers, then spin."""
        super().__init__('vla_bench_driver')
        node = self.node
        self.tokens_t: List[float] = []
        self.arm_t: List[float] = []
        self.sent = set()
        self.converted = set()
        self.sent_total = 0
        self.recording = threading.Event()
        self.camera_on = threading.Event()
        self.camera_on.set()
        self._frame = np.random.default_rng(0).integers(0, 256, (height, width, 3),
                                                        dtype=np.uint8)
        self._image_pub = node.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
        self._joint_pub = node.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        self.instruction_pub = node.create_publisher(String, 'vla/instruction', LATCHED_QOS)
        node.create_subscription(ActionTokens, 'vla/action_tokens',
                                 self._arrival(self.tokens_t), COMMAND_QOS)
        node.create_subscription(Float64MultiArray, 'arm_controller/commands',
                                 self._arrival(self.arm_t), COMMAND_QOS)
        # Frames are matched by their source stamp, so none is miscounted at the window edges.
        node.create_subscription(Image, 'vla/image', self._on_vla_image, LATEST_IMAGE_QOS)
        node.create_timer(1.0 / camera_hz, self._publish_image)
        node.create_timer(0.01, self._publish_joints)
        self.start()

    def _arrival(self, store: List[float]):
        def callback(_msg):
            if self.recording.is_set():
                with self.lock:
                    store.append(time.monotonic())
        return callback

    def _publish_image(self):
        if not self.camera_on.is_set():
            return
        self.sent_total += 1
        stamp = self.node.get_clock().now().to_msg()
        if self.recording.is_set():
            with self.lock:
                self.sent.add((stamp.sec, stamp.nanosec))
        self._image_pub.publish(array_to_image(self._frame, 'rgb8', stamp, 'camera'))

    def _on_vla_image(self, msg):
        with self.lock:
            self.converted.add((msg.header.stamp.sec, msg.header.stamp.nanosec))

    def _publish_joints(self):
        msg = JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = list(DEFAULT_ARM_JOINTS)
        msg.position = [0.0] * 7
        self._joint_pub.publish(msg)

    def clear(self):
        """Forget every arrival and stamp recorded so far."""
        with self.lock:
            for store in (self.tokens_t, self.arm_t, self.sent, self.converted):
                store.clear()

    def counter(self, node: str, key: str) -> float:
        """Return a /diagnostics value of ``node`` as a number (NaN when absent)."""
        try:
            return float(self.diagnostic_values(node).get(key, 'nan'))
        except ValueError:
            return float('nan')


def run_bench(duration: float, model_file_path: str, camera_size: str, camera_hz: float,
              warmup: float, params_file: str, dds_profile: bool = True,
              executor_threads: int = 1) -> Dict:
    """Start the graph, drive it for ``warmup + duration`` s, return the figures."""
    width, height = (int(v) for v in camera_size.lower().split('x'))
    overrides = {'inference_node': {'model_file_path': model_file_path},
                 'interpolation_node': {'start_enabled': True}}
    group = ProcessGroup(params_file, quiet=True, dds_profile=dds_profile,
                         env={'VLA_ROS_EXECUTOR_THREADS': str(executor_threads)})
    # The driver plays the camera driver: same transport as the nodes (read at rclpy.init,
    # which the probe calls).
    saved = {name: os.environ.get(name) for name in DDS_PROFILE_VARS}
    os.environ.update(dds_profile_env(os.environ, dds_profile))
    driver = None
    try:
        group.start_all(pipeline_nodes(overrides=overrides))
        driver = BenchDriver(width, height, camera_hz)
        driver.instruction_pub.publish(String(data='pick up the red block'))
        t_end = time.monotonic() + 60.0
        driver.recording.set()
        while not driver.tokens_t and time.monotonic() < t_end:  # wait for the first tokens
            time.sleep(0.1)
            if group.failed():
                raise RuntimeError(group.failed() + '\n' + '\n'.join(
                    f'[{n}] {line}' for n, ls in group.lines.items() for line in ls[-10:]))
        driver.recording.clear()
        time.sleep(warmup)
        # camera_node's published count is read from /diagnostics (once a second): the camera
        # pauses for one diagnostics period before the count starts and after it ends, so both
        # readings are exact; the count runs from 1 s before the window to its end.
        driver.camera_on.clear()
        time.sleep(1.2)
        published_start = driver.counter('camera_node', 'published')
        driver.sent_total = 0
        driver.camera_on.set()
        time.sleep(1.0)
        driver.clear()
        pids = {name: proc.pid for name, proc in group.procs.items()}
        pids['bench driver'] = os.getpid()
        rss = {name: [_rss_mb(pid)] for name, pid in pids.items()}
        driver.recording.set()
        start = time.monotonic()
        next_sample = start + 10.0
        while time.monotonic() - start < duration:
            time.sleep(min(1.0, max(0.0, start + duration - time.monotonic())))
            if time.monotonic() >= next_sample:
                next_sample += 10.0
                for name, pid in pids.items():
                    rss[name].append(_rss_mb(pid))
            if group.failed():
                raise RuntimeError(f'{group.failed()} during the measurement')
        driver.camera_on.clear()
        driver.recording.clear()
        for name, pid in pids.items():
            rss[name].append(_rss_mb(pid))
        time.sleep(1.2)  # one more diagnostics period
        published = driver.counter('camera_node', 'published') - published_start
        with driver.lock:
            tokens_t, arm_t = list(driver.tokens_t), list(driver.arm_t)
            sent, converted = set(driver.sent), set(driver.converted)
        diags = {name: driver.diagnostic_values(name) for name in group.procs}
    finally:
        if driver is not None:
            driver.close()
        group.stop()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    return {
        'duration_s': duration, 'camera': f'{width}x{height} @ {camera_hz:g} Hz',
        'inference_arrivals': _arrival_stats(tokens_t, 5.0),
        'control_arrivals': _arrival_stats(arm_t, 20.0),
        'diagnostics': diags, 'frames_sent': len(sent),
        'frames_converted': len(sent & converted),
        'camera_node_published': published,
        'frames_sent_for_camera_node': driver.sent_total,
        'rss_mb': {name: {'start': v[0], 'end': v[-1], 'max': float(np.nanmax(v)),
                          'samples': len(v)} for name, v in rss.items()},
        'dds_profile': dds_profile, 'executor_threads': executor_threads,
    }


def _f(d: Dict, key: str) -> float:
    try:
        return float(d.get(key, 'nan'))
    except ValueError:
        return float('nan')


def report(res: Dict) -> str:
    """Human-readable table."""
    inf = res['diagnostics'].get('inference_node', {})
    ctl = res['diagnostics'].get('interpolation_node', {})
    ia, ca = res['inference_arrivals'], res['control_arrivals']
    nan = float('nan')
    lines = [
        f'vla-ros bench pipeline: {res["duration_s"]:g} s measured, camera {res["camera"]}, '
        f'model {inf.get("model_config", "?")} on {inf.get("active_providers", "?")}, '
        f'{"single" if res["executor_threads"] == 1 else "multi"}-threaded executors',
        '',
        f'{"":30}{"rate Hz":>10}{"target":>8}{"jitter p50":>12}{"p99":>8}{"max":>8}  (ms)',
        f'{"inference timer (in node)":30}{_f(inf, "rate_hz"):>10.3f}{5.0:>8.2f}'
        f'{"":>12}{_f(inf, "jitter_ms_p99"):>8.2f}{"":>8}',
        f'{"control timer (in node)":30}{_f(ctl, "rate_hz"):>10.3f}{20.0:>8.2f}'
        f'{_f(ctl, "jitter_ms_p50"):>12.2f}{_f(ctl, "jitter_ms_p99"):>8.2f}'
        f'{_f(ctl, "jitter_ms_max"):>8.2f}',
        f'{"vla/action_tokens arrivals":30}{ia.get("rate_hz", nan):>10.3f}{5.0:>8.2f}'
        f'{ia.get("jitter_p50_ms", nan):>12.2f}{ia.get("jitter_p99_ms", nan):>8.2f}'
        f'{ia.get("jitter_max_ms", nan):>8.2f}',
        f'{"arm command arrivals":30}{ca.get("rate_hz", nan):>10.3f}{20.0:>8.2f}'
        f'{ca.get("jitter_p50_ms", nan):>12.2f}{ca.get("jitter_p99_ms", nan):>8.2f}'
        f'{ca.get("jitter_max_ms", nan):>8.2f}',
        '',
        f'camera frames: sent {res["frames_sent"]}, came back on vla/image '
        f'{res["frames_converted"]} (Fast DDS large-SHM profile '
        f'{"on" if res["dds_profile"] else "off"}); conversion p50 '
        f'{_f(res["diagnostics"].get("camera_node", {}), "convert_ms_p50"):.2f} ms',
        f'delivered: {100.0 * res["frames_converted"] / max(1, res["frames_sent"]):.1f} % of '
        f'frames back on vla/image here; camera_node published '
        f'{res.get("camera_node_published", float("nan")):.0f} of '
        f'{res.get("frames_sent_for_camera_node", 0)} (from 1 s before the window)',
        f'camera stamp → first command reflecting it: p50 {_f(ctl, "latency_ms_p50"):.1f} ms, '
        f'p99 {_f(ctl, "latency_ms_p99"):.1f} ms (target p50 ≤ 220 ms)',
        f'policy run: p50 {_f(inf, "model_ms_p50"):.2f} ms, p99 {_f(inf, "model_ms_p99"):.2f} ms;'
        f' control tick work p99 {_f(ctl, "tick_ms_p99"):.3f} ms',
    ]
    rss = res.get('rss_mb', {})
    if rss:
        lines += ['', f'{"RSS MiB":30}{"start":>10}{"end":>10}{"max":>10}{"growth":>10}']
        for name, v in rss.items():
            growth = 100.0 * (v['end'] - v['start']) / v['start'] if v['start'] else nan
            lines.append(f'{name:30}{v["start"]:>10.1f}{v["end"]:>10.1f}{v["max"]:>10.1f}'
                         f'{growth:>9.1f}%')
    return '\n'.join(lines)


def _run_in_child(args, model: str, threads: int, profile: bool) -> Dict:
    """Run one configuration in a new Python process; return its results (it prints them)."""
    with tempfile.TemporaryDirectory(prefix='vla_bench_') as tmp:
        out = os.path.join(tmp, 'results.json')
        cmd = [sys.executable, '-m', 'vla_ros.tools.bench_pipeline',
               '--duration', str(args.duration), '--warmup', str(args.warmup),
               '--model', model, '--camera-size', args.camera_size,
               '--camera-hz', str(args.camera_hz), '--params-file', args.params_file,
               '--dds-profile', 'on' if profile else 'off',
               '--executor-threads', str(threads), '--json', out]
        subprocess.run(cmd, check=True)
        with open(out, 'r', encoding='utf-8') as stream:
            return json.load(stream)


def main(argv: Sequence[str] = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog='vla-ros bench pipeline',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=30.0, help='seconds measured')
    parser.add_argument('--warmup', type=float, default=3.0)
    parser.add_argument('--model', default='test',
                        help='test (known-function test model), default (the shipped model, '
                             'models/rt1_nano) or a policy.onnx path')
    parser.add_argument('--camera-size', default='300x300')
    parser.add_argument('--camera-hz', type=float, default=10.0)
    parser.add_argument('--params-file', default=default_params_file())
    parser.add_argument('--dds-profile', default='on',
                        help='on (the default every launcher uses), off, or on,off: run '
                             'with/without the shipped Fast DDS large-shared-memory profile, '
                             'side by side')
    parser.add_argument('--executor-threads', default='1',
                        help='rclpy executor threads per node, e.g. 2,1 to compare '
                             'MultiThreadedExecutor (2) with SingleThreadedExecutor (1)')
    parser.add_argument('--json', default='', help='also write the figures to this file')
    args = parser.parse_args(argv)
    if args.model == 'test':
        folder = tempfile.mkdtemp(prefix='vla_bench_model_')
        known_model.write(folder, ActionSpace.from_yaml(default_action_space_file()))
        model = os.path.join(folder, 'policy.onnx')
    elif args.model == 'default':
        model = os.path.join(default_model_dir(), 'policy.onnx')
    else:
        model = args.model
    results = {}
    profiles = [p.strip() == 'on' for p in args.dds_profile.split(',') if p.strip()]
    combos = [(int(t), profile) for t in args.executor_threads.split(',') if t.strip()
              for profile in profiles]
    for threads, profile in combos:
        label = f'executor threads {threads}, DDS profile {"on" if profile else "off"}'
        if len(combos) == 1:
            res = run_bench(args.duration, model, args.camera_size, args.camera_hz,
                            args.warmup, args.params_file, profile, threads)
            print(report(res))
            print(flush=True)
        else:
            # Fast DDS reads its XML profile once per process, and this process plays the
            # camera: every configuration runs in a fresh process, or the second would
            # silently reuse the first one's transport.
            res = _run_in_child(args, model, threads, profile)[label]
        results[label] = res
    from ..verbs import write_json
    write_json(args.json, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
