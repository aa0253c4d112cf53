"""
The previous commanded target: what relative actions are added to and what the policy sees.

With a relative arm the policy's 7 arm values move the arm target commanded one policy
step earlier: a ``tool_delta`` arm (the shipped ``config/action_space.yaml``) moves its tool
pose (IK turns the result into joints), a ``delta_position`` arm
(``config/action_space_joint.yaml``) adds joint deltas. That 11-D target (arm positions,
base twist, gripper) is also the policy's ``state`` input. The same rule
runs in detokenizer_node (compose), inference_node (the model's state input, from the
targets the detokenizer published), the in-process evaluation and the scripted expert
(labels), so the four can never disagree.

Safety: the previous target falls back to the *measured* arm (base at rest, measured
gripper) when it is older than ``timeout`` or when any joint is more than
``max_deviation`` away from its measured position (the arm was held by e-stop, disable or
a controller, so the commanded target no longer describes the robot). A composed target
can therefore never be far from where the arm really is.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .action_space import (ActionSpace, ARM, BASE, GRIPPER, NUM_ARM_JOINTS, NUM_DIMENSIONS,
                           UnreachableTarget)
from .params import SHARED

STATE_DIM = NUM_DIMENSIONS


@dataclass(frozen=True)
class ComposerConfig:
    """When the previous commanded target stops being trusted (s, rad)."""

    timeout: float = SHARED['target_timeout'].default
    max_deviation: float = SHARED['max_target_deviation'].default

    def __post_init__(self):
        if not self.timeout > 0:
            raise ValueError(f'target timeout must be > 0 s, found {self.timeout}')
        if not self.max_deviation > 0:
            raise ValueError(f'max_deviation must be > 0 rad, found {self.max_deviation}')


def measured_state(measured_arm: Sequence[float], measured_gripper: float) -> np.ndarray:
    """Return the 11-D state of a robot at rest: measured arm, zero base, measured gripper."""
    state = np.zeros(STATE_DIM)
    state[ARM] = np.asarray(measured_arm, dtype=np.float64)
    state[GRIPPER] = 1.0 if float(measured_gripper) >= 0.5 else 0.0
    return state


class TargetComposer:
    """Holds the previous commanded 11-D target and applies the action space to it."""

    def __init__(self, space: ActionSpace, config: Optional[ComposerConfig] = None,
                 kinematics=None):
        self.space = space
        self.config = config or ComposerConfig()
        if kinematics is None and space.tool_arm:
            from .kinematics import default_kinematics
            kinematics = default_kinematics()
        self.kinematics = kinematics
        # Tool deltas the IK refused (the arm held its previous target) and why.
        self.unreachable = 0
        self.unreachable_reason = ''
        self._target: Optional[np.ndarray] = None
        self._time = -np.inf
        self.resyncs = 0
        self.reason = ''

    def reset(self):
        """Forget the previous target (the next one starts from the measured state)."""
        self._target = None
        self._time = -np.inf

    def observe(self, target: Sequence[float], now: float):
        """Record a target that was commanded at ``now`` (inference_node's view)."""
        t = self.space.check_target(target)
        self._target = t.copy()
        self._time = float(now)

    def previous(self, now: float, measured_arm: Sequence[float],
                 measured_gripper: float) -> np.ndarray:
        """Return the previous commanded target, or the measured state when untrusted."""
        arm = np.asarray(measured_arm, dtype=np.float64)
        if arm.shape != (NUM_ARM_JOINTS,) or not np.all(np.isfinite(arm)):
            raise ValueError(f'measured arm must be {NUM_ARM_JOINTS} finite values, found '
                             f'{arm}')
        if self._target is None:
            self.reason = 'no previous target'
        elif now - self._time > self.config.timeout:
            self.reason = (f'previous target is {now - self._time:.3f} s old (timeout '
                           f'{self.config.timeout} s)')
        elif np.max(np.abs(self._target[ARM] - arm)) > self.config.max_deviation:
            worst = int(np.argmax(np.abs(self._target[ARM] - arm)))
            self.reason = (f'joint {worst + 1} target is '
                           f'{abs(self._target[worst] - arm[worst]):.3f} rad from the measured '
                           f'position (max_deviation {self.config.max_deviation} rad)')
        else:
            self.reason = ''
            return self._target.copy()
        if self._target is not None:
            self.resyncs += 1
        return measured_state(arm, measured_gripper)

    def compose(self, values: Sequence[float], now: float, measured_arm: Sequence[float],
                measured_gripper: float) -> np.ndarray:
        """Turn detokenized values into the next absolute target and remember it."""
        base = self.previous(now, measured_arm, measured_gripper)
        try:
            target = self.space.compose(values, base[ARM], self.kinematics)
        except UnreachableTarget as exc:
            # Hold the arm where it was commanded; base and gripper still follow.
            self.unreachable += 1
            self.unreachable_reason = str(exc)
            target = np.array(values, dtype=np.float64)
            target[ARM] = base[ARM]
        self.observe(target, now)
        return target

    def labels(self, target: Sequence[float], now: float, measured_arm: Sequence[float],
               measured_gripper: float) -> np.ndarray:
        """Return the action values that ``compose`` turns into ``target`` (expert side)."""
        base = self.previous(now, measured_arm, measured_gripper)
        out = self.space.relative_labels(target, base[ARM], self.kinematics)
        out[BASE] = np.asarray(target, dtype=np.float64)[BASE]
        return out
