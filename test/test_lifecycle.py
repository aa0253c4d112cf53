"""
Lifecycle requests can never kill a managed node or leave the robot moving (issue 17.8).

Every transition is sent from every state to real node processes over their
``change_state`` services, in lock step (``graph_harness.LockstepRig``, no
lifecycle_manager: the test drives the transitions), and each answer is checked together
with what the robot receives: a request the state cannot take is refused (success false)
and changes nothing, the process stays alive; ``deactivate``, ``cleanup`` and ``shutdown``
bring the base to rest within its deceleration limit with the arm held, and ``cleanup`` /
``shutdown`` are answered only once it is at rest; an unconfigured or finalized
interpolation_node commands nothing; only an active inference_node publishes tokens. The
configure → cleanup → configure cycle (issue 16.4) runs on the same processes.
"""

import math

from graph_harness import LockstepRig
from lifecycle_msgs.msg import Transition
import numpy as np
import pytest

NS = 1_000_000_000
START_NS = 100 * NS
PERIOD = 0.05
DECEL = 2.0          # base_max_deceleration, x (m/s^2)
VX = 0.4             # base target, x (m/s)
POLICY = 4           # control ticks per inference period (5 Hz)
T = Transition
ALL = {'configure': T.TRANSITION_CONFIGURE, 'cleanup': T.TRANSITION_CLEANUP,
       'activate': T.TRANSITION_ACTIVATE, 'deactivate': T.TRANSITION_DEACTIVATE,
       'unconfigured_shutdown': T.TRANSITION_UNCONFIGURED_SHUTDOWN,
       'inactive_shutdown': T.TRANSITION_INACTIVE_SHUTDOWN,
       'active_shutdown': T.TRANSITION_ACTIVE_SHUTDOWN}
VALID = {'unconfigured': {'configure', 'unconfigured_shutdown'},
         'inactive': {'cleanup', 'activate', 'inactive_shutdown'},
         'active': {'deactivate', 'active_shutdown'},
         'finalized': set()}
# Ticks the base needs to ramp from VX to zero at the deceleration limit (one more may end
# on a float residue the next tick clears to exactly 0).
RAMP_TICKS = math.ceil(VX / (DECEL * PERIOD))
# The answer to a held request travels on its own DDS writer, in no order with the lock-step
# barrier: under load it can reach the test one tick after the one that released it. The
# commands themselves are asserted exactly (_ramp_to_rest, then silence).
ANSWER_TICKS = RAMP_TICKS + 2


def _request(rig, node, name, label='', ticking=False, max_ticks=4 * RAMP_TICKS):
    """Send one transition; return (success, control ticks that passed before the answer)."""
    future = rig.step.change_state(node, ALL.get(name, 0), label)
    ticks = 0
    while ticking and not future.done() and ticks < max_ticks:
        rig.tick()
        ticks += 1
    return rig.step.answer(future, f'{node} {name or label}').success, ticks


def _alive(rig, node):
    return rig.step.group.procs[node].poll() is None


def _refuses_all_but_valid(rig, node, state, during=None):
    """Every transition ``state`` lacks is refused; state, process (and ``during``) hold."""
    refused = 0
    for name in ALL:
        if name in VALID[state]:
            continue
        ok, _ = _request(rig, node, name)
        assert ok is False, f'{node}: {name} from {state} was accepted'
        assert _alive(rig, node), rig.step.logs(node)
        assert rig.step.lifecycle_state(node) == state
        if during is not None:
            during()
        refused += 1
    # A label the state does not have, and ids no client should send (destroy, an internal
    # callback result), are refused the same way.
    ok, _ = _request(rig, node, '', label='activate' if state != 'inactive' else 'configure')
    assert ok is False and _alive(rig, node)
    for transition in (T.TRANSITION_DESTROY, T.TRANSITION_ON_CONFIGURE_SUCCESS):
        future = rig.step.change_state(node, transition)
        assert rig.step.answer(future).success is False and _alive(rig, node)
    assert rig.step.lifecycle_state(node) == state
    return refused + 3


def _ramp_to_rest(entries, v0):
    """Assert base x commands ramp from v0 to zero within the deceleration limit."""
    vx = [v0] + [float(e['values'][0]) for e in entries]
    steps = np.diff(vx)
    assert np.all(steps <= 1e-12) and np.all(steps >= -DECEL * PERIOD - 1e-9), vx
    assert vx[-1] == 0.0, vx
    assert len(vx) - 1 <= RAMP_TICKS + 1, vx


def _drive(rig, ticks=None):
    """Send a moving target each tick until the base runs at VX (or for ``ticks``)."""
    arm = np.full(7, 0.3)
    n = 0
    while (ticks is None and not (rig.records.base and rig.records.base[-1]['values'][0] == VX)
           or ticks is not None and n < ticks):
        rig.send_target(arm, [VX, 0.0, 0.0], rig.step.now_ns)
        rig.tick()
        n += 1
        assert n < 60, rig.step.logs()


def _configure_and_activate(rig, node, refused):
    ok, _ = _request(rig, node, 'configure')
    assert ok and rig.step.lifecycle_state(node) == 'inactive'
    rig.step.unmanaged = ()
    rig.step.wait_matched()
    # Inactive: holding at the measured pose, base at zero, one command per tick.
    before = len(rig.records.base)
    assert rig.run_until(lambda: len(rig.records.base) >= before + 2, 20) < 20, rig.step.logs()
    assert rig.records.base[-1]['values'].tolist() == [0.0, 0.0, 0.0]
    refused += _refuses_all_but_valid(rig, node, 'inactive')
    ok, _ = _request(rig, node, 'activate')
    assert ok and rig.step.lifecycle_state(node) == 'active'
    return refused


def test_interpolation_node_every_transition_from_every_state(interp):
    """Issue 17.8: configure on an active node, or activate first, killed it (cmd_vel 0.3)."""
    rig, records, node = interp, interp.records, 'interpolation_node'
    rig.start(START_NS, manage=False)
    for _ in range(3):
        rig.tick()
    assert records.arm == [] and records.base == []   # unconfigured: commands nothing
    refused = _refuses_all_but_valid(rig, node, 'unconfigured')
    assert records.arm == [] and records.base == []
    for cycle in range(2):   # configure → ... → cleanup → configure again (issue 16.4)
        refused = _configure_and_activate(rig, node, refused)
        _drive(rig)

        def still_driving():
            before = len(records.base)
            _drive(rig, ticks=1)
            assert len(records.base) == before + 1 and records.base[-1]['values'][0] == VX
        refused += _refuses_all_but_valid(rig, node, 'active', during=still_driving)
        if cycle == 0:
            # deactivate answers at once and the base ramps; cleanup right after it is held
            # until the base is at rest and the arm still, then the node goes silent.
            mark = len(records.base)
            ok, ticks = _request(rig, node, 'deactivate')
            assert ok and ticks == 0 and rig.step.lifecycle_state(node) == 'inactive'
            rig.tick()
            ok, ticks = _request(rig, node, 'cleanup', ticking=True)
            assert ok and 1 <= ticks <= ANSWER_TICKS, ticks
            _ramp_to_rest(records.base[mark:], VX)
            arm = [e['values'] for e in records.arm]
            assert np.array_equal(arm[-1], arm[-2])   # the arm was at rest at the answer
            assert rig.step.lifecycle_state(node) == 'unconfigured'
            silent = len(records.base), len(records.arm)
            for _ in range(5):
                rig.tick()
            assert (len(records.base), len(records.arm)) == silent
            refused += _refuses_all_but_valid(rig, node, 'unconfigured')
        else:
            # shutdown while driving at VX: answered once the base is at rest.
            mark = len(records.base)
            ok, ticks = _request(rig, node, 'active_shutdown', ticking=True)
            assert ok and RAMP_TICKS - 1 <= ticks <= ANSWER_TICKS, ticks
            _ramp_to_rest(records.base[mark:], VX)
            arm = [e['values'] for e in records.arm]
            assert np.array_equal(arm[-1], arm[-2])
    assert rig.step.lifecycle_state(node) == 'finalized'
    silent = len(records.base), len(records.arm)
    for _ in range(5):
        rig.send_target(np.full(7, 0.3), [VX, 0.0, 0.0], rig.step.now_ns)
        rig.tick()
    assert (len(records.base), len(records.arm)) == silent   # finalized: commands nothing
    refused += _refuses_all_but_valid(rig, node, 'finalized')
    _, values = rig.report(node)
    assert int(values.get('refused_transitions', 0)) == refused, values
    assert _alive(rig, node)


@pytest.mark.parametrize('state', ['unconfigured', 'inactive'])
def test_interpolation_node_shutdown_by_label_from_a_resting_state(interp, state):
    """``shutdown`` (the label `ros2 lifecycle set` sends) from unconfigured and inactive."""
    rig, records, node = interp, interp.records, 'interpolation_node'
    rig.start(START_NS, manage=False)
    if state == 'inactive':
        _configure_and_activate(rig, node, 0)
        _drive(rig)
        mark = len(records.base)
        assert _request(rig, node, 'deactivate')[0]
        ok, ticks = _request(rig, node, '', label='shutdown', ticking=True)
        assert ok and ticks <= ANSWER_TICKS
        _ramp_to_rest(records.base[mark:], VX)
    else:
        ok, ticks = _request(rig, node, '', label='shutdown')
        assert ok and ticks == 0
    assert rig.step.lifecycle_state(node) == 'finalized'
    silent = len(records.base)
    for _ in range(3):
        rig.tick()
    assert len(records.base) == silent and _alive(rig, node)


@pytest.fixture
def policy(ros, params_file, test_model_dir):
    rig = LockstepRig(params_file, {
        'inference_node': {'model_file_path': f'{test_model_dir}/policy.onnx'}},
        nodes=('camera_node', 'inference_node'))
    try:
        yield rig
    finally:
        rig.close()


def test_only_an_active_inference_node_publishes_tokens(policy):
    """Issue 17.8: a finalized inference_node kept publishing tokens (10 in 2 s)."""
    rig, records, node = policy, policy.records, 'inference_node'
    rig.robot = lambda: None   # the known model has no state input: no joint_states
    rig.start(START_NS, manage=False)
    rig.instruct('drive to the marker')

    def quiet_for(ticks):
        before = len(records.tokens)
        for _ in range(ticks):
            rig.tick()
        return len(records.tokens) == before

    def publishing():
        # Two policy periods would do; the margin is for a loaded machine, where the lockstep
        # tick's settle can end before the first inference after activate has published
        # (seen once with two CPU-bound jobs beside the suite).
        before = len(records.tokens)
        assert rig.run_until(lambda: len(records.tokens) >= before + 2, 8 * POLICY) < 8 * POLICY

    assert quiet_for(3 * POLICY) and records.tokens == []
    refused = _refuses_all_but_valid(rig, node, 'unconfigured')
    for cycle in range(2):
        ok, _ = _request(rig, node, 'configure')
        assert ok and rig.step.lifecycle_state(node) == 'inactive'
        assert quiet_for(3 * POLICY)            # inactive: no tokens
        refused += _refuses_all_but_valid(rig, node, 'inactive')
        assert _request(rig, node, 'activate')[0]
        rig.step.unmanaged = ()
        rig.step.wait_matched()
        publishing()
        refused += _refuses_all_but_valid(rig, node, 'active', during=lambda: rig.tick())
        if cycle == 0:
            assert _request(rig, node, 'deactivate')[0]
            assert quiet_for(3 * POLICY)
            assert _request(rig, node, 'cleanup')[0]
            assert quiet_for(3 * POLICY)
        else:
            assert _request(rig, node, 'active_shutdown')[0]
    assert rig.step.lifecycle_state(node) == 'finalized'
    assert quiet_for(3 * POLICY)                  # finalized: no tokens
    refused += _refuses_all_but_valid(rig, node, 'finalized')
    _, values = rig.report(node)
    assert int(values.get('refused_transitions', 0)) == refused, values
    assert _alive(rig, node)
