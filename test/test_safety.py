"""
Safety rules of issue 7 through real processes on loopback DDS.

interpolation_node runs alone as a process; the harness node plays the robot
(joint_states), the detokenizer (stamped arm and base targets) and, where the test needs it,
the simulator's /clock. Nothing is mocked: the commands checked are the ones a controller
would receive.
"""

import threading
import time

from graph_harness import Harness, JOINTS, print_logs
import numpy as np
import pytest
from rosgraph_msgs.msg import Clock
from vla_ros.graph import NodeSpec, with_manager
from vla_ros.tools.up import ProcessGroup

PERIOD = 0.05
DECEL = 2.0


def _interpolation_node(params_file, use_sim_time=False, **params):
    group = ProcessGroup(params_file, quiet=True, use_sim_time=use_sim_time)
    group.start_all(with_manager([NodeSpec('interpolation_node', 'interpolation_node',
                                           parameters=dict(start_enabled=True, **params))]))
    return group


@pytest.fixture
def harness(ros):
    h = Harness()
    h.camera_enabled = False
    yield h
    h.close()


class SimClock:
    """/clock from the harness node: sim time follows wall time while running."""

    def __init__(self, node, start_s: float = 1000.0):
        self._lock = threading.Lock()
        self._sim_ns = int(start_s * 1e9)
        self._wall = time.monotonic()
        self.running = True
        self._pub = node.create_publisher(Clock, '/clock', 10)
        node.create_timer(0.01, self._publish)

    def now_ns(self) -> int:
        """Return the current sim time (frozen while stopped)."""
        with self._lock:
            wall = time.monotonic()
            if self.running:
                self._sim_ns += int((wall - self._wall) * 1e9)
            self._wall = wall
            return self._sim_ns

    def _publish(self):
        if self.running:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(self.now_ns(), 1_000_000_000)
            self._pub.publish(msg)


def _commands_flowing(harness, group):
    t0 = time.monotonic()
    assert harness.wait_for(lambda: len(harness.since(harness.arm, t0)) >= 3, 20.0), \
        group.failed()


def test_targets_with_bad_source_stamps_never_move_the_robot(harness, params_file):
    """Issue 7.3: stamps 1e6 s ahead, 1e6 s behind, or 0 moved the arm 0.5 rad."""
    group = _interpolation_node(params_file, command_timeout=0.5)
    try:
        _commands_flowing(harness, group)
        t0 = time.monotonic()
        arm, base = np.full(7, 0.5), np.array([0.4, 0.0, 0.0])
        for offset_ns in (int(1e6 * 1e9), -int(1e6 * 1e9), None):
            for _ in range(4):
                now_ns = harness.get_clock().now().nanoseconds
                harness.send_target(arm, base, 0 if offset_ns is None else now_ns + offset_ns)
                time.sleep(0.1)
        time.sleep(0.3)
        arms = [v for _, v in harness.since(harness.arm, t0)]
        bases = [v for _, v in harness.since(harness.base, t0)]
        assert len(arms) >= 10 and all(np.all(a == 0.0) for a in arms)
        assert all(np.all(b == 0.0) for b in bases)

        def counted():
            values = harness.diagnostic_values('interpolation_node')
            return all(int(values.get(f'rejected_stale_targets_{kind}', 0)) >= 4
                       for kind in ('future', 'old', 'unstamped'))
        assert harness.wait_for(counted, 3.0), harness.diagnostic_values('interpolation_node')
        status = harness.diagnostics['interpolation_node']
        assert 'rejected' in status.message and status.level == status.WARN, status.message
        # The same targets with a current stamp are executed (the channel works).
        t1 = time.monotonic()
        harness.send_target(arm, base, harness.get_clock().now().nanoseconds)
        assert harness.wait_for(lambda: np.all(harness.latest(harness.arm)[1] > 0.05), 3.0)
        assert harness.since(harness.base, t1)[-1][1][0] > 0.0
        assert group.failed() is None
    finally:
        group.stop()
        print_logs(group)


def test_duplicated_joint_names_in_joint_states_are_rejected(harness, params_file):
    """A joint named twice (the last copy used to win) is refused: nothing is commanded."""
    harness.joint_names = JOINTS + ['arm_joint_3']
    harness.joint_positions = np.array([0.0] * 7 + [1.0])  # which arm_joint_3 is it?
    group = _interpolation_node(params_file)
    try:
        assert harness.wait_for(lambda: int(harness.diagnostic_values(
            'interpolation_node').get('joint_states_rejected', 0)) >= 20, 20.0), \
            group.failed()
        harness.send_target(np.zeros(7), np.zeros(3), harness.get_clock().now().nanoseconds)
        time.sleep(0.5)
        assert harness.arm == [] and harness.base == []  # never started: nothing commanded
        assert any('arm_joint_3' in line and 'more than once' in line
                   for line in group.lines['interpolation_node']), \
            group.lines['interpolation_node']
        status = harness.diagnostics['interpolation_node']
        assert 'joint_states' in status.message, status.message
        # Correct joint_states start the loop at the measured pose.
        harness.joint_names = list(JOINTS)
        harness.joint_positions = np.zeros(7)
        assert harness.wait_for(lambda: harness.latest(harness.arm) is not None, 5.0)
        assert np.all(harness.latest(harness.arm)[1] == 0.0)
        assert group.failed() is None
    finally:
        group.stop()
        print_logs(group)


def test_lost_clock_stops_the_base_on_the_steady_clock_and_resumes(harness, params_file):
    """Issue 7.1: with /clock frozen the 20 Hz timer stalled and cmd_vel stayed at 0.4."""
    clock = SimClock(harness.node)
    group = _interpolation_node(params_file, use_sim_time=True, command_timeout=0.5,
                                clock_timeout=0.5)
    arm, base = np.full(7, 0.3), np.array([0.4, 0.0, 0.0])

    def drive(until, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            harness.send_target(arm, base, clock.now_ns())
            if until():
                return True
            time.sleep(0.1)
        return until()

    def base_vx():
        return (harness.latest(harness.base) or (0, np.zeros(3)))[1][0]
    try:
        _commands_flowing(harness, group)
        assert drive(lambda: base_vx() >= 0.4 - 1e-9, 10.0), harness.latest(harness.base)
        vx = base_vx()
        clock.running = False
        t_freeze = time.monotonic()
        # the pipeline keeps sending targets, stamped with the (frozen) sim time
        drive(lambda: False, 2.0)
        after = harness.since(harness.base, t_freeze)
        zero_at = next((t for t, v in after if np.all(v == 0.0)), None)
        assert zero_at is not None, after[-3:]
        # clock_timeout + one period + the ramp at the deceleration limit + scheduling slack
        allowed = 0.5 + PERIOD + vx / DECEL + 0.5
        assert zero_at - t_freeze <= allowed, (zero_at - t_freeze, allowed)
        ramp = [v[0] for _, v in after]
        assert np.all(np.diff(ramp) <= 1e-12)
        assert np.all(np.abs(np.diff(ramp)) <= DECEL * PERIOD + 1e-9)
        held = [v for t, v in harness.since(harness.arm, zero_at)]
        assert len(held) >= 10 and all(np.array_equal(h, held[0]) for h in held)
        assert all(np.all(v == 0.0) for t, v in harness.since(harness.base, zero_at))
        status = harness.diagnostics['interpolation_node']
        assert 'clock frozen' in status.message, status.message
        assert int(harness.diagnostic_values('interpolation_node')['clock_frozen']) == 1
        # time moves again: new targets move the robot again
        clock.running = True
        assert drive(lambda: base_vx() > 0.1, 5.0), harness.latest(harness.base)
        assert harness.wait_for(
            lambda: 'clock frozen' not in harness.diagnostics['interpolation_node'].message, 3.0)
        assert group.failed() is None
    finally:
        group.stop()
        print_logs(group)


@pytest.mark.parametrize('tamper', ['weights', 'manifest'])
def test_inference_node_refuses_a_model_whose_bytes_do_not_match(params_file, test_model_dir,
                                                                 tmp_path, tamper):
    """Issue 7.2: corrupted weights / a wrong manifest loaded and produced tokens."""
    import json
    import shutil
    from test_verify import _corrupt_weights
    from vla_ros.core.model_contract import file_sha256
    folder = str(tmp_path / 'model')
    shutil.copytree(test_model_dir, folder)
    policy = f'{folder}/policy.onnx'
    with open(f'{folder}/manifest.json', encoding='utf-8') as stream:
        manifest = json.load(stream)
    if tamper == 'weights':
        expected = manifest['artifacts']['policy.onnx']['sha256']
        _corrupt_weights(policy)
    else:
        expected = manifest['artifacts']['policy.onnx']['sha256'] = 'ab' * 32
        with open(f'{folder}/manifest.json', 'w', encoding='utf-8') as stream:
            json.dump(manifest, stream)
    found = file_sha256(policy)
    group = ProcessGroup(params_file, quiet=True)
    # lifecycle_manager configures it: the hash check runs there and fails.
    group.start_all(with_manager([NodeSpec('inference_node', 'inference_node',
                                           parameters={'model_file_path': policy})]))
    try:
        code = group.procs['inference_node'].wait(60.0)
    finally:
        group.stop()
    text = '\n'.join(group.lines['inference_node'])
    assert code == 2, text
    assert 'policy.onnx' in text and expected in text and found in text, text
