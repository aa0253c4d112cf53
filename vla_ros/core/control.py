"""
The 20 Hz control loop: interpolation plus every safety rule (docs/architecture.md).

``ControlLoop`` is what the interpolation node runs each tick. It owns the watchdog on
targets, the latched e-stop and the enable gate, so every rule is testable without ROS:

* no measured joint state yet → no command at all (we do not know where the arm is);
* measured joint state older than ``state_timeout`` → arm brakes to rest, base ramps to
  zero;
* e-stop → base velocity zero and arm held at once (one tick); latched until cleared, and
  clearing it leaves the motion gate closed until motion is enabled again;
* disabled → arm brakes to rest within its acceleration limit, base ramps to zero within
  its deceleration limit;
* no target newer than ``command_timeout`` → base ramps to zero, the arm brakes to rest
  within its acceleration limit, the gripper holds. A target's age is judged by the source
  (camera) stamp it carries, not by when it arrived: a target already older than
  ``command_timeout``, stamped more than ``future_stamp_tolerance`` in the future, or not
  stamped at all (0) is not executed (``StaleTarget``);
* otherwise → track the newest target within the limits.

The loop's own time is the caller's (ROS time in the node, sim time under use_sim_time).
When that clock stops (``/clock`` lost), a tick driven by it never comes, so the node also
feeds ``ClockWatchdog`` from a steady clock and, once ROS time has not advanced for
``clock_timeout`` seconds of steady time, calls ``tick_frozen`` instead: base ramps to zero,
arm brakes to rest, all targets are dropped; motion resumes with the next target once the
clock moves again.

Only the e-stop stops the arm in one tick; every other stop brakes at the acceleration
limit (a moving arm halted in one 50 ms tick sees 30 rad/s² for 1.5 rad/s).

Length (over 300 lines): one state machine (watchdogs, e-stop, gate, limits, the lost-clock
path) and its configuration; the interpolation itself is core/interpolation.py.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

from .interpolation import ArmInterpolator, JointLimits, MODES, RateLimiter
from .params import defaults

# interpolation_node's parameter defaults: its schema (core/params.py), the one table.
_D = defaults('interpolation_node')


def whole_ratio(numerator: float, denominator: float, what: str) -> int:
    """
    Return numerator / denominator as an int >= 1, else raise ValueError naming ``what``.

    Used for every rate relation that must divide evenly: control vs inference frequency,
    control period vs physics step, publish periods vs the simulation chunk.
    """
    if not (numerator > 0 and denominator > 0):
        raise ValueError(f'{what}: both must be > 0, found {numerator:g} and {denominator:g}')
    ratio = numerator / denominator
    n = int(round(ratio))
    if n < 1 or abs(ratio - n) > 1e-6:
        raise ValueError(f'{what} must be a whole number >= 1, found {numerator:g} / '
                         f'{denominator:g} = {ratio:.6g}')
    return n


def joint_indices(names: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    """
    Return where each of ``wanted`` sits in ``names`` (a joint_states or trajectory message).

    Raises ValueError when a name appears more than once (which copy is the joint?) or a
    wanted joint is missing.
    """
    seen, duplicated = set(), []
    for name in names:
        if name in seen and name not in duplicated:
            duplicated.append(name)
        seen.add(name)
    if duplicated:
        raise ValueError(f'joint names {duplicated} appear more than once in {list(names)}')
    missing = [n for n in wanted if n not in seen]
    if missing:
        raise ValueError(f'no positions for {missing}: found names {list(names)}, expected '
                         f'{list(wanted)}')
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[n] for n in wanted], dtype=np.intp)


WAITING = 'waiting_for_joint_states'
STATE_STALE = 'joint_states_stale'
ESTOP = 'estop'
DISABLED = 'disabled'
TIMEOUT = 'target_timeout'
HOLDING = 'holding'
TRACKING = 'tracking'
CLOCK_FROZEN = 'clock_frozen'


class ClockWatchdog:
    """
    Notice, on a steady clock, that the control clock (ROS time) has stopped advancing.

    Under ``use_sim_time`` ROS time only moves while ``/clock`` arrives; every timer on it
    stalls with it. The caller samples both clocks from a steady-clock timer; ROS time
    counts as moving whenever its value changed since the last sample (a jump back, as
    after a sim reset, is movement too).
    """

    def __init__(self, timeout: float):
        if not timeout > 0:
            raise ValueError(f'clock_timeout must be > 0 s, found {timeout}')
        self.timeout = float(timeout)
        self._clock: Optional[float] = None
        self._moved_at = 0.0

    def observe(self, clock_now: float, steady_now: float) -> bool:
        """Record one sample of both clocks; return True while the control clock is frozen."""
        if self._clock is None or clock_now != self._clock:
            self._clock = clock_now
            self._moved_at = steady_now
        return self.stuck_for(steady_now) > self.timeout

    def stuck_for(self, steady_now: float) -> float:
        """Return steady seconds since the control clock last moved (0 before any sample)."""
        return 0.0 if self._clock is None else steady_now - self._moved_at


@dataclass(frozen=True)
class ControlConfig:
    """Everything the loop needs; the node builds it from validated parameters."""

    joint_limits: JointLimits
    control_frequency: float = _D['control_frequency']
    inference_frequency: float = _D['inference_frequency']
    interpolation: str = _D['interpolation']
    command_timeout: float = _D['command_timeout']
    state_timeout: float = _D['state_timeout']
    # Clock skew allowed between the camera's computer and this one.
    future_stamp_tolerance: float = _D['future_stamp_tolerance']
    # Steady-clock seconds without ROS time advancing before the loop stops on its own.
    clock_timeout: float = _D['clock_timeout']
    base_max_velocity: np.ndarray = field(
        default_factory=lambda: np.array(_D['base_max_velocity'], dtype=float))
    base_max_acceleration: np.ndarray = field(
        default_factory=lambda: np.array(_D['base_max_acceleration'], dtype=float))
    base_max_deceleration: np.ndarray = field(
        default_factory=lambda: np.array(_D['base_max_deceleration'], dtype=float))

    def __post_init__(self):
        if not (self.control_frequency > 0 and self.inference_frequency > 0):
            raise ValueError(
                f'frequencies must be > 0, found control_frequency={self.control_frequency}, '
                f'inference_frequency={self.inference_frequency}')
        whole_ratio(self.control_frequency, self.inference_frequency,
                    'control_frequency / inference_frequency')
        for name in ('command_timeout', 'state_timeout', 'clock_timeout'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0 s, found {getattr(self, name)}')
        if not 0.0 <= self.future_stamp_tolerance <= self.command_timeout:
            raise ValueError(f'future_stamp_tolerance must be in [0, command_timeout '
                             f'{self.command_timeout}] s, found {self.future_stamp_tolerance}')
        for name in ('base_max_velocity', 'base_max_acceleration', 'base_max_deceleration'):
            v = np.asarray(getattr(self, name), dtype=float)
            if v.shape != (3,) or np.any(~np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f'{name} must be 3 finite values > 0, found {list(v)}')

    @classmethod
    def from_params(cls, params: Dict) -> 'ControlConfig':
        """
        Build from interpolation_node parameter values (the YAML section or the node's).

        Joint limits take 1 value (all joints) or 7; missing keys get the node's defaults.
        Raises ValueError naming the parameter and quoting the bad value.
        """
        p = {**_D, **params}

        def array(name, n):
            a = np.asarray(list(p[name]), dtype=float)
            if a.shape == (1,):
                a = np.full(n, a[0])
            if a.shape != (n,) or not np.all(np.isfinite(a)):
                raise ValueError(f'{name} must be 1 or {n} finite numbers, found '
                                 f'{list(p[name])}')
            return a
        if p['interpolation'] not in MODES:
            raise ValueError(f'interpolation must be one of {MODES}, found '
                             f'{p["interpolation"]!r}')
        limits = JointLimits(array('joint_position_min', 7), array('joint_position_max', 7),
                             array('joint_velocity_max', 7), array('joint_acceleration_max', 7))
        return cls(joint_limits=limits, control_frequency=float(p['control_frequency']),
                   inference_frequency=float(p['inference_frequency']),
                   interpolation=str(p['interpolation']),
                   command_timeout=float(p['command_timeout']),
                   state_timeout=float(p['state_timeout']),
                   future_stamp_tolerance=float(p['future_stamp_tolerance']),
                   clock_timeout=float(p['clock_timeout']),
                   base_max_velocity=array('base_max_velocity', 3),
                   base_max_acceleration=array('base_max_acceleration', 3),
                   base_max_deceleration=array('base_max_deceleration', 3))

    @property
    def control_period(self) -> float:
        """Seconds between commands."""
        return 1.0 / self.control_frequency

    @property
    def inference_period(self) -> float:
        """Seconds between policy targets (one interpolation segment)."""
        return 1.0 / self.inference_frequency


class StaleTarget(ValueError):
    """
    A target whose source stamp says it must not be executed.

    ``kind`` is ``'old'`` (older than command_timeout), ``'future'`` (ahead of this clock by
    more than future_stamp_tolerance: the clock jumped back or the stamp is garbage) or
    ``'unstamped'`` (stamp 0).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Command:
    """One tick's output for the three controllers, and why it is what it is."""

    arm_positions: np.ndarray
    base_velocity: np.ndarray
    gripper: float
    state: str


class ControlLoop:
    """Pure control logic; the caller supplies time (seconds, any monotonic clock)."""

    def __init__(self, config: ControlConfig):
        self.config = config
        self.arm = ArmInterpolator(config.joint_limits, config.inference_period,
                                   config.interpolation)
        self.base = RateLimiter(config.base_max_velocity, config.base_max_acceleration,
                                config.base_max_deceleration)
        self.gripper = 0.0
        self._base_goal = np.zeros(3)
        self.gripper_commanded = False
        self._resync = False
        self._measured_at: Optional[float] = None
        self._last_arm: Optional[float] = None
        self._last_base: Optional[float] = None
        self.enabled = False
        self.estop = False
        self.state = WAITING

    @property
    def started(self) -> bool:
        """Tell whether a measured joint state has been taken."""
        return self.arm.initialised

    def start(self, measured_arm: np.ndarray, now: float, measured_gripper: float = None):
        """Take the measured joint state as the commanded state (no jump at start)."""
        self.arm.reset(measured_arm)
        self.base.reset()
        self._measured_at = now
        if measured_gripper is not None and np.isfinite(measured_gripper):
            self.gripper = float(np.clip(measured_gripper, 0.0, 1.0))
        self._base_goal = np.zeros(3)
        self._last_arm = None
        self._last_base = None

    def on_measured(self, measured_arm: np.ndarray, now: float):
        """
        Record a joint-state measurement; re-sync to it once after start or enable.

        The measurement cached when motion is enabled can predate a reset (or an operator
        moving the arm by hand), so the first one received after enabling replaces the
        commanded state. Only once: following every measurement would let a position
        controller with steady-state error sag under gravity.
        """
        self._measured_at = now
        if self._resync and self.started and not self.estop:
            self.arm.reset(measured_arm)
            self._resync = False

    def set_enabled(self, enabled: bool, measured_arm: np.ndarray = None, now: float = 0.0):
        """Open or close the motion gate; opening re-syncs to the measured state if given."""
        if enabled and self.estop:
            return False
        if enabled and not self.enabled:
            if measured_arm is not None:
                self.arm.reset(measured_arm)
            self._resync = True
            self._last_arm = None
            self._last_base = None
        if not enabled:
            self.arm.brake()
        self.enabled = bool(enabled)
        return True

    def set_estop(self, active: bool):
        """Latch (True) or clear (False) the e-stop; clearing does not re-enable motion."""
        if active:
            self.estop = True
            self.enabled = False
            self.arm.hold()
            self.base.reset()
            self._base_goal = np.zeros(3)
        else:
            self.estop = False

    def _accepting(self) -> bool:
        return self.started and self.enabled and not self.estop

    def check_stamp(self, stamp: Optional[float], now: float) -> float:
        """
        Return the time a target counts from: its source stamp, or ``now`` when None.

        None is for in-process callers whose target is as of ``now`` (the sim evaluator).
        Raises StaleTarget for a stamp of 0, older than command_timeout, or ahead of ``now``
        by more than future_stamp_tolerance.
        """
        if stamp is None:
            return float(now)
        stamp = float(stamp)
        timeout, tolerance = self.config.command_timeout, self.config.future_stamp_tolerance
        if stamp == 0.0 or not np.isfinite(stamp):
            raise StaleTarget('unstamped', f'target has no source stamp ({stamp:g}): the '
                              'camera stamp must travel with it')
        if now - stamp > timeout:
            raise StaleTarget('old', f'target stamped {now - stamp:.3f} s ago, older than '
                              f'command_timeout {timeout:g} s')
        if stamp - now > tolerance:
            raise StaleTarget('future', f'target stamped {stamp - now:.3f} s in the future '
                              f'(tolerance {tolerance:g} s): clock jumped back or bad stamp')
        return stamp

    def on_arm_target(self, arm: np.ndarray, now: float, stamp: Optional[float] = None
                      ) -> bool:
        """
        Accept 7 joint targets stamped ``stamp`` (source time); False when the gate is closed.

        Raises ValueError on bad values, StaleTarget (a ValueError) on a bad stamp.
        """
        arm = np.asarray(arm, dtype=float)
        if arm.shape != self.arm.position.shape or not np.all(np.isfinite(arm)):
            raise ValueError(f'expected {self.arm.position.shape[0]} finite joint targets, '
                             f'found {arm!r}')
        stamp = self.check_stamp(stamp, now)
        if not self._accepting():
            return False
        self.arm.set_target(arm, now)
        self._last_arm = stamp
        return True

    def on_base_target(self, base: np.ndarray, now: float, stamp: Optional[float] = None
                       ) -> bool:
        """Accept a base twist (vx, vy, wz) stamped ``stamp``; False when the gate is closed."""
        base = np.asarray(base, dtype=float)
        if base.shape != (3,) or not np.all(np.isfinite(base)):
            raise ValueError(f'expected 3 finite base velocities, found {base!r}')
        stamp = self.check_stamp(stamp, now)
        if not self._accepting():
            return False
        self._base_goal = base.copy()
        self._last_base = stamp
        return True

    def on_gripper_target(self, gripper: float, now: float) -> bool:
        """Accept a gripper target in [0, 1] (clipped); False when the gate is closed."""
        if not np.isfinite(gripper):
            raise ValueError(f'gripper target must be finite, found {gripper!r}')
        if not self._accepting():
            return False
        self.gripper = float(np.clip(gripper, 0.0, 1.0))
        self.gripper_commanded = True
        return True

    def on_target(self, arm, base, gripper, now: float, stamp: Optional[float] = None) -> bool:
        """Accept a whole 11-D target (arm, base, gripper or None) stamped ``stamp``."""
        arm = np.asarray(arm, dtype=float)
        base = np.asarray(base, dtype=float)
        for values, n in ((arm, 7), (base, 3)):
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise ValueError(f'expected {n} finite values, found {values!r}')
        if gripper is not None and not np.isfinite(gripper):
            raise ValueError(f'gripper target must be finite, found {gripper!r}')
        self.check_stamp(stamp, now)
        ok = self.on_arm_target(arm, now, stamp)
        ok = self.on_base_target(base, now, stamp) and ok
        if gripper is not None:
            ok = self.on_gripper_target(gripper, now) and ok
        return ok

    def _fresh(self, stamp: Optional[float], now: float, timeout: float,
               ahead: float = 0.0) -> bool:
        # A stamp in the future (beyond ``ahead``, the tolerated clock skew) means the clock
        # jumped back (sim reset, bag loop): stale.
        return stamp is not None and -ahead <= now - stamp <= timeout

    def tick(self, now: float) -> Optional[Command]:
        """Compute the command for time ``now``; None until a joint state was measured."""
        if not self.started:
            self.state = WAITING
            return None
        dt = self.config.control_period
        if self.estop:
            self.state = ESTOP
            self.base.reset()
            return self._command(self.arm.position.copy())
        if not self.enabled:
            self.state = DISABLED
            return self._command(self.arm.step(now, dt), self.base.step(np.zeros(3), dt))
        if not self._fresh(self._measured_at, now, self.config.state_timeout):
            self.arm.brake()
            self.state = STATE_STALE
            return self._command(self.arm.step(now, dt), self.base.step(np.zeros(3), dt))
        timeout = self.config.command_timeout
        ahead = self.config.future_stamp_tolerance
        arm_fresh = self._fresh(self._last_arm, now, timeout, ahead)
        base_fresh = self._fresh(self._last_base, now, timeout, ahead)
        if not arm_fresh:
            # Stale arm target: brake to rest from where the command is now (within the
            # acceleration limit) rather than finish the segment.
            self.arm.brake()
        arm = self.arm.step(now, dt)
        base = self.base.step(self._base_goal if base_fresh else np.zeros(3), dt)
        if arm_fresh or base_fresh:
            self.state = TRACKING
        elif self._last_arm is None and self._last_base is None:
            self.state = HOLDING
        else:
            self.state = TIMEOUT
        return self._command(arm, base)

    def tick_frozen(self) -> Optional[Command]:
        """
        Compute one control period's command while the control clock is frozen.

        Called from a steady-clock timer at the control rate instead of ``tick``: the base
        ramps to zero within its deceleration limit, the arm brakes to rest within its
        acceleration limit, the gripper holds. Every target is dropped, so once the clock
        moves again nothing resumes until a new target arrives. None until started.
        """
        if not self.started:
            self.state = WAITING
            return None
        self._base_goal = np.zeros(3)
        self._last_arm = None
        self._last_base = None
        self.arm.brake()
        if self.estop:
            self.state = ESTOP
            self.base.reset()
            return self._command(self.arm.position.copy())
        self.state = CLOCK_FROZEN
        dt = self.config.control_period
        # No target: the interpolator's time argument is unused while it brakes.
        return self._command(self.arm.step(0.0, dt), self.base.step(np.zeros(3), dt))

    def _command(self, arm, base=None) -> Command:
        base = self.base.value.copy() if base is None else base
        return Command(arm_positions=arm, base_velocity=base, gripper=self.gripper,
                       state=self.state)
