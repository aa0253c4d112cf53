"""
Arm kinematics from the robot's URDF, for end-effector (tool) actions.

Pure numpy, no simulator: the same solver runs in detokenizer_node on a robot, in the
in-process pipeline and when datasets are relabelled, so the simulator and the robot can
never disagree about what a tool delta means. The chain is read from the URDF from
``base`` (the frame tool deltas are expressed in; the head camera rides on it) to ``tip``
(the tool centre point), through its 7 revolute arm joints.

Inverse kinematics is damped least squares (damping keeps steps finite near
singularities) with the joint limits enforced at every iteration; the arm's seventh
degree of freedom is spent pulling toward the starting joints in the Jacobian's null
space, so consecutive solutions stay continuous. A target the solver cannot reach within
tolerance, or only with a joint step larger than ``max_joint_step`` (0.6 rad: two policy
steps at the joint-delta space's bound; the interpolator still limits joint velocity, the
cap catches an IK branch flip), is refused: the caller
holds the previous target (``ActionSpace.compose``), it never jumps.
"""

from dataclasses import dataclass
import math
from typing import List, Optional, Sequence, Tuple
import xml.etree.ElementTree as ET

import numpy as np


class KinematicsError(ValueError):
    """The URDF does not describe a usable arm chain."""


def _rpy_matrix(rpy: Sequence[float]) -> np.ndarray:
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = (math.cos(r), math.sin(r), math.cos(p), math.sin(p),
                              math.cos(y), math.sin(y))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix of ``angle`` rad about the unit vector ``axis`` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def rotation_vector(r: np.ndarray) -> np.ndarray:
    """Log map: the rotation vector (axis times angle, rad) of rotation matrix ``r``."""
    cos = max(-1.0, min(1.0, 0.5 * (np.trace(r) - 1.0)))
    angle = math.acos(cos)
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return 0.5 * w
    if math.pi - angle < 1e-4:  # near pi: from the symmetric part
        axis = np.sqrt(np.maximum(0.0, (np.diag(r) + 1.0) / 2.0))
        axis *= np.where(w >= 0.0, 1.0, -1.0) if np.any(w) else 1.0
        return axis / max(np.linalg.norm(axis), 1e-12) * angle
    return w * (angle / (2.0 * math.sin(angle)))


def rotation_from_vector(v: Sequence[float]) -> np.ndarray:
    """Exp map: rotation matrix of the rotation vector ``v``."""
    v = np.asarray(v, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    return axis_angle(v / angle, angle)


@dataclass(frozen=True)
class _Joint:
    name: str
    origin: np.ndarray      # 4x4 parent -> joint frame
    axis: Optional[np.ndarray]  # None for fixed joints
    lower: float
    upper: float


@dataclass(frozen=True)
class IKSolution:
    """Joint solution and its remaining errors; ``ok`` when within tolerance."""

    q: np.ndarray
    position_error: float
    rotation_error: float
    ok: bool
    reason: str = ''


class ArmKinematics:
    """Forward and inverse kinematics of the URDF chain ``base`` -> ``tip``."""

    def __init__(self, chain: List[_Joint], joint_names: Sequence[str], base: str, tip: str,
                 damping: float = 0.02, posture_gain: float = 0.05,
                 max_joint_step: float = 0.6, position_tolerance: float = 1e-3,
                 rotation_tolerance: float = 1e-2):
        self.chain = chain
        self.joint_names = tuple(joint_names)
        self.base, self.tip = base, tip
        moving = [j.name for j in chain if j.axis is not None]
        if moving != list(self.joint_names):
            raise KinematicsError(f'chain {base} -> {tip} moves joints {moving}, expected '
                                  f'{list(self.joint_names)}')
        self.lower = np.array([j.lower for j in chain if j.axis is not None])
        self.upper = np.array([j.upper for j in chain if j.axis is not None])
        self.damping = float(damping)
        self.posture_gain = float(posture_gain)
        self.max_joint_step = float(max_joint_step)
        self.position_tolerance = float(position_tolerance)
        self.rotation_tolerance = float(rotation_tolerance)

    @classmethod
    def from_urdf(cls, path: str, joint_names: Sequence[str], base: str = 'base_link',
                  tip: str = 'tcp', **options) -> 'ArmKinematics':
        """Read the chain from a URDF file."""
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise KinematicsError(f'cannot read URDF {path}: {exc}') from exc
        by_child = {}
        for j in root.findall('joint'):
            child = j.find('child').get('link')
            by_child[child] = j
        chain: List[_Joint] = []
        link = tip
        while link != base:
            if link not in by_child:
                raise KinematicsError(f'{path}: no joint chain from {base!r} to {tip!r} '
                                      f'(stopped at link {link!r})')
            j = by_child[link]
            origin = j.find('origin')
            xyz = [float(v) for v in (origin.get('xyz', '0 0 0') if origin is not None
                                      else '0 0 0').split()]
            rpy = [float(v) for v in (origin.get('rpy', '0 0 0') if origin is not None
                                      else '0 0 0').split()]
            t = np.eye(4)
            t[:3, :3] = _rpy_matrix(rpy)
            t[:3, 3] = xyz
            kind = j.get('type')
            axis = None
            lower = upper = 0.0
            if kind in ('revolute', 'continuous'):
                a = j.find('axis')
                axis = np.array([float(v) for v in (a.get('xyz') if a is not None
                                                    else '1 0 0').split()])
                axis /= np.linalg.norm(axis)
                limit = j.find('limit')
                lower = float(limit.get('lower', -math.pi)) if limit is not None else -math.pi
                upper = float(limit.get('upper', math.pi)) if limit is not None else math.pi
            elif kind != 'fixed':
                raise KinematicsError(f'{path}: joint {j.get("name")!r} of type {kind!r} '
                                      'in the arm chain (revolute and fixed only)')
            chain.append(_Joint(j.get('name'), t, axis, lower, upper))
            link = j.find('parent').get('link')
        chain.reverse()
        return cls(chain, joint_names, base, tip, **options)

    # -- forward ---------------------------------------------------------------------------
    def _frames(self, q: Sequence[float]) -> Tuple[np.ndarray, List[Tuple[np.ndarray,
                                                                          np.ndarray]]]:
        t = np.eye(4)
        axes = []
        i = 0
        for j in self.chain:
            t = t @ j.origin
            if j.axis is not None:
                axes.append((t[:3, 3].copy(), t[:3, :3] @ j.axis))
                r = np.eye(4)
                r[:3, :3] = axis_angle(j.axis, float(q[i]))
                t = t @ r
                i += 1
        return t, axes

    def forward(self, q: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
        """Tool position (m) and rotation [3, 3] in the base frame for joints ``q``."""
        t, _ = self._frames(np.asarray(q, dtype=np.float64))
        return t[:3, 3].copy(), t[:3, :3].copy()

    def jacobian(self, q: Sequence[float]) -> np.ndarray:
        """Geometric Jacobian [6, 7] (linear rows, then angular) in the base frame."""
        t, axes = self._frames(np.asarray(q, dtype=np.float64))
        p = t[:3, 3]
        cols = [np.concatenate([np.cross(z, p - o), z]) for o, z in axes]
        return np.stack(cols, axis=1)

    # -- inverse ---------------------------------------------------------------------------
    def solve(self, position: Sequence[float], rotation: np.ndarray, q_start: Sequence[float],
              iterations: int = 50) -> IKSolution:
        """Joints that put the tool at ``position`` / ``rotation``, starting from ``q_start``."""
        target_p = np.asarray(position, dtype=np.float64)
        q0 = np.clip(np.asarray(q_start, dtype=np.float64), self.lower, self.upper)
        q = q0.copy()
        eye = np.eye(len(q))
        for _ in range(iterations):
            p, r = self.forward(q)
            err = np.concatenate([target_p - p, rotation_vector(rotation @ r.T)])
            if np.linalg.norm(err[:3]) < 0.1 * self.position_tolerance and \
                    np.linalg.norm(err[3:]) < 0.1 * self.rotation_tolerance:
                break
            jac = self.jacobian(q)
            jjt = jac @ jac.T + (self.damping ** 2) * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            null = eye - np.linalg.pinv(jac, rcond=1e-3) @ jac
            dq += null @ (self.posture_gain * (q0 - q))
            q = np.clip(q + dq, self.lower, self.upper)
        p, r = self.forward(q)
        pos_err = float(np.linalg.norm(target_p - p))
        rot_err = float(np.linalg.norm(rotation_vector(rotation @ r.T)))
        step = float(np.max(np.abs(q - q0)))
        if pos_err > self.position_tolerance or rot_err > self.rotation_tolerance:
            return IKSolution(q, pos_err, rot_err, False,
                              f'unreachable: {pos_err * 1000:.1f} mm / {rot_err:.3f} rad off '
                              'after IK (joint limits or workspace)')
        if step > self.max_joint_step:
            return IKSolution(q, pos_err, rot_err, False,
                              f'a joint would move {step:.2f} rad in one step (max '
                              f'{self.max_joint_step} rad)')
        return IKSolution(q, pos_err, rot_err, True)

    # -- tool deltas -----------------------------------------------------------------------
    def apply_delta(self, q_previous: Sequence[float], delta: Sequence[float]) -> IKSolution:
        """Solve for the tool moved by ``delta`` = (dx, dy, dz, rx, ry, rz) in the base frame."""
        d = np.asarray(delta, dtype=np.float64)
        p, r = self.forward(q_previous)
        return self.solve(p + d[:3], rotation_from_vector(d[3:6]) @ r, q_previous)

    def delta_between(self, q_from: Sequence[float], q_to: Sequence[float]) -> np.ndarray:
        """Return the tool delta (dx, dy, dz, rx, ry, rz) from ``q_from``'s tool to ``q_to``'s."""
        p0, r0 = self.forward(q_from)
        p1, r1 = self.forward(q_to)
        return np.concatenate([p1 - p0, rotation_vector(r1 @ r0.T)])


def default_kinematics() -> ArmKinematics:
    """Return the shipped robot's arm: ``description/urdf/vla_robot.urdf``, base_link -> tcp."""
    from ..paths import share_file
    from .action_space import DEFAULT_ARM_JOINTS
    return ArmKinematics.from_urdf(share_file('description', 'urdf', 'vla_robot.urdf'),
                                   DEFAULT_ARM_JOINTS)
