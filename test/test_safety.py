"""
Safety rules of issue 7 through real processes on loopback DDS.

interpolation_node runs alone as a process; the harness node plays the robot
(joint_states), the detokenizer (stamped arm and base targets) and, where the test needs it,
the simulator's /clock. Nothing is mocked: the commands checked are the ones a controller
would receive.
"""

import time

from graph_harness import Harness, JOINTS, print_logs
import numpy as np
import pytest
import rclpy
from vla_ros.graph import NodeSpec
from vla_ros.tools.up import ProcessGroup

PERIOD = 0.05
DECEL = 2.0


@pytest.fixture(scope='module')
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def _interpolation_node(params_file, use_sim_time=False, **params):
    group = ProcessGroup(params_file, quiet=True, use_sim_time=use_sim_time)
    group.start(NodeSpec('interpolation_node', 'interpolation_node',
                         parameters=dict(start_enabled=True, **params)))
    return group


@pytest.fixture
def harness(ros):
    h = Harness()
    h.camera_enabled = False
    yield h
    h.close()


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
            return all(int(values.get(f'rejected_stale_targets_{kind}', 0)) >= 8
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
