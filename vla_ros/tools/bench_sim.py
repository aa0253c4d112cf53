"""
``vla-ros bench sim``: how fast sim_node runs here, as a separate process.

sim_node runs on its own (default parameters, ``--task``/``--seed``); a subscriber in this
process measures, after a warm-up, for ``--duration`` wall seconds:

* the rates at which camera frames, ``joint_states`` and ``/clock`` arrive (message arrival
  times on the steady clock; the parameters ask for 12.5, 250 and 250 Hz), and the frame
  period jitter;
* the real-time factor: sim time advanced (``/clock``) over wall time, against the
  requested ``real_time_factor`` (1);
* sim_node's own ``real_time_factor`` and rates from its /diagnostics report.

These figures used to be test assertions (camera >= 10 Hz, joint_states >= 100 Hz,
real-time factor 0.8 to 1.25): a loaded machine breaks them without anything being wrong,
so the tests assert what happens and in what order, and this prints the rates. A figure
printer, not a test.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Sequence

import numpy as np


def _rate(times: List[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else 0.0


def _jitter_ms(times: List[float]) -> Dict[str, float]:
    if len(times) < 3:
        return {'p50': float('nan'), 'p99': float('nan'), 'max': float('nan')}
    periods = np.diff(times)
    dev = np.abs(periods - np.median(periods)) * 1e3
    return {'p50': float(np.percentile(dev, 50)), 'p99': float(np.percentile(dev, 99)),
            'max': float(dev.max())}


def measure(duration: float, warmup: float, task: str, seed: int,
            real_time_factor: float) -> Dict:
    """Start sim_node, measure for ``duration`` s after ``warmup`` s; return the figures."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState
    from ..processes import child_env, interrupt
    from ..nodes.common import SENSOR_QOS

    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_ros.nodes.sim_node', '--ros-args', '-p', f'task:={task}',
         '-p', f'seed:={seed}', '-p', f'real_time_factor:={real_time_factor}'],
        env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rclpy.init()
    node = Node('vla_bench_sim')
    lock = threading.Lock()
    measuring = threading.Event()
    seen = {'image': [], 'joints': [], 'clock': []}
    sim = []                      # (wall, sim) of each /clock while measuring
    diag: Dict[str, str] = {}

    def keep(key):
        def callback(msg):
            if measuring.is_set():
                now = time.monotonic()
                with lock:
                    seen[key].append(now)
                    if key == 'clock':
                        sim.append((now, msg.clock.sec + msg.clock.nanosec * 1e-9))
        return callback

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.split('/')[-1] == 'sim_node':
                with lock:
                    diag.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(Image, 'camera/image_raw', keep('image'), SENSOR_QOS)
    node.create_subscription(JointState, 'joint_states', keep('joints'), SENSOR_QOS)
    node.create_subscription(Clock, '/clock', keep('clock'),
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        first = []
        node.create_subscription(JointState, 'joint_states', lambda m: first.append(1),
                                 SENSOR_QOS)
        end = time.monotonic() + 60.0
        while not first and time.monotonic() < end and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        if not first:
            raise RuntimeError('sim_node published no joint_states within 60 s')
        end = time.monotonic() + warmup
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        measuring.set()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        measuring.clear()
        end = time.monotonic() + 1.5   # one more diagnostics report
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
        interrupt(proc)
    with lock:
        rtf = ((sim[-1][1] - sim[0][1]) / (sim[-1][0] - sim[0][0])
               if len(sim) > 2 and sim[-1][0] > sim[0][0] else float('nan'))
        return {'duration_s': duration, 'requested_real_time_factor': real_time_factor,
                'camera_hz': _rate(seen['image']), 'camera_jitter_ms': _jitter_ms(seen['image']),
                'joint_states_hz': _rate(seen['joints']), 'clock_hz': _rate(seen['clock']),
                'real_time_factor': rtf, 'sim_node_diagnostics': dict(diag)}


def main(argv: Sequence[str] = None) -> int:
    """Parse the options, measure, print a table and the JSON."""
    parser = argparse.ArgumentParser(prog='vla-ros bench sim', description=__doc__.split(
        '\n\n')[0].strip())
    parser.add_argument('--duration', type=float, default=10.0, help='measured wall seconds')
    parser.add_argument('--warmup', type=float, default=2.0, help='seconds before measuring')
    parser.add_argument('--task', default='pick_block')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--real-time-factor', type=float, default=1.0)
    parser.add_argument('--json', help='also write the figures to this file')
    args = parser.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    figures = measure(args.duration, args.warmup, args.task, args.seed,
                      args.real_time_factor)
    jitter = figures['camera_jitter_ms']
    print(f'sim_node, {args.duration:g} s after {args.warmup:g} s warm-up '
          f'(requested real-time factor {args.real_time_factor:g}):')
    print(f'  camera/image_raw   {figures["camera_hz"]:8.2f} Hz  (asks 12.5 x factor), '
          f'period jitter p50/p99/max {jitter["p50"]:.2f} / {jitter["p99"]:.2f} / '
          f'{jitter["max"]:.2f} ms')
    print(f'  joint_states       {figures["joint_states_hz"]:8.2f} Hz  (asks 250 x factor)')
    print(f'  /clock             {figures["clock_hz"]:8.2f} Hz')
    print(f'  real-time factor   {figures["real_time_factor"]:8.3f}     (sim s / wall s)')
    print(json.dumps(figures, indent=1, sort_keys=True))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump(figures, stream, indent=1, sort_keys=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
