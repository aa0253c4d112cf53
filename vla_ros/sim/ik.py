"""
Damped least-squares inverse kinematics for the simulated arm's tool centre point.

Works on its own ``MjData`` copy of the model, so solving never disturbs the simulation.
The base pose is an input (the arm is solved in the world frame for wherever the base is);
the spare (7th) degree of freedom is spent pulling toward a rest posture in the Jacobian's
null space, which keeps solutions continuous from one call to the next.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class IKResult:
    """Solution, remaining position error (m) and orientation error (rad)."""

    q: np.ndarray
    position_error: float
    orientation_error: float

    @property
    def ok(self) -> bool:
        """Return True when within 2 mm and ~1 degree of the target."""
        return self.position_error < 2e-3 and self.orientation_error < 0.02


def tool_down_rotation(yaw: float) -> np.ndarray:
    """Rotation of a tool pointing straight down whose x axis has heading ``yaw`` (world)."""
    c, s = np.cos(yaw), np.sin(yaw)
    x = np.array([c, s, 0.0])
    z = np.array([0.0, 0.0, -1.0])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def orientation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Small-angle rotation vector (world frame) that turns ``current`` into ``target``."""
    return 0.5 * sum(np.cross(current[:, i], target[:, i]) for i in range(3))


class ArmIK:
    """Tool-centre-point IK for ``Robot`` (7 arm joints, base held fixed)."""

    def __init__(self, robot, rest: Optional[Sequence[float]] = None, damping: float = 0.05,
                 posture_gain: float = 0.1):
        self.robot = robot
        self.mujoco = robot.mujoco
        self.model = robot.model
        self.data = self.mujoco.MjData(self.model)
        self.rest = np.asarray(rest if rest is not None else robot.arm_positions(), dtype=float)
        self.damping = float(damping)
        self.posture_gain = float(posture_gain)
        self.low = robot.arm_range[:, 0] + 1e-3
        self.high = robot.arm_range[:, 1] - 1e-3
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def sync_base(self, base_qpos: Sequence[float]):
        """Use this base pose (x, y, yaw) for the following solves."""
        self.data.qpos[self.robot.base_qpos] = np.asarray(base_qpos, dtype=float)

    def forward(self, q: Sequence[float]):
        """Tool centre point position and rotation for arm joints ``q``."""
        self.data.qpos[self.robot.arm_qpos] = q
        self.mujoco.mj_kinematics(self.model, self.data)
        s = self.robot.tcp_site
        return self.data.site_xpos[s].copy(), self.data.site_xmat[s].reshape(3, 3).copy()

    def pose_error(self, q, position, rotation, rot_weight: float = 0.1) -> float:
        """Scalar pose error (m-equivalent) used to compare candidate joint vectors."""
        p, r = self.forward(q)
        return float(np.linalg.norm(p - position)
                     + rot_weight * np.linalg.norm(orientation_error(r, rotation)))

    def solve(self, position: Sequence[float], rotation: np.ndarray,
              q_init: Sequence[float], iterations: int = 60) -> IKResult:
        """Solve for the arm joints that put the tool at ``position`` / ``rotation``."""
        mj = self.mujoco
        position = np.asarray(position, dtype=float)
        q = np.clip(np.asarray(q_init, dtype=float), self.low, self.high)
        dof = self.robot.arm_dof
        eye = np.eye(7)
        for _ in range(iterations):
            p, r = self.forward(q)
            err = np.concatenate([position - p, orientation_error(r, rotation)])
            if np.linalg.norm(err[:3]) < 1e-4 and np.linalg.norm(err[3:]) < 1e-3:
                break
            # mj_jac* read cdof, which mj_comPos computes (mj_kinematics alone does not).
            mj.mj_comPos(self.model, self.data)
            mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.robot.tcp_site)
            jac = np.vstack([self._jacp[:, dof], self._jacr[:, dof]])
            # Step size limited so a far target does not throw the arm through a flip.
            if np.linalg.norm(err[:3]) > 0.1:
                err[:3] *= 0.1 / np.linalg.norm(err[:3])
            jjt = jac @ jac.T + (self.damping ** 2) * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            # The posture pull goes through the exact null-space projector: projecting with
            # the damped inverse would leak it into the task and leave a steady error.
            null = eye - np.linalg.pinv(jac, rcond=1e-3) @ jac
            dq += null @ (self.posture_gain * (self.rest - q))
            q = np.clip(q + dq, self.low, self.high)
        p, r = self.forward(q)
        return IKResult(q, float(np.linalg.norm(position - p)),
                        float(np.linalg.norm(orientation_error(r, rotation))))

    def refine_quantised(self, q: np.ndarray, position, rotation, quantise,
                         step: np.ndarray, passes: int = 3) -> np.ndarray:
        """
        Pick the quantised joint vector nearest the pose, not merely nearest ``q``.

        ``quantise`` maps joint values to what the action tokenizer will deliver;
        ``step`` is one bin per joint. Rounding each joint alone can add up to a
        centimetre at the tool; a few passes of coordinate search over neighbouring bins
        win most of that back.
        """
        best = quantise(np.clip(q, self.low, self.high))
        best_err = self.pose_error(best, position, rotation)
        for _ in range(passes):
            improved = False
            for j in range(7):
                for sign in (-1.0, 1.0):
                    cand = best.copy()
                    cand[j] += sign * step[j]
                    if not self.low[j] <= cand[j] <= self.high[j]:
                        continue
                    cand = quantise(cand)
                    e = self.pose_error(cand, position, rotation)
                    if e < best_err - 1e-6:
                        best, best_err, improved = cand, e, True
            if not improved:
                break
        return best
