"""
The RT-1 action space and its 256-bin tokenizer (docs/architecture.md).

Pure numpy: no rclpy, no messages. The bounds come from ``config/action_space.yaml``; this
module only knows how to validate them and how to turn values into bins and back.

Length (over 300 lines): the action space and its tokenizer, which must agree bin for bin.
"""

from dataclasses import dataclass
import json
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

SCHEMES = ('uniform', 'rt1')
KINDS = ('position', 'delta_position', 'tool_delta', 'velocity', 'binary')
# How the 7 arm dimensions are read: absolute joint positions (the chapter's RT-1 space),
# joint deltas added to the previous *commanded* arm target (``ActionSpace.compose``), or
# tool deltas (RT-1's own arm actions): dx, dy, dz (m) and a rotation vector rx, ry, rz
# (rad) in the base frame applied to the previous commanded target's tool pose, turned
# into joints by IK (``core/kinematics.py``); the 7th value is reserved (ignored, label 0).
ARM_KINDS = ('position', 'delta_position', 'tool_delta')
NUM_ARM_JOINTS = 7
NUM_DIMENSIONS = 11
ARM = slice(0, 7)
BASE = slice(7, 10)
GRIPPER = 10
# Joint names the arm dimensions map to unless configured otherwise.
DEFAULT_ARM_JOINTS = [f'arm_joint_{i}' for i in range(1, 8)]


def check_arm_joint_names(names) -> tuple:
    """Return the 7 arm joint names as a tuple; raise ValueError unless 7 distinct names."""
    names = tuple(names)
    if len(names) != NUM_ARM_JOINTS or len(set(names)) != NUM_ARM_JOINTS:
        raise ValueError(f'arm_joint_names must be {NUM_ARM_JOINTS} distinct names, found '
                         f'{list(names)}')
    return names


class ActionSpaceError(ValueError):
    """An action space definition that cannot be used."""


class UnreachableTarget(ValueError):
    """A tool delta the arm's IK cannot reach without a jump; the arm holds instead."""


@dataclass(frozen=True)
class Dimension:
    """One action dimension: name, unit, closed range [low, high] and kind."""

    name: str
    unit: str
    low: float
    high: float
    kind: str

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ActionSpaceError(
                f'dimension {self.name!r}: bounds must be finite, found low={self.low}, '
                f'high={self.high}')
        if not self.high > self.low:
            raise ActionSpaceError(
                f'dimension {self.name!r}: expected high > low, found low={self.low}, '
                f'high={self.high}')
        if self.kind not in KINDS:
            raise ActionSpaceError(
                f'dimension {self.name!r}: kind must be one of {KINDS}, found {self.kind!r}')


@dataclass(frozen=True)
class ActionSpace:
    """The 11-D action space: 7 arm joint positions, 3 base velocities, 1 gripper."""

    dimensions: Tuple[Dimension, ...]
    scheme: str = 'uniform'
    num_bins: int = 256
    velocity_deadband: float = 0.0
    gripper_threshold: int = 128
    version: int = 1

    def __post_init__(self):
        if len(self.dimensions) != NUM_DIMENSIONS:
            raise ActionSpaceError(
                f'expected {NUM_DIMENSIONS} dimensions (7 arm, 3 base, 1 gripper), found '
                f'{len(self.dimensions)}')
        kinds = [d.kind for d in self.dimensions]
        arm_kind = kinds[0]
        expected = [arm_kind if arm_kind in ARM_KINDS else 'position'] * 7 \
            + ['velocity'] * 3 + ['binary']
        if kinds != expected:
            raise ActionSpaceError(
                f'expected dimension kinds {expected} (the 7 arm dimensions all one of '
                f'{ARM_KINDS}), found {kinds}')
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ActionSpaceError(f'dimension names must be unique, found {names}')
        if self.scheme not in SCHEMES:
            raise ActionSpaceError(
                f'scheme must be one of {SCHEMES}, found {self.scheme!r}')
        if self.num_bins != 256:
            raise ActionSpaceError(
                f'num_bins must be 256 (uint8 action tokens), found {self.num_bins}')
        if not 0 < self.gripper_threshold < self.num_bins:
            raise ActionSpaceError(
                f'gripper_threshold must be in 1..{self.num_bins - 1}, found '
                f'{self.gripper_threshold}')
        if not (math.isfinite(self.velocity_deadband) and self.velocity_deadband >= 0.0):
            raise ActionSpaceError(
                f'velocity_deadband must be >= 0, found {self.velocity_deadband}')

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Dict) -> 'ActionSpace':
        """Build from the ``action_space`` mapping of the YAML file or model metadata."""
        if 'action_space' in data:
            data = data['action_space']
        try:
            dims = tuple(
                Dimension(name=str(d['name']), unit=str(d['unit']), low=float(d['low']),
                          high=float(d['high']), kind=str(d['kind']))
                for d in data['dimensions'])
            return cls(dimensions=dims, scheme=str(data.get('scheme', 'uniform')),
                       num_bins=int(data.get('num_bins', 256)),
                       velocity_deadband=float(data.get('velocity_deadband', 0.0)),
                       gripper_threshold=int(data.get('gripper_threshold', 128)),
                       version=int(data.get('version', 1)))
        except (KeyError, TypeError) as exc:
            raise ActionSpaceError(
                f'action space definition is missing or has a malformed field: {exc!r}; '
                'expected keys scheme, num_bins, dimensions[name, unit, low, high, kind]'
            ) from exc

    @classmethod
    def from_yaml(cls, path: str) -> 'ActionSpace':
        """Load ``config/action_space.yaml`` (or any file with the same layout)."""
        import yaml
        try:
            with open(path, 'r', encoding='utf-8') as stream:
                data = yaml.safe_load(stream)
        except OSError as exc:
            raise ActionSpaceError(f'cannot read action space file {path!r}: {exc}') from exc
        if not isinstance(data, dict):
            raise ActionSpaceError(f'action space file {path!r} is not a mapping')
        return cls.from_dict(data)

    def to_dict(self) -> Dict:
        """Return the canonical mapping (the form written into model metadata)."""
        return {
            'version': self.version, 'num_bins': self.num_bins, 'scheme': self.scheme,
            'velocity_deadband': self.velocity_deadband,
            'gripper_threshold': self.gripper_threshold,
            'dimensions': [
                {'name': d.name, 'unit': d.unit, 'low': d.low, 'high': d.high, 'kind': d.kind}
                for d in self.dimensions],
        }

    def to_json(self) -> str:
        """Return the canonical JSON text (sorted keys) used in model metadata."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def identity(self) -> str:
        """Return ``sha256:<16 hex>`` of the canonical JSON: what messages carry to be refused."""
        import hashlib
        return 'sha256:' + hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def differences(self, other: 'ActionSpace', tol: float = 1e-9) -> List[str]:
        """List human-readable differences between two action spaces (empty if equal)."""
        out = []
        for field in ('scheme', 'num_bins', 'gripper_threshold'):
            if getattr(self, field) != getattr(other, field):
                out.append(f'{field}: {getattr(self, field)!r} != {getattr(other, field)!r}')
        if abs(self.velocity_deadband - other.velocity_deadband) > tol:
            out.append(f'velocity_deadband: {self.velocity_deadband} != '
                       f'{other.velocity_deadband}')
        for a, b in zip(self.dimensions, other.dimensions):
            if (a.name, a.unit, a.kind) != (b.name, b.unit, b.kind):
                out.append(f'dimension {a.name}/{a.unit}/{a.kind} != {b.name}/{b.unit}/{b.kind}')
            if abs(a.low - b.low) > tol or abs(a.high - b.high) > tol:
                out.append(f'{a.name} bounds: [{a.low}, {a.high}] != [{b.low}, {b.high}]')
        return out

    # -- views --------------------------------------------------------------------------
    @property
    def names(self) -> List[str]:
        """Dimension names in action order."""
        return [d.name for d in self.dimensions]

    @property
    def low(self) -> np.ndarray:
        """Lower bounds, float64 [11]."""
        return np.array([d.low for d in self.dimensions], dtype=np.float64)

    @property
    def high(self) -> np.ndarray:
        """Upper bounds, float64 [11]."""
        return np.array([d.high for d in self.dimensions], dtype=np.float64)

    @property
    def arm_kind(self) -> str:
        """``position`` (absolute joint targets) or ``delta_position`` (relative)."""
        return self.dimensions[0].kind

    @property
    def relative_arm(self) -> bool:
        """Tell whether arm values are deltas on the previous commanded arm target."""
        return self.arm_kind in ('delta_position', 'tool_delta')

    @property
    def tool_arm(self) -> bool:
        """Tell whether arm values are tool-pose deltas (joint targets come from IK)."""
        return self.arm_kind == 'tool_delta'

    def compose(self, values: Sequence[float], previous_arm: Sequence[float],
                kinematics=None) -> np.ndarray:
        """
        Turn detokenized values [11] into an absolute 11-D target.

        For ``delta_position`` arms the 7 arm values are added to ``previous_arm``, the arm
        target commanded one policy step earlier (not the measured joints: controller lag
        is invisible in one frame, the command is known exactly). Absolute arms pass
        through. Joint limits are the interpolator's job. For ``tool_delta`` arms
        ``kinematics`` (``core.kinematics.ArmKinematics``) solves the joints; a target it
        cannot reach raises ``UnreachableTarget`` (the caller holds the previous arm).
        """
        out = np.array(values, dtype=np.float64)
        if out.shape != (NUM_DIMENSIONS,):
            raise ValueError(f'expected {NUM_DIMENSIONS} values, found shape {out.shape}')
        if self.relative_arm:
            prev = np.asarray(previous_arm, dtype=np.float64)
            if prev.shape != (NUM_ARM_JOINTS,) or not np.all(np.isfinite(prev)):
                raise ValueError(f'previous arm target must be {NUM_ARM_JOINTS} finite '
                                 f'values, found {prev}')
            if self.tool_arm:
                if kinematics is None:
                    raise ValueError('a tool_delta action space needs the arm kinematics')
                solution = kinematics.apply_delta(prev, out[:6])
                if not solution.ok:
                    raise UnreachableTarget(solution.reason)
                out[ARM] = solution.q
            else:
                out[ARM] = prev + out[ARM]
        return out

    def check_target(self, target: Sequence[float], dims=slice(None)) -> np.ndarray:
        """
        Return ``target`` as float64; ValueError unless this space could have composed it.

        ``target`` holds the dimensions ``dims`` (default: all 11). Every value must be
        finite in float32 (the model's state input), and the base and gripper (and an
        absolute arm) must lie in their dimension's range. Relative arm targets are bounded
        by the composer's deviation check and the interpolator's limits.
        """
        idx = np.arange(NUM_DIMENSIONS)[dims]
        t = np.asarray(target, dtype=np.float64)
        if t.shape != idx.shape:
            raise ValueError(f'target must have {idx.size} values, found shape {t.shape}')
        low, high = self.low[idx], self.high[idx]
        bad = ~np.isfinite(t) | (np.abs(t) > np.finfo(np.float32).max)
        ranged = ~((idx < NUM_ARM_JOINTS) & self.relative_arm)
        tol = 1e-9 * np.maximum(1.0, high - low)
        bad |= ranged & ((t < low - tol) | (t > high + tol))
        if np.any(bad):
            i = int(np.argmax(bad))
            d = self.dimensions[idx[i]]
            raise ValueError(f'target {d.name} = {t[i]!r} is not a value this action space '
                             f'composes (range [{d.low}, {d.high}] {d.unit}, finite float32)')
        return t

    def relative_labels(self, target: Sequence[float], previous_arm: Sequence[float],
                        kinematics=None) -> np.ndarray:
        """Inverse of ``compose``: the values that turn ``previous_arm`` into ``target``."""
        out = np.array(target, dtype=np.float64)
        if self.tool_arm:
            if kinematics is None:
                raise ValueError('a tool_delta action space needs the arm kinematics')
            out[:6] = kinematics.delta_between(previous_arm, out[ARM])
            out[6] = 0.0
        elif self.relative_arm:
            out[ARM] = out[ARM] - np.asarray(previous_arm, dtype=np.float64)
        return out

    @property
    def bin_width(self) -> np.ndarray:
        """Width of one bin per dimension in the dimension's unit."""
        span = self.high - self.low
        return span / (self.num_bins if self.scheme == 'uniform' else self.num_bins - 1)


class ActionTokenizer:
    """
    Turns 11-D continuous actions into uint8 tokens and back.

    The gripper is a binary dimension: ``detokenize`` gives 1.0 (closed) for tokens at or
    above ``gripper_threshold`` and 0.0 (open) below; ``tokenize`` maps values >= 0.5 to the
    top bin and values below to bin 0. Velocity dimensions get the deadband on the way out.
    """

    def __init__(self, space: ActionSpace):
        self.space = space
        self._low = space.low
        self._high = space.high
        self._span = self._high - self._low
        self._n = space.num_bins
        self._velocity = np.array([d.kind == 'velocity' for d in space.dimensions])

    def tokenize(self, actions: Sequence[float]) -> np.ndarray:
        """Map actions [..., 11] to tokens [..., 11] (uint8); out-of-range values clip."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1:] != (NUM_DIMENSIONS,):
            raise ValueError(f'expected actions with last axis {NUM_DIMENSIONS}, found shape '
                             f'{a.shape}')
        if not np.all(np.isfinite(a)):
            raise ValueError('actions contain NaN or infinity; refusing to tokenize')
        a = np.clip(a, self._low, self._high)
        frac = (a - self._low) / self._span
        if self.space.scheme == 'uniform':
            tokens = np.floor(frac * self._n)
        else:
            tokens = np.trunc(frac * (self._n - 1))
        tokens = np.clip(tokens, 0, self._n - 1)
        grip = a[..., GRIPPER] >= 0.5 * (self._low[GRIPPER] + self._high[GRIPPER])
        tokens[..., GRIPPER] = np.where(grip, self._n - 1, 0)
        return tokens.astype(np.uint8)

    def detokenize(self, tokens: Sequence[int]) -> np.ndarray:
        """Map tokens [..., 11] to actions [..., 11] float64; rejects out-of-range tokens."""
        t = np.asarray(tokens)
        if t.shape[-1:] != (NUM_DIMENSIONS,):
            raise ValueError(f'expected {NUM_DIMENSIONS} tokens, found shape {t.shape}')
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f'expected integer tokens, found dtype {t.dtype}')
        if t.size and (t.min() < 0 or t.max() >= self._n):
            raise ValueError(f'tokens must be in 0..{self._n - 1}, found '
                             f'min={int(t.min())} max={int(t.max())}')
        t = t.astype(np.float64)
        if self.space.scheme == 'uniform':
            values = self._low + (t + 0.5) * (self._span / self._n)
        else:
            values = self._low + t / (self._n - 1) * self._span
        deadband = self._velocity & (np.abs(values) < self.space.velocity_deadband)
        values = np.where(deadband, 0.0, values)
        values[..., GRIPPER] = np.where(
            t[..., GRIPPER] >= self.space.gripper_threshold, 1.0, 0.0)
        return values
