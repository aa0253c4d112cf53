"""
Trajectory shaping between 5 Hz policy targets and 20 Hz controller commands.

``ArmInterpolator`` plans, for every new target, a segment from the current *commanded*
state to the target over one inference period, then passes every tick through a limiter
(position, velocity, acceleration per joint). Re-planning starts from the commanded position
and velocity, so an early or late target never makes the velocity jump. ``RateLimiter``
is the same limiter for velocity signals (the base).
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np

MODES = ('linear', 'min_jerk')


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits; arrays of equal length."""

    position_min: np.ndarray
    position_max: np.ndarray
    velocity_max: np.ndarray
    acceleration_max: np.ndarray

    def __post_init__(self):
        n = len(self.position_min)
        for name in ('position_max', 'velocity_max', 'acceleration_max'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'{name} has {len(getattr(self, name))} entries, expected {n}')
        if np.any(np.asarray(self.position_max) <= np.asarray(self.position_min)):
            raise ValueError(f'position_max must exceed position_min, found '
                             f'{list(self.position_min)} / {list(self.position_max)}')
        for name in ('velocity_max', 'acceleration_max'):
            v = np.asarray(getattr(self, name), dtype=float)
            if np.any(~np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f'{name} must be finite and > 0, found {list(v)}')

    @classmethod
    def uniform(cls, n: int, pos: Tuple[float, float], vel: float, acc: float):
        """Build limits that are the same on every joint."""
        return cls(np.full(n, float(pos[0])), np.full(n, float(pos[1])), np.full(n, float(vel)),
                   np.full(n, float(acc)))


def _quintic(q0, v0, a0, q1, duration):
    """
    Coefficients of the quintic from (q0, v0, a0) to (q1, 0, 0) in ``duration`` seconds.

    With v0 = a0 = 0 this is the minimum-jerk profile; otherwise it is the minimum-jerk
    segment that starts with the current motion, which is what keeps re-planning smooth.
    """
    T = duration
    d = q1 - q0
    c3 = (20 * d - (12 * v0 + 3 * a0 * T) * T) / (2 * T ** 3)
    c4 = (-30 * d + (16 * v0 + 3 * a0 * T) * T) / (2 * T ** 4)
    c5 = (12 * d - (6 * v0 + a0 * T) * T) / (2 * T ** 5)
    return np.stack([q0, v0, a0 / 2.0, c3, c4, c5])


class RateLimiter:
    """
    Moves a vector toward a goal with bounded magnitude, rise and fall rates.

    ``accel`` bounds how fast a component may grow in magnitude, ``decel`` how fast it may
    shrink (stopping is usually allowed to be quicker than starting).
    """

    def __init__(self, maximum: np.ndarray, accel: np.ndarray, decel: np.ndarray):
        self.maximum = np.asarray(maximum, dtype=float)
        self.accel = np.asarray(accel, dtype=float)
        self.decel = np.asarray(decel, dtype=float)
        self.value = np.zeros_like(self.maximum)

    def reset(self, value=None):
        """Set the current value (zeros by default)."""
        self.value = (np.zeros_like(self.maximum) if value is None
                      else np.asarray(value, dtype=float).copy())

    def step(self, goal: np.ndarray, dt: float) -> np.ndarray:
        """Advance one tick of ``dt`` seconds toward ``goal``; returns the new value."""
        goal = np.clip(np.asarray(goal, dtype=float), -self.maximum, self.maximum)
        v = self.value
        shrinking = (v != 0) & (np.sign(goal - v) != np.sign(v))
        # Magnitude shrinks at the deceleration limit, but only down to zero: past zero the
        # value grows again, and the rest of the tick is limited by the acceleration limit.
        to_zero = np.where(shrinking, np.minimum(np.abs(v), np.abs(goal - v)), 0.0)
        t_zero = np.minimum(to_zero / self.decel, dt)
        stop = v - np.sign(v) * np.minimum(to_zero, self.decel * dt)
        rest = np.where(shrinking, dt - t_zero, dt)
        start = np.where(shrinking, stop, v)
        step = np.clip(goal - start, -self.accel * rest, self.accel * rest)
        crossing = shrinking & (np.abs(goal - v) > np.abs(v))
        self.value = np.where(shrinking & ~crossing, stop, start + step)
        return self.value.copy()


class ArmInterpolator:
    """Turns sparse joint targets into a dense, limited joint position stream."""

    def __init__(self, limits: JointLimits, segment_duration: float, mode: str = 'min_jerk'):
        if mode not in MODES:
            raise ValueError(f'interpolation mode must be one of {MODES}, found {mode!r}')
        if not segment_duration > 0:
            raise ValueError(f'segment_duration must be > 0, found {segment_duration}')
        self.limits = limits
        self.duration = float(segment_duration)
        self.mode = mode
        n = len(limits.position_min)
        self.position = np.zeros(n)
        self.velocity = np.zeros(n)
        self.acceleration = np.zeros(n)
        self._coeffs = None
        self._start = 0.0
        self._goal = None
        self.initialised = False

    def reset(self, position: np.ndarray):
        """Take ``position`` (measured joint state) as the commanded state, at rest."""
        position = np.asarray(position, dtype=float)
        if position.shape != self.position.shape or not np.all(np.isfinite(position)):
            raise ValueError(f'expected {self.position.shape[0]} finite joint positions, found '
                             f'{position!r}')
        self.position = position.copy()
        self.velocity[:] = 0.0
        self.acceleration[:] = 0.0
        self._coeffs = None
        self._goal = None
        self.initialised = True

    def hold(self):
        """Stop at the current commanded position at once, in one tick (the e-stop)."""
        self.velocity[:] = 0.0
        self.acceleration[:] = 0.0
        self._coeffs = None
        self._goal = None

    def brake(self):
        """
        Drop the target and come to rest within the acceleration limit (timeouts, disable).

        The next ``step`` calls slow every joint by at most ``acceleration_max * dt`` per tick
        (and never past a position limit) until it stands still, then hold there.
        """
        self._coeffs = None
        self._goal = None

    @property
    def moving(self) -> bool:
        """Tell whether any joint is still commanded to move."""
        return bool(np.any(self.velocity != 0.0))

    @property
    def goal(self):
        """Return the target being tracked, or None while holding."""
        return None if self._goal is None else self._goal.copy()

    def set_target(self, target: np.ndarray, now: float) -> np.ndarray:
        """Plan a new segment toward ``target`` (clipped to limits); returns the clipped goal."""
        target = np.asarray(target, dtype=float)
        if target.shape != self.position.shape or not np.all(np.isfinite(target)):
            raise ValueError(f'expected {self.position.shape[0]} finite joint targets, found '
                             f'{target!r}')
        goal = np.clip(target, self.limits.position_min, self.limits.position_max)
        if self.mode == 'min_jerk':
            self._coeffs = _quintic(self.position, self.velocity, self.acceleration, goal,
                                    self.duration)
        else:
            self._coeffs = (self.position.copy(), goal)
        self._start = float(now)
        self._goal = goal
        return goal

    def _desired(self, now: float) -> np.ndarray:
        if self._coeffs is None:
            return self.position
        t = min(max(now - self._start, 0.0), self.duration)
        if self.mode == 'min_jerk':
            c = self._coeffs
            return c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))))
        q0, goal = self._coeffs
        return q0 + (goal - q0) * (t / self.duration)

    def step(self, now: float, dt: float) -> np.ndarray:
        """Advance to time ``now`` (one tick of ``dt``); returns commanded positions."""
        lim = self.limits
        desired = self._desired(now)
        if self._goal is not None:
            # Never pull back against the goal: when momentum carried the command past the
            # planned point (a re-plan from a moving state), coast toward the goal instead of
            # reversing, which would hunt around the target.
            desired = np.clip(desired, np.minimum(self.position, self._goal),
                              np.maximum(self.position, self._goal))
        wanted_v = (desired - self.position) / dt
        # Acceleration limit first (keeps velocity continuous), then the velocity limit.
        a_dt = lim.acceleration_max * dt
        dv = np.clip(wanted_v - self.velocity, -a_dt, a_dt)
        v = np.clip(self.velocity + dv, -lim.velocity_max, lim.velocity_max)
        # Brake early enough to stop at the goal and before either position limit, but never
        # harder than the acceleration limit allows (slowing by more than a*dt is a jerk).
        floor = np.abs(self.velocity) - a_dt
        acc = lim.acceleration_max
        if self._goal is not None:
            remaining = self._goal - self.position
            # Exactly at the goal, motion either way goes past it.
            toward = np.where(remaining != 0, np.sign(remaining), np.sign(v))
            v = _cap_speed(v, toward, np.abs(remaining), floor, acc, dt)
        v = _cap_speed(v, 1.0, lim.position_max - self.position, floor, acc, dt)
        v = _cap_speed(v, -1.0, self.position - lim.position_min, floor, acc, dt)
        q = self.position + v * dt
        # Safety net (the caps above make it a no-op from any state reached inside the
        # limits): a pose measured outside the limits is left at the limit-respecting speed
        # toward the (clipped) goal rather than snapped inside in one tick.
        clipped = np.clip(q, np.minimum(lim.position_min, self.position),
                          np.maximum(lim.position_max, self.position))
        v = np.where(clipped != q, (clipped - self.position) / dt, v)
        self.acceleration = (v - self.velocity) / dt
        self.velocity = v
        self.position = clipped
        return self.position.copy()


def stopping_speed(distance: np.ndarray, acceleration: np.ndarray, dt: float) -> np.ndarray:
    """
    Return the fastest speed from which a stop at the acceleration limit ends in ``distance``.

    The stop slows by at most ``acceleration * dt`` per tick and positions advance by
    ``v * dt`` per tick (``distance`` >= 0). Braking at the limit from a speed in
    ((n-1) a dt, n a dt] covers D(v) = dt (n v - a dt n (n-1) / 2) in n ticks, linear in v, so
    for a distance the number of ticks n is the smallest with a dt^2 n (n+1) / 2 >= distance
    and the speed solves D(v) = distance. The rule is self-consistent: after one tick at that
    speed, the speed allowed for the remaining distance is exactly a dt lower.
    """
    d = np.maximum(np.asarray(distance, dtype=float), 0.0)
    step = np.asarray(acceleration, dtype=float) * dt * dt
    n = np.maximum(np.ceil((np.sqrt(1.0 + 8.0 * d / step) - 1.0) / 2.0 - 1e-12), 1.0)
    return (d / dt + step / dt * n * (n - 1) / 2.0) / n


def _cap_speed(v, direction, distance, floor, acceleration, dt):
    """Limit speed in ``direction`` (+1/-1) to what can still stop within ``distance``."""
    cap = np.maximum(stopping_speed(distance, acceleration, dt), floor)
    return np.where(np.sign(v) == direction, np.clip(v, -cap, cap), v)
