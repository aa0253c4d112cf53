"""Interpolation, limits, watchdogs, e-stop and the enable gate (pure numpy, no ROS)."""

import numpy as np
import pytest

from vla_ros.core import control as c
from vla_ros.core.interpolation import ArmInterpolator, JointLimits, RateLimiter

DT = 0.05
VEL, ACC = 1.5, 6.0


def _loop(mode='linear', **kw):
    # Tests of other rules keep joint_states "fresh" forever; the staleness rule has its own.
    kw.setdefault('state_timeout', 1e9)
    cfg = c.ControlConfig(JointLimits.uniform(7, (-3.0, 3.0), VEL, ACC), interpolation=mode,
                          **kw)
    loop = c.ControlLoop(cfg)
    loop.start(np.zeros(7), 0.0)
    loop.set_enabled(True)
    return loop


def _run(loop, t0, n):
    out = []
    for i in range(1, n + 1):
        out.append(loop.tick(t0 + i * DT))
    return out


def test_no_command_before_joint_states():
    cfg = c.ControlConfig(JointLimits.uniform(7, (-3, 3), VEL, ACC))
    loop = c.ControlLoop(cfg)
    assert loop.tick(0.0) is None and loop.state == c.WAITING


def test_start_takes_measured_state_without_jump():
    loop = _loop()
    q = np.linspace(-1, 1, 7)
    loop.start(q, 0.0)
    cmd = loop.tick(DT)
    assert np.allclose(cmd.arm_positions, q)


@pytest.mark.parametrize('mode', ['linear', 'min_jerk'])
def test_reaches_target_in_about_one_period(mode):
    loop = _loop(mode)
    loop.on_target(np.full(7, 0.1), np.zeros(3), None, 0.0)
    cmds = _run(loop, 0.0, 6)
    assert np.allclose(cmds[-1].arm_positions, 0.1, atol=2e-3)


@pytest.mark.parametrize('mode', ['linear', 'min_jerk'])
def test_limits_hold_for_a_large_jump(mode):
    loop = _loop(mode)
    loop.on_target(np.full(7, 2.5), np.zeros(3), None, 0.0)
    q_prev, v_prev = np.zeros(7), np.zeros(7)
    for i in range(1, 80):
        if i % 4 == 0:  # the policy keeps asking for the same far target at 5 Hz
            loop.on_target(np.full(7, 2.5), np.zeros(3), None, i * DT)
        q = loop.tick(i * DT).arm_positions
        v = (q - q_prev) / DT
        assert np.all(np.abs(v) <= VEL + 1e-9)
        assert np.all(np.abs(v - v_prev) / DT <= ACC + 1e-6)
        q_prev, v_prev = q, v
    assert np.allclose(q_prev, 2.5, atol=1e-3)


def test_target_outside_position_limits_is_clipped():
    loop = _loop()
    loop.on_target(np.full(7, 9.0), np.zeros(3), None, 0.0)
    for i in range(1, 200):
        if i % 4 == 0:
            loop.on_target(np.full(7, 9.0), np.zeros(3), None, i * DT)
        q = loop.tick(i * DT).arm_positions
    assert np.allclose(q, 3.0)


@pytest.mark.parametrize('arrival', [0.1, 0.3])  # early (mid-segment) and late
def test_replanning_is_velocity_continuous(arrival):
    interp = ArmInterpolator(JointLimits.uniform(1, (-3, 3), VEL, ACC), 0.2, 'min_jerk')
    interp.reset(np.zeros(1))
    interp.set_target(np.array([0.2]), 0.0)
    t, q_prev, v_prev, dv = 0.0, 0.0, 0.0, []
    for _ in range(12):
        t += DT
        if abs(t - arrival) < 1e-9:
            interp.set_target(np.array([0.5]), t)
        q = interp.step(t, DT)[0]
        v = (q - q_prev) / DT
        dv.append(abs(v - v_prev))
        q_prev, v_prev = q, v
    assert max(dv) <= ACC * DT + 1e-9


def test_base_ramps_within_acceleration_limit():
    loop = _loop()
    loop.on_target(np.zeros(7), np.array([0.5, -0.5, 0.5]), None, 0.0)
    cmds = _run(loop, 0.0, 3)
    v = np.array([cmd.base_velocity for cmd in cmds])
    assert np.allclose(v[0], [0.05, -0.05, 0.075])  # 1.0, 1.0, 1.5 per s^2 × 50 ms
    assert np.all(np.abs(np.diff(v, axis=0)) <= np.array([1.0, 1.0, 1.5]) * DT + 1e-12)


def test_stale_target_stops_base_within_decel_limit_and_holds_arm():
    loop = _loop(command_timeout=0.5)
    t = 0.0
    for k in range(10):
        loop.on_target(np.full(7, 0.05 * k), np.array([0.4, 0.0, 0.2]), 1.0, t)
        for _ in range(4):
            t += DT
            cmd = loop.tick(t)
    assert cmd.base_velocity[0] == pytest.approx(0.4)
    last_target = t - 4 * DT
    arm_at_timeout = None
    history = []
    while t < last_target + 1.0:
        t += DT
        cmd = loop.tick(t)
        history.append((t, cmd.base_velocity.copy(), cmd.arm_positions.copy(), cmd.state))
        if cmd.state == c.TIMEOUT and arm_at_timeout is None:
            arm_at_timeout = cmd.arm_positions.copy()
    stopped = [h for h in history if h[3] == c.TIMEOUT]
    assert stopped, 'watchdog never fired'
    assert stopped[0][0] <= last_target + 0.5 + DT + 1e-9
    # decel 2 m/s^2: 0.4 m/s → 0 in 0.2 s (4 ticks)
    assert np.allclose(stopped[4][1], 0.0)
    for h in stopped:
        assert np.allclose(h[2], arm_at_timeout)  # arm holds
        assert loop.gripper == 1.0  # gripper holds


def test_estop_stops_at_once_latches_and_needs_reenable():
    loop = _loop()
    loop.on_target(np.full(7, 1.0), np.array([0.5, 0, 0]), None, 0.0)
    _run(loop, 0.0, 3)
    loop.set_estop(True)
    cmd = loop.tick(4 * DT)
    assert cmd.state == c.ESTOP and np.all(cmd.base_velocity == 0.0)
    held = cmd.arm_positions.copy()
    assert not loop.on_target(np.full(7, 2.0), np.array([0.5, 0, 0]), None, 5 * DT)
    assert not loop.set_enabled(True)
    for cmd in _run(loop, 5 * DT, 10):
        assert np.all(cmd.arm_positions == held) and np.all(cmd.base_velocity == 0)
    loop.set_estop(False)
    assert loop.tick(1.0).state == c.DISABLED
    assert loop.set_enabled(True, held, 1.0)
    assert loop.on_target(np.full(7, 1.1), np.zeros(3), None, 1.0)


def test_disabled_gate_ignores_targets():
    loop = _loop()
    loop.set_enabled(False)
    assert not loop.on_target(np.full(7, 1.0), np.zeros(3), 1.0, 0.0)
    cmd = loop.tick(DT)
    assert cmd.state == c.DISABLED and np.all(cmd.arm_positions == 0)


def test_bad_targets_raise_and_change_nothing():
    loop = _loop()
    with pytest.raises(ValueError):
        loop.on_target(np.full(7, np.nan), np.zeros(3), None, 0.0)
    with pytest.raises(ValueError):
        loop.on_target(np.zeros(6), np.zeros(3), None, 0.0)
    with pytest.raises(ValueError):
        loop.on_gripper_target(float('inf'), 0.0)
    assert loop.tick(DT).state == c.HOLDING


@pytest.mark.parametrize('kw,match', [
    ({'control_frequency': 20.0, 'inference_frequency': 3.0}, 'whole number'),
    ({'command_timeout': 0.0}, 'command_timeout'),
    ({'base_max_velocity': np.array([0.5, -1, 0.5])}, 'base_max_velocity'),
])
def test_bad_configuration_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        c.ControlConfig(JointLimits.uniform(7, (-3, 3), VEL, ACC), **kw)


def test_rate_limiter_brakes_faster_than_it_accelerates():
    r = RateLimiter(np.array([1.0]), np.array([1.0]), np.array([4.0]))
    r.reset(np.array([1.0]))
    assert r.step(np.array([0.0]), 0.1)[0] == pytest.approx(0.6)
    assert r.step(np.array([1.0]), 0.1)[0] == pytest.approx(0.7)


def test_image_freshness_watchdog():
    from vla_ros.core.stats import Freshness
    f = Freshness(0.5)
    assert not f.fresh(10.0) and f.age(10.0) == float('inf')
    f.update(9.6)
    assert f.fresh(10.0)
    assert not f.fresh(10.2)
    f.update(10.3)  # slightly ahead (clock skew): accepted
    assert f.fresh(10.0)
    f.update(25.0)  # far in the future: the clock jumped back, not fresh
    assert not f.fresh(10.0)
    with pytest.raises(ValueError):
        Freshness(0.0)


def test_resyncs_once_to_the_first_measurement_after_enable():
    loop = _loop()
    loop.set_enabled(False)
    loop.set_enabled(True, np.zeros(7), 1.0)  # cached measurement is stale (pre-reset)
    loop.on_measured(np.full(7, 0.4), 1.0)  # the real pose arrives after enabling
    assert np.allclose(loop.tick(1.05).arm_positions, 0.4)
    loop.on_measured(np.full(7, 0.39), 1.05)  # sagging: not followed (no creep)
    assert np.allclose(loop.tick(1.10).arm_positions, 0.4)


def test_start_outside_limits_does_not_jump():
    cfg = c.ControlConfig(JointLimits.uniform(7, (-3.0, 3.0), VEL, ACC), state_timeout=1e9,
                          interpolation='min_jerk')
    loop = c.ControlLoop(cfg)
    loop.start(np.full(7, 3.3), 0.0)
    loop.set_enabled(True)
    q_prev = np.full(7, 3.3)
    for i in range(1, 40):
        if i % 4 == 1:
            loop.on_target(np.full(7, 2.0), np.zeros(3), None, i * DT)
        loop.on_measured(q_prev, i * DT)
        q = loop.tick(i * DT).arm_positions
        assert np.all(np.abs(q - q_prev) <= VEL * DT + 1e-9)
        q_prev = q
    assert np.allclose(q_prev, 2.0, atol=1e-3)


def test_clock_jumping_back_makes_targets_stale():
    loop = _loop()
    loop.on_measured(np.zeros(7), 100.0)
    loop.on_target(np.zeros(7), np.array([0.5, 0, 0]), None, 100.0)
    for i in range(10):
        loop.tick(100.0 + i * DT)
    loop.on_measured(np.zeros(7), 3.0)  # sim restarted: time is 3 s again
    cmds = [loop.tick(3.0 + i * DT) for i in range(1, 10)]
    assert cmds[0].state == c.TIMEOUT
    assert cmds[-1].base_velocity[0] == 0.0


def test_stale_joint_states_hold_arm_and_stop_base():
    loop = _loop(state_timeout=0.5)
    loop.on_measured(np.zeros(7), 0.0)
    loop.on_target(np.full(7, 0.5), np.array([0.4, 0, 0]), None, 0.0)
    t = 0.0
    for _ in range(8):
        t += DT
        loop.on_measured(np.zeros(7), t)
        loop.on_target(np.full(7, 0.5), np.array([0.4, 0, 0]), None, t)
        cmd = loop.tick(t)
    held = cmd.arm_positions.copy()
    for _ in range(20):  # joint_states stop arriving; targets keep coming
        t += DT
        loop.on_target(np.full(7, 0.5), np.array([0.4, 0, 0]), None, t)
        cmd = loop.tick(t)
    assert cmd.state == c.STATE_STALE
    assert np.all(cmd.base_velocity == 0.0)
    assert np.all(np.abs(cmd.arm_positions - held) <= VEL * 0.5 + 1e-9)
    assert np.array_equal(loop.tick(t + DT).arm_positions, cmd.arm_positions)


def test_base_sign_change_respects_the_acceleration_limit():
    r = RateLimiter(np.array([0.5]), np.array([1.5]), np.array([3.0]))
    r.reset(np.array([0.01]))
    prev = 0.01
    for _ in range(10):
        v = r.step(np.array([-0.5]), DT)[0]
        # through zero: at most decel for the part above zero, accel for the rest
        assert abs(v) <= 1.5 * DT + 1e-12 or abs(v - prev) <= 1.5 * DT + 1e-12
        prev = v
    assert prev == pytest.approx(-0.5)


def test_from_params_uses_node_defaults_and_rejects_bad_values():
    cfg = c.ControlConfig.from_params({})
    assert cfg.interpolation == 'linear' and cfg.joint_limits.velocity_max.shape == (7,)
    with pytest.raises(ValueError, match='joint_velocity_max'):
        c.ControlConfig.from_params({'joint_velocity_max': [1.0, 2.0]})
    with pytest.raises(ValueError, match='interpolation'):
        c.ControlConfig.from_params({'interpolation': 'cubic'})


def _assert_within_limits(positions, lo, hi, q0, v0=None):
    """Every tick: position, velocity and acceleration (from commanded positions) in limits."""
    q = np.vstack([q0[None], positions])
    v = np.diff(q, axis=0) / DT
    v = np.vstack([np.zeros((1, q.shape[1])) if v0 is None else v0[None], v])
    a = np.diff(v, axis=0) / DT
    assert np.all(q >= lo - 1e-12) and np.all(q <= hi + 1e-12), (q.min(), q.max())
    assert np.all(np.abs(v) <= VEL + 1e-9), np.abs(v).max()
    assert np.all(np.abs(a) <= ACC + 1e-6), np.abs(a).max()


@pytest.mark.parametrize('mode', ['linear', 'min_jerk'])
@pytest.mark.parametrize('target', [3.5, 9.0, -100.0])
def test_braking_onto_a_position_limit_respects_the_acceleration_limit(mode, target):
    # Issue 7.5: min_jerk braked onto the limit at 6.17 rad/s^2 (6.72 seen through nodes).
    loop = _loop(mode)
    out = []
    for i in range(1, 120):
        if i % 4 == 1:
            loop.on_target(np.full(7, target), np.zeros(3), None, i * DT)
        out.append(loop.tick(i * DT).arm_positions)
    _assert_within_limits(np.array(out), -3.0, 3.0, np.zeros(7))
    assert np.allclose(out[-1], np.clip(target, -3.0, 3.0))


def test_limits_hold_on_every_tick_for_random_targets_and_rates():
    rng = np.random.default_rng(7)
    for trial in range(60):
        lo, hi = -rng.uniform(0.5, 3.2), rng.uniform(0.5, 3.2)
        cfg = c.ControlConfig(JointLimits.uniform(7, (lo, hi), VEL, ACC), state_timeout=1e9,
                              interpolation=('linear', 'min_jerk')[trial % 2])
        loop = c.ControlLoop(cfg)
        q0 = rng.uniform(lo, hi, 7)
        loop.start(q0, 0.0)
        loop.set_enabled(True)
        every = int(rng.choice([3, 4, 5, 8]))
        out = []
        for i in range(1, 120):
            if i % every == 1:
                loop.on_target(rng.uniform(-4, 4, 7) * rng.choice([1, 3]), np.zeros(3), None,
                               i * DT)
            out.append(loop.tick(i * DT).arm_positions)
        _assert_within_limits(np.array(out), lo, hi, q0)


def test_stopping_speed_is_self_consistent():
    from vla_ros.core.interpolation import stopping_speed
    for d in (0.0, 1e-4, 0.015, 0.0427, 0.3, 2.0):
        v = float(stopping_speed(np.array([d]), np.array([ACC]), DT)[0])
        # brake at the limit from v: the distance covered is exactly d
        covered, u = 0.0, v
        while u > 1e-12:
            covered += u * DT
            u -= ACC * DT
        assert covered == pytest.approx(d, abs=1e-12)


def _cruise(loop, target=2.5):
    """Stream a far target until the arm moves at the velocity limit; return (t, q, v)."""
    q_prev = loop.arm.position.copy()
    for i in range(1, 13):
        loop.on_measured(q_prev, i * DT)  # (the first one re-syncs, at rest)
        if i % 4 == 1:
            loop.on_target(np.full(7, target), np.zeros(3), None, i * DT)
        q = loop.tick(i * DT).arm_positions
        v, q_prev = (q - q_prev) / DT, q
    assert np.allclose(v, VEL)
    return 12 * DT, q, v


@pytest.mark.parametrize('mode', ['linear', 'min_jerk'])
@pytest.mark.parametrize('how', ['target_timeout', 'state_stale', 'disabled'])
def test_stopping_a_moving_arm_brakes_within_the_acceleration_limit(mode, how):
    # Issue 7.4: tokens stopping at 1.5 rad/s halted the arm in one tick (30 rad/s^2).
    loop = _loop(mode, command_timeout=0.5, state_timeout=0.5 if how == 'state_stale' else 1e9)
    t, q0, v0 = _cruise(loop)
    if how == 'disabled':
        loop.set_enabled(False)
    out, states = [], []
    for _ in range(30):
        t += DT
        if how == 'target_timeout':
            loop.on_measured(q0, t)
        cmd = loop.tick(t)
        out.append(cmd.arm_positions)
        states.append(cmd.state)
    assert {'target_timeout': c.TIMEOUT, 'state_stale': c.STATE_STALE,
            'disabled': c.DISABLED}[how] in states
    _assert_within_limits(np.array(out), -3.0, 3.0, q0, v0)
    # at rest after v/a (0.25 s) from the moment the stop began, then held exactly
    assert np.array_equal(out[-1], out[-10])
    assert np.all(out[-1] - q0 <= VEL ** 2 / (2 * ACC) + VEL * (0.5 + 2 * DT) + 1e-9)


def test_estop_still_stops_the_arm_in_one_tick():
    loop = _loop()
    t, q0, _ = _cruise(loop)
    loop.set_estop(True)
    assert np.array_equal(loop.tick(t + DT).arm_positions, q0)


@pytest.mark.parametrize('offset,kind', [(1e6, 'future'), (-1e6, 'old'), (None, 'unstamped'),
                                         (0.2, 'future'), (-0.51, 'old')])
def test_targets_are_judged_by_their_source_stamp(offset, kind):
    # Issue 7.3: targets stamped 1e6 s ahead, 1e6 s behind or 0 moved the arm.
    now = 1000.0
    loop = _loop()
    stamp = 0.0 if offset is None else now + offset
    with pytest.raises(c.StaleTarget) as err:
        loop.on_arm_target(np.full(7, 0.5), now, stamp)
    assert err.value.kind == kind
    with pytest.raises(c.StaleTarget):
        loop.on_base_target(np.array([0.4, 0, 0]), now, stamp)
    with pytest.raises(c.StaleTarget):
        loop.on_target(np.full(7, 0.5), np.array([0.4, 0, 0]), 1.0, now, stamp)
    assert loop.gripper == 0.0  # the gripper part of a stale whole target is dropped too
    for i in range(1, 10):
        cmd = loop.tick(now + i * DT)
        assert np.all(cmd.arm_positions == 0.0) and np.all(cmd.base_velocity == 0.0)
    assert cmd.state == c.HOLDING


def test_the_target_watchdog_counts_from_the_source_stamp():
    loop = _loop(command_timeout=0.5)
    now = 10.0
    assert loop.on_target(np.full(7, 0.1), np.array([0.2, 0, 0]), None, now, now - 0.4)
    assert loop.tick(now + DT).state == c.TRACKING  # 0.45 s after the camera saw it
    assert loop.tick(now + 3 * DT).state == c.TIMEOUT  # 0.55 s, though it arrived 0.15 s ago
    # slightly ahead (clock skew within the tolerance) is executed
    assert loop.on_target(np.full(7, 0.1), np.zeros(3), None, now + 0.2, now + 0.25)
    assert loop.tick(now + 0.25).state == c.TRACKING


def test_future_stamp_tolerance_is_validated():
    with pytest.raises(ValueError, match='future_stamp_tolerance'):
        c.ControlConfig(JointLimits.uniform(7, (-3, 3), VEL, ACC), future_stamp_tolerance=-1)


def test_joint_indices_reject_duplicated_and_missing_names():
    names = ['j1', 'j2', 'j3']
    assert list(c.joint_indices(['j3', 'x', 'j1', 'j2'], names)) == [2, 3, 0]
    with pytest.raises(ValueError, match=r"\['j2'\] appear more than once"):
        c.joint_indices(['j1', 'j2', 'j3', 'j2'], names)
    with pytest.raises(ValueError, match=r"no positions for \['j3'\]"):
        c.joint_indices(['j1', 'j2'], names)


def test_clock_watchdog_notices_a_frozen_clock_on_the_steady_clock():
    w = c.ClockWatchdog(0.5)
    assert not w.observe(100.0, 0.0)
    assert not w.observe(100.05, 0.05)
    assert not w.observe(100.05, 0.5)  # stuck for 0.45 s
    assert w.observe(100.05, 0.6) and w.stuck_for(0.6) == pytest.approx(0.55)
    assert not w.observe(3.0, 0.65)  # moving again (here: jumped back, a sim reset)
    with pytest.raises(ValueError, match='clock_timeout'):
        c.ClockWatchdog(0.0)


def test_frozen_clock_ramps_base_down_brakes_arm_and_resumes_only_on_a_new_target():
    # Issue 7.1: with /clock lost, no tick ran and the last cmd_vel stayed on the wire.
    loop = _loop(command_timeout=0.5)
    t, q0, v0 = _cruise(loop)
    cmd = None
    for i in range(12):
        if i % 4 == 0:
            loop.on_target(np.full(7, 2.5), np.array([0.4, 0.0, 0.3]), None, t)
        t += DT
        loop.on_measured(q0, t)
        before, cmd = cmd, loop.tick(t)
    assert cmd.base_velocity[0] == pytest.approx(0.4)
    assert np.allclose(cmd.arm_positions - before.arm_positions, VEL * DT)  # still moving
    q_prev, v_prev = cmd.arm_positions, (cmd.arm_positions - before.arm_positions) / DT
    base = [cmd.base_velocity]
    arm = []
    for _ in range(20):  # the same (frozen) time: fresh targets keep "arriving"
        loop.on_target(np.full(7, 2.5), np.array([0.4, 0.0, 0.3]), None, t)
        cmd = loop.tick_frozen()
        assert cmd.state == c.CLOCK_FROZEN
        base.append(cmd.base_velocity)
        arm.append(cmd.arm_positions)
    steps = np.abs(np.diff(np.array(base), axis=0))
    assert np.all(steps <= np.array([2.0, 2.0, 3.0]) * DT + 1e-12)  # deceleration limits
    assert np.all(base[-1] == 0.0) and np.all(base[5] == 0.0)  # 0.4 m/s / 2 m/s^2 = 4 ticks
    _assert_within_limits(np.array(arm), -3.0, 3.0, q_prev, v_prev)
    assert np.array_equal(arm[-1], arm[-5])  # at rest, held
    # time moves again: nothing resumes until a new target
    cmd = loop.tick(t + DT)
    assert cmd.state == c.HOLDING and np.all(cmd.base_velocity == 0.0)
    assert np.array_equal(cmd.arm_positions, arm[-1])
    assert loop.on_target(np.full(7, 2.5), np.array([0.4, 0.0, 0.3]), None, t + DT)
    assert loop.tick(t + 2 * DT).state == c.TRACKING
