"""
What ros2_control's controllers do between a command topic and the robot, for sim_node.

A forward position controller for the arm (or a joint trajectory controller, sampled at
every physics chunk), a base velocity controller that stops when no command is newer than
its ``cmd_vel_timeout`` (diff_drive_controller's rule), and a forward gripper controller.
After an episode reset, commands are ignored for ``reset_hold`` seconds so upstream loops
can re-sync to the new joint states. Thread-safe: ROS callbacks write, the physics thread
reads. No rclpy.
"""

import math
import threading
from typing import Optional, Sequence

import numpy as np

from .robot import ArmTrajectory


class ControllerEmulation:
    """Pending commands and the rules that turn them into robot targets at sim time t."""

    def __init__(self, cmd_vel_timeout: float, reset_hold: float):
        """Start with no command (the robot holds its initial targets)."""
        self.cmd_vel_timeout = float(cmd_vel_timeout)
        self.reset_hold = float(reset_hold)
        self._lock = threading.Lock()
        self.reset(-math.inf)

    def reset(self, now: float):
        """Forget every command; ignore new ones until ``now + reset_hold``."""
        with self._lock:
            self._arm: Optional[np.ndarray] = None
            self._trajectory: Optional[ArmTrajectory] = None
            self._base = np.zeros(3)
            self._base_time = -math.inf
            self._gripper: Optional[float] = None
            self._ignore_until = now + self.reset_hold if math.isfinite(now) else -math.inf

    def accepting(self, now: float) -> bool:
        """Tell whether commands are taken (not within the hold after a reset)."""
        return now >= self._ignore_until

    def arm(self, q: Sequence[float], now: float) -> bool:
        """Take 7 joint positions; ValueError if malformed, False if ignored."""
        q = np.asarray(q, dtype=float)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f'arm_controller/commands needs 7 finite positions, found '
                             f'{q.tolist()}')
        if not self.accepting(now):
            return False
        with self._lock:
            self._arm, self._trajectory = q, None
        return True

    def trajectory(self, times: Sequence[float], positions, now: float,
                   current: np.ndarray) -> bool:
        """Take a joint trajectory: absolute sim times, 7 positions each; False if ignored."""
        if not self.accepting(now):
            return False
        with self._lock:
            start = self._arm if self._arm is not None else current
            self._trajectory = ArmTrajectory(now, start, times, positions)
        return True

    def base(self, v: Sequence[float], now: float) -> bool:
        """Take a twist (vx, vy, wz); ValueError if not finite, False if ignored."""
        v = np.asarray(v, dtype=float)
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise ValueError(f'cmd_vel needs 3 finite values, found {v.tolist()}')
        if not self.accepting(now):
            return False
        with self._lock:
            self._base, self._base_time = v, now
        return True

    def gripper(self, value: float, now: float) -> bool:
        """Take a gripper closure; ValueError if not finite, False if ignored."""
        if not math.isfinite(value):
            raise ValueError(f'gripper_controller/commands needs a finite value, found {value}')
        if not self.accepting(now):
            return False
        with self._lock:
            self._gripper = float(value)
        return True

    def apply(self, robot, now: float):
        """Set the robot's actuator targets for sim time ``now``."""
        with self._lock:
            arm = self._trajectory.sample(now) if self._trajectory is not None else self._arm
            base = self._base if now - self._base_time <= self.cmd_vel_timeout else np.zeros(3)
            grip = self._gripper
        if arm is not None:
            robot.set_arm_targets(arm)
        robot.set_base_twist(base)
        if grip is not None:
            robot.set_gripper(grip)
