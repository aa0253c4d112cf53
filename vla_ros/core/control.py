"""
The 20 Hz control loop: interpolation plus every safety rule of DESIGN.md section 8.

``ControlLoop`` is what the interpolation node runs each tick. It owns the watchdog on
targets, the latched e-stop and the enable gate, so every rule is testable without ROS:

* no measured joint state yet → no command at all (we do not know where the arm is);
* e-stop → base velocity zero and arm held at once; latched until cleared, and clearing
  it leaves the motion gate closed until motion is enabled again;
* disabled → arm held, base ramps to zero within its deceleration limit;
* no target newer than ``command_timeout`` → base ramps to zero, arm and gripper hold;
* otherwise → track the newest target within the limits.
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .interpolation import ArmInterpolator, JointLimits, RateLimiter

WAITING = 'waiting_for_joint_states'
ESTOP = 'estop'
DISABLED = 'disabled'
TIMEOUT = 'target_timeout'
HOLDING = 'holding'
TRACKING = 'tracking'


@dataclass(frozen=True)
class ControlConfig:
    """Everything the loop needs; the node builds it from validated parameters."""

    joint_limits: JointLimits
    control_frequency: float = 20.0
    inference_frequency: float = 5.0
    interpolation: str = 'min_jerk'
    command_timeout: float = 0.5
    base_max_velocity: np.ndarray = field(
        default_factory=lambda: np.array([0.5, 0.5, 0.5]))
    base_max_acceleration: np.ndarray = field(
        default_factory=lambda: np.array([1.0, 1.0, 1.5]))
    base_max_deceleration: np.ndarray = field(
        default_factory=lambda: np.array([2.0, 2.0, 3.0]))

    def __post_init__(self):
        if not (self.control_frequency > 0 and self.inference_frequency > 0):
            raise ValueError(
                f'frequencies must be > 0, found control_frequency={self.control_frequency}, '
                f'inference_frequency={self.inference_frequency}')
        ratio = self.control_frequency / self.inference_frequency
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(
                f'control_frequency / inference_frequency must be a whole number >= 1, found '
                f'{self.control_frequency} / {self.inference_frequency} = {ratio:g}')
        if not self.command_timeout > 0:
            raise ValueError(f'command_timeout must be > 0 s, found {self.command_timeout}')
        for name in ('base_max_velocity', 'base_max_acceleration', 'base_max_deceleration'):
            v = np.asarray(getattr(self, name), dtype=float)
            if v.shape != (3,) or np.any(~np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f'{name} must be 3 finite values > 0, found {list(v)}')

    @property
    def control_period(self) -> float:
        """Seconds between commands."""
        return 1.0 / self.control_frequency

    @property
    def inference_period(self) -> float:
        """Seconds between policy targets (one interpolation segment)."""
        return 1.0 / self.inference_frequency


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
        if measured_gripper is not None and np.isfinite(measured_gripper):
            self.gripper = float(np.clip(measured_gripper, 0.0, 1.0))
        self._base_goal = np.zeros(3)
        self._last_arm = None
        self._last_base = None

    def on_measured(self, measured_arm: np.ndarray):
        """
        Follow the measured arm pose until the first target after start or enable.

        A joint_states message published before a reset (or before an operator moved the
        arm by hand) can still be the cached one when motion is enabled; re-syncing on every
        measurement until a target arrives means the first segment starts where the arm is.
        """
        if self.started and self._last_arm is None and not self.estop:
            self.arm.reset(measured_arm)

    def set_enabled(self, enabled: bool, measured_arm: np.ndarray = None, now: float = 0.0):
        """Open or close the motion gate; opening re-syncs to the measured state if given."""
        if enabled and self.estop:
            return False
        if enabled and not self.enabled and measured_arm is not None:
            self.arm.reset(measured_arm)
            self._last_arm = None
            self._last_base = None
        if not enabled:
            self.arm.hold()
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

    def on_arm_target(self, arm: np.ndarray, now: float) -> bool:
        """Accept 7 joint targets; False when the gate is closed. Raises on bad values."""
        arm = np.asarray(arm, dtype=float)
        if arm.shape != self.arm.position.shape or not np.all(np.isfinite(arm)):
            raise ValueError(f'expected {self.arm.position.shape[0]} finite joint targets, '
                             f'found {arm!r}')
        if not self._accepting():
            return False
        self.arm.set_target(arm, now)
        self._last_arm = now
        return True

    def on_base_target(self, base: np.ndarray, now: float) -> bool:
        """Accept a base twist (vx, vy, wz); False when the gate is closed."""
        base = np.asarray(base, dtype=float)
        if base.shape != (3,) or not np.all(np.isfinite(base)):
            raise ValueError(f'expected 3 finite base velocities, found {base!r}')
        if not self._accepting():
            return False
        self._base_goal = base.copy()
        self._last_base = now
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

    def on_target(self, arm, base, gripper, now: float) -> bool:
        """Accept a whole 11-D target (arm, base, gripper or None)."""
        arm = np.asarray(arm, dtype=float)
        base = np.asarray(base, dtype=float)
        for values, n in ((arm, 7), (base, 3)):
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise ValueError(f'expected {n} finite values, found {values!r}')
        if gripper is not None and not np.isfinite(gripper):
            raise ValueError(f'gripper target must be finite, found {gripper!r}')
        ok = self.on_arm_target(arm, now)
        ok = self.on_base_target(base, now) and ok
        if gripper is not None:
            ok = self.on_gripper_target(gripper, now) and ok
        return ok

    def _fresh(self, stamp: Optional[float], now: float) -> bool:
        return stamp is not None and now - stamp <= self.config.command_timeout

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
            return self._command(self.arm.position.copy(), self.base.step(np.zeros(3), dt))
        arm_fresh = self._fresh(self._last_arm, now)
        base_fresh = self._fresh(self._last_base, now)
        if not arm_fresh and self.arm.goal is not None:
            # Stale arm target: stop where the command is now rather than finish the segment.
            self.arm.hold()
        arm = self.arm.step(now, dt) if arm_fresh else self.arm.position.copy()
        base = self.base.step(self._base_goal if base_fresh else np.zeros(3), dt)
        if arm_fresh or base_fresh:
            self.state = TRACKING
        elif self._last_arm is None and self._last_base is None:
            self.state = HOLDING
        else:
            self.state = TIMEOUT
        return self._command(arm, base)

    def _command(self, arm, base=None) -> Command:
        base = self.base.value.copy() if base is None else base
        return Command(arm_positions=arm, base_velocity=base, gripper=self.gripper,
                       state=self.state)
