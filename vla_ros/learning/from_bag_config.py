"""`vla-ros dataset from-bag` settings: the conversion's options, limits and counters."""

from dataclasses import dataclass
import math
from typing import Dict, List, Tuple

from ..bag.topics import resolve
from ..core.params import SHARED

# Seconds of frames kept after the episode topic first reports done; the same as
# collect.AFTER_SUCCESS (collect imports the simulator, this module must not).
AFTER_DONE = 1.0
IMAGE_SIZE = 300
# An episode whose first frame's status says it has been running longer than this was
# joined in the middle (the recording started late): not a whole demonstration.
PARTIAL_START_S = 1.0
# How far before a tick a stamp-matched image may have been received (inference_node
# accepts images up to its max_image_age, 0.5 s by default).
MATCH_BEFORE_S = 2.0
# Status messages kept for matching ticks to episodes by source stamp (5 Hz: 12 s).
STATUS_HISTORY = 64
# An episode start computed from a status (sim_time and episode_time rounded to 1 ms) is
# within this of the true start; a tick is in an episode when its source stamp is later
# than start + this (sim_node's frames come one 4 ms step or more after a reset).
START_TOLERANCE_NS = 1_500_000

TOKENS_TYPE = 'vla_ros_interfaces/msg/ActionTokens'
TOPIC_TYPES = {
    'tokens': TOKENS_TYPE,
    'image': 'sensor_msgs/msg/Image',
    'instruction': 'std_msgs/msg/String',
    'joint_states': 'sensor_msgs/msg/JointState',
    'target': 'vla_ros_interfaces/msg/ActionTarget',
    'episode': 'std_msgs/msg/String',
}
REQUIRED = ('tokens', 'image', 'instruction', 'joint_states')


class BagDatasetError(ValueError):
    """A bag or an option that cannot be converted (exit status 2)."""


@dataclass
class Options:
    """Conversion settings (the command's options)."""

    max_age: float = 0.25
    episode_topic: str = 'sim/task_status'
    tokens_topic: str = 'vla/action_tokens'
    image_topic: str = 'vla/image'
    instruction_topic: str = 'vla/instruction'
    joint_states_topic: str = 'joint_states'
    target_topic: str = 'vla/target'
    namespace: str = '/'
    arm_joints: Tuple[str, ...] = tuple(SHARED['arm_joint_names'].default)
    gripper_joint: str = SHARED['gripper_joint_name'].default
    after_done: float = AFTER_DONE
    max_gap: float = 2.0
    target_timeout: float = SHARED['target_timeout'].default
    max_target_deviation: float = SHARED['max_target_deviation'].default
    fps: int = int(SHARED['inference_frequency'].default)
    only_success: bool = False
    keep_partial: bool = False

    def __post_init__(self):
        """Validate the values (BagDatasetError naming the option)."""
        for name in ('max_age', 'after_done', 'max_gap', 'target_timeout',
                     'max_target_deviation'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BagDatasetError(f'--{name.replace("_", "-")} must be a finite number '
                                      f'>= 0, found {value}')
        if self.fps < 1:
            raise BagDatasetError(f'--fps must be >= 1, found {self.fps}')
        if len(self.arm_joints) != 7 or len(set(self.arm_joints)) != 7:
            raise BagDatasetError(f'--arm-joints needs 7 distinct names, found '
                                  f'{list(self.arm_joints)}')

    def topics(self) -> Dict[str, str]:
        """Role → fully qualified topic name ('' for a disabled episode topic)."""
        out = {}
        for role in TOPIC_TYPES:
            name = getattr(self, f'{role}_topic')
            out[role] = resolve(name, self.namespace) if name else ''
        return out


class Stats:
    """Counters of one conversion (printed as JSON)."""

    def __init__(self):
        """Start with no counts."""
        self.counts: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        self.malformed: Dict[str, int] = {}
        self.episodes: List[Dict] = []

    def add(self, key: str, n: int = 1):
        """Count an event."""
        self.counts[key] = self.counts.get(key, 0) + n

    def drop(self, reason: str, n: int = 1):
        """Count a dropped frame."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def bad(self, topic: str):
        """Count a malformed (skipped) message."""
        self.malformed[topic] = self.malformed.get(topic, 0) + 1

    def to_dict(self) -> Dict:
        """JSON-friendly summary."""
        return {**self.counts, 'dropped': dict(sorted(self.dropped.items())),
                'malformed': dict(sorted(self.malformed.items())), 'episodes': self.episodes}
