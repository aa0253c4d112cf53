"""
Lifecycle requests sent with the real ROS 2 command line (issue 17.8).

``test_lifecycle.py`` drives every transition from every state through the services; this
file sends a representative set as a user would, with ``ros2 lifecycle set`` and ``ros2
lifecycle get`` (``test/ros2_support.py``), to a real interpolation_node in lock step
(``graph_harness.LockstepRig``, no lifecycle_manager). While a ``ros2`` command runs, the
test keeps ticking, and while the robot is meant to drive it sends a moving target every
tick, so what the base receives is recorded tick by tick around each request:

* ``configure`` on an active node while the base runs at 0.4 m/s: the CLI refuses it (it
  offers only the transitions the node lists), the node stays alive and ``active``, and the
  base keeps its speed on every tick;
* ``deactivate`` while driving: the base ramps to zero within its deceleration limit
  although targets keep coming, the node is ``inactive``;
* ``shutdown`` from active while driving: answered once the base is at rest and the arm
  still, the node is ``finalized``, and no command follows however many targets arrive.
"""

import math
import subprocess
import time

import numpy as np
import pytest
from ros2_support import DISCOVERY, lifecycle_state, tools_missing, underlay_env

MISSING = tools_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or '')

NS = 1_000_000_000
START_NS = 100 * NS
PERIOD = 0.05
DECEL = 2.0          # base_max_deceleration, x (m/s^2)
VX = 0.4             # base target, x (m/s)
RAMP_TICKS = math.ceil(VX / (DECEL * PERIOD))
NODE = '/interpolation_node'
CLI_TIMEOUT = 120.0  # wall seconds for one ros2 command (two short discovery spins)
CLI_ATTEMPTS = 5     # runs of a command whose discovery spin missed the node


def _cli(rig, args, drive=False):
    """
    Run ``ros2 lifecycle ...`` while the rig ticks; return (exit code, output, ticks).

    ``drive``: a moving target (base VX) is sent before every tick. A command still running
    after CLI_TIMEOUT (its answer lost) is stopped and reported with exit code None. A
    command whose short discovery spin missed the node ("Node not found") is run again.
    """
    ticks = 0
    for _ in range(CLI_ATTEMPTS):
        code, out, n = _cli_once(rig, args, drive)
        ticks += n
        if code is None or 'Node not found' not in out:
            break
        print(f'ros2 lifecycle {" ".join(args)}: node not discovered yet, trying again')
    return code, out, ticks


def _cli_once(rig, args, drive):
    proc = subprocess.Popen(['ros2', 'lifecycle', *args, *DISCOVERY], env=underlay_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + CLI_TIMEOUT
    ticks = 0
    # About real time while driving, 2 Hz otherwise: sim time keeps moving (the node's lost
    # clock watchdog stays quiet) without this process taking a whole core.
    every = PERIOD if drive else 0.5
    next_tick = time.monotonic()
    while proc.poll() is None and time.monotonic() < end:
        if time.monotonic() < next_tick:
            rig.step.executor.spin_once(timeout_sec=min(0.05, next_tick - time.monotonic()))
            continue
        next_tick += every
        if drive:
            rig.send_target(np.full(7, 0.3), [VX, 0.0, 0.0], rig.step.now_ns)
        rig.tick()
        ticks += 1
    if proc.poll() is None:
        proc.kill()
        out, _ = proc.communicate()
        return None, out + f'\n(no answer within {CLI_TIMEOUT:g} s)', ticks
    out, _ = proc.communicate()
    return proc.returncode, out, ticks


def _set(rig, transition, drive=False):
    """``ros2 lifecycle set``; a lost answer is checked against the node's state."""
    code, out, ticks = _cli(rig, ['set', NODE, transition], drive)
    if code is None:  # the CLI waits forever for a lost answer: read the state instead
        print(f'ros2 lifecycle set {transition}: {out}; state now '
              f'{rig.step.lifecycle_state("interpolation_node")}')
    return code, out, ticks


def _set_and_reach(rig, transition, state, drive=False):
    """``ros2 lifecycle set`` that must succeed (or lose its answer) and leave ``state``."""
    code, out, ticks = _set(rig, transition, drive)
    assert code in (0, None), out
    if code == 0:
        assert 'Transitioning successful' in out, out
    assert rig.step.lifecycle_state('interpolation_node') == state
    return ticks


def _get(rig, drive=False) -> str:
    code, out, _ = _cli(rig, ['get', NODE], drive)
    assert code == 0, out
    return lifecycle_state(out)


def _alive(rig):
    return rig.step.group.procs['interpolation_node'].poll() is None


def _base(rig, since):
    return [float(e['values'][0]) for e in rig.records.base[since:]]


def _assert_ramp_then_zero(vx):
    """VX while the request travels, then down to zero within the limit, then zero."""
    steps = np.diff([VX] + vx)
    assert np.all(steps <= 1e-12) and np.all(steps >= -DECEL * PERIOD - 1e-9), vx
    moving = [v for v in vx if v > 0.0]
    ramp = [v for v in moving if v < VX]
    assert len(ramp) <= RAMP_TICKS, vx
    assert vx and vx[-1] == 0.0, vx


def test_ros2_lifecycle_set_on_a_moving_interpolation_node(interp):
    rig, records = interp, interp.records
    rig.start(START_NS, manage=False)
    code, out, _ = _set(rig, 'configure')
    assert code in (0, None) and rig.step.lifecycle_state('interpolation_node') == 'inactive', \
        out
    if code == 0:
        assert 'Transitioning successful' in out, out
    rig.step.unmanaged = ()
    rig.step.wait_matched()
    code, out, _ = _set(rig, 'activate')
    assert code in (0, None) and rig.step.lifecycle_state('interpolation_node') == 'active', \
        out

    def drive_to_speed():
        n = 0
        while not (records.base and records.base[-1]['values'][0] == VX):
            rig.send_target(np.full(7, 0.3), [VX, 0.0, 0.0], rig.step.now_ns)
            rig.tick()
            n += 1
            assert n < 60, rig.step.logs()
    drive_to_speed()

    # configure on an active node (what killed it before issue 17.8): refused, still driving.
    mark = len(records.base)
    code, out, ticks = _set(rig, 'configure', drive=True)
    assert code not in (0, None) and 'Unknown transition requested' in out, out
    assert 'deactivate' in out and 'shutdown' in out, out   # what it offers instead
    assert _alive(rig) and ticks > 0
    assert _base(rig, mark) == [VX] * ticks, _base(rig, mark)
    assert _get(rig, drive=True) == 'active'
    assert _base(rig, mark)[-1] == VX

    # deactivate while targets keep coming: the base ramps to zero within the limit.
    mark = len(records.base)
    _set_and_reach(rig, 'deactivate', 'inactive', drive=True)
    for _ in range(RAMP_TICKS + 2):   # the ramp ends within the limit, whatever the timing
        rig.send_target(np.full(7, 0.3), [VX, 0.0, 0.0], rig.step.now_ns)
        rig.tick()
    _assert_ramp_then_zero(_base(rig, mark))
    assert rig.step.lifecycle_state('interpolation_node') == 'inactive' and _alive(rig)

    # activate again, drive, then shutdown from active while targets keep coming.
    code, out, _ = _set(rig, 'activate')
    assert code in (0, None) and rig.step.lifecycle_state('interpolation_node') == 'active', \
        out
    drive_to_speed()
    mark = len(records.base)
    _set_and_reach(rig, 'shutdown', 'finalized', drive=True)
    vx = _base(rig, mark)
    _assert_ramp_then_zero(vx)   # the answer came once the base was at rest
    arm = [e['values'] for e in records.arm]
    assert np.array_equal(arm[-1], arm[-2]), arm[-3:]   # and the arm still
    silent = len(records.base), len(records.arm)
    assert _get(rig, drive=True) == 'finalized'
    for _ in range(5):
        rig.send_target(np.full(7, 0.3), [VX, 0.0, 0.0], rig.step.now_ns)
        rig.tick()
    assert (len(records.base), len(records.arm)) == silent   # finalized: no command
    assert _alive(rig)
