"""
Safety rules of issue 7 through real processes on loopback DDS.

interpolation_node runs alone as a process; the test plays the robot (joint_states), the
detokenizer (stamped targets) and the clock. Where the rule is about sim time the node runs
in lock step (``graph_harness.LockstepRig``: the test moves the clock, one control tick at a
time, and counts ticks); the lost-clock rule is about the wall clock, so that test runs a
/clock of its own that it can freeze. Nothing is mocked: the commands checked are the ones
a controller would receive.
"""

import os
import threading
import time

from graph_harness import Harness, JOINTS, print_logs
import numpy as np
import pytest
from rosgraph_msgs.msg import Clock
from vla_ros.graph import NodeSpec, with_manager
from vla_ros.processes import ProcessGroup

PERIOD = 0.05
DECEL = 2.0
BASE_ACCEL = 1.0   # base_max_acceleration, x (m/s^2)
# Far enough from 0 for stamps 1e6 s in the past.
LOCKSTEP_START_NS = 2_000_000 * 1_000_000_000


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


def test_targets_with_bad_source_stamps_never_move_the_robot(interp):
    """Issue 7.3: stamps 1e6 s ahead, 1e6 s behind, or 0 moved the arm 0.5 rad."""
    rig, records = interp, interp.records
    rig.start(LOCKSTEP_START_NS)
    assert rig.run_until(lambda: len(records.arm) >= 3, 20) < 20, rig.step.logs()
    t0 = rig.step.now_ns
    arm, base = np.full(7, 0.5), np.array([0.4, 0.0, 0.0])
    for offset_ns in (int(1e6 * 1e9), -int(1e6 * 1e9), None):
        for _ in range(4):
            rig.send_target(arm, base, 0 if offset_ns is None else rig.step.now_ns + offset_ns)
            rig.tick()
    arms = [e['values'] for e in records.arm if e['t_ns'] > t0]
    bases = [e['values'] for e in records.base if e['t_ns'] > t0]
    assert len(arms) == len(bases) == 12  # one command per tick, every one at rest
    assert all(np.all(a == 0.0) for a in arms) and all(np.all(b == 0.0) for b in bases)
    message, values = rig.report('interpolation_node')
    assert all(int(values.get(f'rejected_stale_targets_{kind}', 0)) == 4
               for kind in ('future', 'old', 'unstamped')), values
    assert 'rejected' in message, message
    # The same target with a current stamp is executed on the next tick (the channel works).
    t1 = rig.step.now_ns
    rig.send_target(arm, base, t1)
    rig.tick()
    moved = [e for e in records.arm if e['t_ns'] > t1]
    assert len(moved) == 1 and np.all(moved[0]['values'] > 0.0), moved
    assert [e['values'][0] for e in records.base if e['t_ns'] > t1] == [
        pytest.approx(BASE_ACCEL * PERIOD)]


def test_duplicated_joint_names_in_joint_states_are_rejected(interp):
    """A joint named twice (the last copy used to win) is refused: nothing is commanded."""
    rig, records = interp, interp.records
    rig.joint_names = JOINTS + ['arm_joint_3']
    rig.joint_positions = [0.0] * 7 + [1.0]  # which arm_joint_3 is it?
    rig.start(LOCKSTEP_START_NS)
    for _ in range(10):
        rig.tick()
    rig.send_target(np.zeros(7), np.zeros(3), rig.step.now_ns)
    message, values = rig.report('interpolation_node')
    assert int(values.get('joint_states_rejected', 0)) >= 10, values
    assert 'joint_states' in message, message
    assert records.arm == [] and records.base == []  # never started: nothing commanded
    # Correct joint_states start the loop at the measured pose on the next tick.
    rig.joint_names = list(JOINTS)
    rig.joint_positions = [0.0] * 7
    rig.tick()  # the robot reports the corrected state after this tick...
    rig.tick()  # ...and the loop starts from it at this one
    assert len(records.arm) == 1 and np.all(records.arm[0]['values'] == 0.0), records.arm
    assert rig.step.group.failed() is None


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
        # (a loaded machine can delay this test's own /clock publisher past the timeout
        # once more: counted too)
        assert int(harness.diagnostic_values('interpolation_node')['clock_frozen']) >= 1
        # time moves again: new targets move the robot again
        clock.running = True
        assert drive(lambda: base_vx() > 0.1, 5.0), harness.latest(harness.base)
        assert harness.wait_for(
            lambda: 'clock frozen' not in harness.diagnostics['interpolation_node'].message, 3.0)
        assert group.failed() is None
    finally:
        group.stop()
        print_logs(group)


@pytest.mark.parametrize('tamper', ['weights', 'manifest', 'no_manifest'])
def test_inference_node_refuses_a_model_whose_bytes_do_not_match(harness, params_file,
                                                                 test_model_dir, tmp_path,
                                                                 tamper):
    """
    Issue 7.2 / 17.7: corrupted weights, a wrong or a deleted manifest loaded and ran.

    Refused in configure: the node stays alive and unconfigured with the error (file and
    hashes) on /diagnostics; lifecycle_manager tries ``configure_attempts`` times, reports
    the node's reason and gives up visibly; repaired, ``startup`` brings it up.
    """
    import json
    import shutil
    from lifecycle_msgs.msg import State
    from lifecycle_msgs.srv import GetState
    from std_srvs.srv import Trigger
    from test_verify import _corrupt_weights
    from vla_ros.core.model_contract import file_sha256
    folder = str(tmp_path / 'model')
    shutil.copytree(test_model_dir, folder)
    policy = f'{folder}/policy.onnx'
    with open(f'{folder}/manifest.json', encoding='utf-8') as stream:
        manifest = json.load(stream)
    expected = manifest['artifacts']['policy.onnx']['sha256']
    if tamper == 'weights':
        _corrupt_weights(policy)
        why = ['does not match', expected, file_sha256(policy)]
    elif tamper == 'manifest':
        expected = manifest['artifacts']['policy.onnx']['sha256'] = 'ab' * 32
        with open(f'{folder}/manifest.json', 'w', encoding='utf-8') as stream:
            json.dump(manifest, stream)
        why = ['does not match', expected, file_sha256(policy)]
    else:  # weights corrupted and the manifest deleted (the held-out probe's case)
        _corrupt_weights(policy)
        os.remove(f'{folder}/manifest.json')
        why = ['no manifest.json', 'allow_unverified_model', file_sha256(policy)]
    group = ProcessGroup(params_file, quiet=True)
    group.start_all(with_manager([NodeSpec('inference_node', 'inference_node',
                                           parameters={'model_file_path': policy})],
                                 {'configure_attempts': 2, 'retry_delay': 0.1}))
    try:
        def manager_gave_up():
            status = harness.diagnostics.get('lifecycle_manager')
            node = harness.diagnostic_values('inference_node')
            return (status is not None and 'gave up' in status.message
                    and node.get('configure_failed') == '2')
        assert harness.wait_for(manager_gave_up, 60.0), group.lines
        manager = harness.diagnostics['lifecycle_manager'].message
        node = harness.diagnostics['inference_node']
        assert node.level == node.ERROR and 'configure failed' in node.message
        for text in why:
            assert text in node.message and text in manager, (text, node.message, manager)
        assert 'policy.onnx' in node.message
        assert int(harness.diagnostic_values('inference_node')['configure_failed']) == 2
        assert int(harness.diagnostic_values('lifecycle_manager')['gave_up']) == 1
        get_state = harness.node.create_client(GetState, '/inference_node/get_state')
        state = harness.call(get_state, GetState.Request()).current_state.id
        assert state == State.PRIMARY_STATE_UNCONFIGURED
        assert group.failed() is None, group.lines          # every process still runs
        # Repaired (the original export copied back), startup brings it up.
        shutil.rmtree(folder)
        shutil.copytree(test_model_dir, folder)
        startup = harness.node.create_client(Trigger, '/lifecycle_manager/startup')
        assert harness.call(startup, Trigger.Request()).success

        def active():
            answer = harness.call(get_state, GetState.Request()).current_state.id
            return answer == State.PRIMARY_STATE_ACTIVE
        assert harness.wait_for(active, 60.0), group.lines
        assert harness.wait_for(
            lambda: harness.diagnostics['inference_node'].level != node.ERROR, 10.0)
    finally:
        group.stop()
        print_logs(group)
