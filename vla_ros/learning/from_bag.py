"""
``vla-ros dataset from-bag``: rosbag2 recordings of the graph → LeRobotDataset v3 episodes.

A bag of the graph's topics (``vla-ros record`` or ``ros2 bag record`` on a robot) holds
what ``vla-ros collect`` stores for simulated demonstrations, spread over topics. This
module lines them up, one frame per policy tick, and writes them with the same
``DatasetWriter`` (docs/bags.md, docs/dataset.md).

One frame per ``vla/action_tokens`` message (the tick), at its bag time ``t``:

- **tokens** the 11 uint8 tokens; **action** ``ActionTokenizer(space).detokenize(tokens)``.
- **image** the ``vla/image`` whose header stamp equals the tokens' source stamp (the frame
  the policy saw; the ``ActionTokens`` header carries its stamp), else the newest image
  received at or before ``t`` within ``--max-age`` whose stamp is not after the source
  stamp. The stamp-matched image may be received a little after the tokens (expert_node
  decides at the instant the camera renders): it is looked for until
  ``t + --max-age``. Its stamp is the decision instant, so it carries no later information.
- **joint_state** the 7 measured arm joints + gripper closure of the newest ``joint_states``
  received at or before ``t`` within ``--max-age``.
- **state** the previous commanded 11-D target as inference_node forms it
  (``core/targets.py``): the newest ``vla/target`` received strictly before ``t``; older than
  ``--target-timeout`` or further than ``--max-target-deviation`` from the measured arm →
  the measured arm at rest. Latched topics (the instruction) have no age limit.

Frames lacking a required message (also, in a bag that has the episode topic, a frame
before its first status) are dropped and counted by reason; a malformed message is skipped
and counted, never fatal. Episodes end at a bag boundary, when the instruction changes,
when the episode topic (``sim/task_status``, JSON) names a new (task, seed) or a restarted
episode (a tick belongs to the episode whose start, the status's ``sim_time -
episode_time``, is at or before its source stamp, not to the newest status received: a tick
computed on a frame from before a reset may arrive after the reset's status),
``--after-done`` seconds after it reports done (the rest of that episode is dropped), or
after a gap of ``--max-gap`` seconds without ticks. An episode the recording joined late
(its status says it had run for over a second) is left out unless ``--keep-partial``;
``--only-success`` keeps successful episodes only. Episode fields (task, seed, success;
colour, direction, close) come from the status JSON, the last three read back from a
simulated task's instruction when the status lacks them.

Length (over 300 lines): the alignment rules, the episode cutting and the command are one
conversion documented above as a whole; splitting them would scatter the rules the
docstring states.
"""

import argparse
from collections import deque
from dataclasses import dataclass, field
import json
import math
import os
import sys
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import dataset as ds, instructions
from ..bag.play import open_bag, PlayError
from ..bag.topics import message_class, resolve
from ..conversions import image_to_rgb8, joint_positions, msg_to_target, msg_to_tokens
from ..core.action_space import ActionSpace, ActionSpaceError, ActionTokenizer
from ..core.image import ImageError, Resizer
from ..core.params import SHARED
from ..core.targets import ComposerConfig, TargetComposer
from ..paths import default_action_space_file

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
# An episode start computed from a status (sim_time and episode_time rounded to 1 ms).
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


@dataclass
class Frame:
    """A tick being assembled: everything but (possibly) the stamp-matched image."""

    t: int                                   # bag time of the tokens (ns)
    tokens: np.ndarray
    source_stamp: Optional[int]
    action: np.ndarray
    state: np.ndarray
    joint_state: np.ndarray
    instruction: str
    status: Dict
    status_key: Tuple
    image_msg: object = None                 # the Image message chosen so far
    image_t: Optional[int] = None            # its bag time
    image_stamp: Optional[int] = None        # its header stamp
    matched: bool = False                    # image stamp == source stamp
    sources: Dict[str, int] = field(default_factory=dict)  # role → bag time used


@dataclass
class Episode:
    """Frames of one episode while it is being collected."""

    key: Tuple
    instruction: str
    bag: str
    frames: List[Frame] = field(default_factory=list)
    done_at: Optional[int] = None
    success: bool = False
    status: Dict = field(default_factory=dict)
    closed: bool = False


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


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class BagAligner:
    """
    Streams one bag's messages in bag-time order and yields complete frames in tick order.

    Only the newest message of each topic (and the images of the last few seconds) is kept,
    so bags of any length convert in bounded memory.
    """

    def __init__(self, options: Options, tokenizer, stats: Stats):
        """Start on a new bag."""
        self.o = options
        self.tokenizer = tokenizer
        self.stats = stats
        self.topics = options.topics()
        self.roles = {name: role for role, name in self.topics.items() if name}
        self.max_age_ns = int(round(options.max_age * 1e9))
        self.composer = TargetComposer(tokenizer.space, ComposerConfig(
            max(options.target_timeout, 1e-9), max(options.max_target_deviation, 1e-9)))
        self.latest: Dict[str, Tuple[int, object]] = {}
        self.images: Deque[Tuple[int, int, object]] = deque()   # (bag t, stamp ns, msg)
        self.targets: Deque[Tuple[int, np.ndarray]] = deque()
        self.target_t: Optional[int] = None
        self.pending: Deque[Frame] = deque()
        self.status_gen = 0
        self._last_status: Optional[Dict] = None
        # (bag t, episode start ns or None, status, generation), oldest first.
        self.statuses: Deque[Tuple[int, Optional[int], Dict, int]] = deque(
            maxlen=STATUS_HISTORY)
        self.now = -1
        self.status_required = False

    def set_roles(self, roles):
        """Learn the bag's topics: with an episode topic, every frame needs a status."""
        self.status_required = 'episode' in roles

    # -- message handling ------------------------------------------------------------------
    def feed(self, role: str, t: int, msg) -> Iterator[Frame]:
        """Take one deserialized message; yield frames that became complete."""
        if t < self.now:
            self.stats.add('out_of_order_messages')
        self.now = max(self.now, t)
        yield from self._flush(self.now)
        handler = getattr(self, f'_on_{role}')
        handler(t, msg)
        yield from self._flush(self.now)

    def finish(self) -> Iterator[Frame]:
        """Yield every frame still waiting for a stamp-matched image (end of the bag)."""
        while self.pending:
            yield self.pending.popleft()

    def _flush(self, now: int) -> Iterator[Frame]:
        while self.pending and (self.pending[0].matched or self.pending[0].source_stamp is None
                                or now > self.pending[0].t + self.max_age_ns):
            yield self.pending.popleft()

    def _on_image(self, t: int, msg):
        stamp = _stamp_ns(msg.header.stamp)
        self.images.append((t, stamp, msg))
        while self.images and self.images[0][0] < t - int(MATCH_BEFORE_S * 1e9):
            self.images.popleft()
        for frame in self.pending:
            if not frame.matched and frame.source_stamp is not None \
                    and stamp == frame.source_stamp:
                frame.image_msg, frame.image_t, frame.matched = msg, t, True
                frame.image_stamp = stamp
                frame.sources['image'] = t

    def _on_instruction(self, t: int, msg):
        text = msg.data.strip()
        if not text:
            self.stats.bad(self.topics['instruction'])
            return
        self.latest['instruction'] = (t, text)

    def _on_episode(self, t: int, msg):
        try:
            status = json.loads(msg.data)
            if not isinstance(status, dict):
                raise ValueError('not a JSON object')
        except ValueError:
            self.stats.bad(self.topics['episode'])
            return
        last = self._last_status
        if last is not None and (last.get('task'), last.get('seed')) == \
                (status.get('task'), status.get('seed')):
            try:
                restarted = float(status.get('episode_time', 0.0)) < \
                    float(last.get('episode_time', 0.0)) - 1e-6
            except (TypeError, ValueError):
                restarted = False
            if restarted:  # sim/reset of the same (task, seed)
                self.status_gen += 1
        self._last_status = status
        try:
            start = int(round((float(status['sim_time']) - float(status['episode_time']))
                              * 1e9))
        except (KeyError, TypeError, ValueError):
            start = None
        self.statuses.append((t, start, status, self.status_gen))

    def _status_for(self, source: Optional[int]):
        """Return (bag t, status, generation) of the episode a tick's source stamp is in."""
        if not self.statuses:
            return None, {}, 0
        chosen = self.statuses[-1]
        if source is not None and chosen[1] is not None:
            for entry in reversed(self.statuses):
                if entry[1] is not None and entry[1] <= source + START_TOLERANCE_NS:
                    chosen = entry
                    break
        return chosen[0], chosen[2], chosen[3]

    def _on_joint_states(self, t: int, msg):
        try:
            arm = joint_positions(msg, self.o.arm_joints)
        except ValueError:
            self.stats.bad(self.topics['joint_states'])
            return
        names = list(msg.name)
        grip = None
        if self.o.gripper_joint in names:
            i = names.index(self.o.gripper_joint)
            if i < len(msg.position) and math.isfinite(msg.position[i]):
                grip = float(msg.position[i])
        self.latest['joint_states'] = (t, (arm, grip))

    def _on_target(self, t: int, msg):
        try:
            target, _ = msg_to_target(msg, self.o.arm_joints)
        except ValueError:
            self.stats.bad(self.topics['target'])
            return
        self.targets.append((t, target))

    def _on_tokens(self, t: int, msg):
        self.stats.add('ticks')
        try:
            tokens, source = msg_to_tokens(msg, 11)
            action = self.tokenizer.detokenize(tokens)
        except ValueError:
            self.stats.bad(self.topics['tokens'])
            self.stats.drop('malformed_tokens')
            return
        # Targets received strictly before the tick become the previous commanded target.
        while self.targets and self.targets[0][0] < t:
            target_t, target = self.targets.popleft()
            try:
                self.composer.observe(target, target_t * 1e-9)
            except ValueError:
                self.stats.bad(self.topics['target'])
                continue
            self.target_t = target_t
        instruction = self.latest.get('instruction')
        if instruction is None:  # latched: no age limit
            return self.stats.drop('no_instruction')
        joints = self.latest.get('joint_states')
        if joints is None or t - joints[0] > self.max_age_ns:
            return self.stats.drop('no_joint_states')
        js_t, (arm, grip) = joints
        if grip is None:
            self.stats.add('gripper_joint_missing')
            grip = 0.0
        state = self.composer.previous(t * 1e-9, arm, grip)
        status_t, status, gen = self._status_for(source)
        if status_t is None and self.status_required:  # latched: no age limit
            return self.stats.drop('no_episode_status')
        # The status names the episode's instruction; the instruction topic may lag it.
        text = status.get('instruction') if isinstance(status.get('instruction'), str) \
            and status.get('instruction').strip() else instruction[1]
        key = (text, status.get('task'), status.get('seed'), gen) if status else (text,)
        frame = Frame(t=t, tokens=tokens, source_stamp=source, action=action, state=state,
                      joint_state=np.append(arm, grip), instruction=text,
                      status=dict(status), status_key=key)
        frame.sources = {'tokens': t, 'instruction': instruction[0], 'joint_states': js_t}
        if self.composer.reason == '' and self.target_t is not None:
            frame.sources['target'] = self.target_t
        if status_t is not None:
            frame.sources['episode'] = status_t
        self._choose_image(frame)
        self.pending.append(frame)

    def _choose_image(self, frame: Frame):
        fallback = None
        for t, stamp, msg in reversed(self.images):
            if frame.source_stamp is not None and stamp == frame.source_stamp:
                frame.image_msg, frame.image_t, frame.matched = msg, t, True
                frame.image_stamp = stamp
                frame.sources['image'] = t
                return
            if fallback is None and frame.t - t <= self.max_age_ns and (
                    frame.source_stamp is None or stamp <= frame.source_stamp):
                fallback = (t, stamp, msg)
        if fallback is not None:
            frame.image_t, frame.image_stamp, frame.image_msg = fallback
            frame.sources['image'] = fallback[0]


def decode_image(msg, resizer) -> np.ndarray:
    """Image message → uint8 [300, 300, 3] rgb8 (camera_node's resize when it differs)."""
    rgb = image_to_rgb8(msg)
    if rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = resizer(rgb)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _check_bag(path: str, reader, topics: Dict[str, str]) -> Dict[str, object]:
    """Map role → connections; BagDatasetError naming the bag and topic when unusable."""
    found: Dict[str, List] = {}
    for conn in reader.connections:
        for role, name in topics.items():
            if name and conn.topic == name:
                if conn.msgtype != TOPIC_TYPES[role]:
                    raise BagDatasetError(f'{path}: topic {name} has type {conn.msgtype}, '
                                          f'expected {TOPIC_TYPES[role]}')
                found.setdefault(role, []).append(conn)
    missing = [topics[r] for r in REQUIRED if r not in found]
    if missing:
        raise BagDatasetError(
            f'{path}: no {", ".join(missing)} in this bag (it has '
            f'{", ".join(sorted({c.topic for c in reader.connections})) or "no topics"}); '
            "record the graph's topics (vla-ros record) or pass --namespace / --*-topic")
    return found


def iter_bag_messages(path: str, options: Options, stats: Stats, on_roles=None
                      ) -> Iterator[Tuple[str, int, object]]:
    """
    Yield (role, bag time ns, message) of the topics a dataset needs, in bag order.

    ``on_roles(roles)`` learns which roles the bag has before the first message.
    """
    from rclpy.serialization import deserialize_message
    try:
        reader = open_bag(path)
    except PlayError as exc:
        raise BagDatasetError(str(exc)) from exc
    try:
        topics = options.topics()
        found = _check_bag(path, reader, topics)
        if topics['episode'] and 'episode' not in found:
            stats.add('bags_without_episode_topic')
        if on_roles is not None:
            on_roles(set(found))
        role_of = {}
        classes = {}
        for role, conns in found.items():
            for conn in conns:
                role_of[conn.id] = role
                classes[conn.id] = message_class(conn.msgtype)
        wanted = [c for c in reader.connections if c.id in role_of]
        for conn, t, data in reader.messages(wanted):
            try:
                msg = deserialize_message(bytes(data), classes[conn.id])
            except Exception:  # truncated or garbage CDR: skip it, count it
                stats.bad(conn.topic)
                continue
            yield role_of[conn.id], int(t), msg
    finally:
        reader.close()


class EpisodeBuilder:
    """Cuts the frame stream into episodes and hands finished ones to the writer."""

    def __init__(self, options: Options, stats: Stats, emit):
        """Hand finished episodes to ``emit``."""
        self.o = options
        self.stats = stats
        self.emit = emit
        self.current: Optional[Episode] = None
        self.last_t: Optional[int] = None

    def add(self, frame: Frame, bag: str):
        """Place one complete frame."""
        o = self.o
        ep = self.current
        gap = self.last_t is not None and frame.t - self.last_t > o.max_gap * 1e9
        self.last_t = frame.t
        if ep is not None and (ep.key != frame.status_key or gap or ep.bag != bag):
            self.close()
            ep = None
        if ep is not None and ep.closed:
            return self.stats.drop('after_done')
        if ep is None:
            ep = self.current = Episode(frame.status_key, frame.instruction, bag)
        status = frame.status
        if status.get('done') and ep.done_at is None:
            ep.done_at = frame.t
        if ep.done_at is not None and frame.t - ep.done_at > o.after_done * 1e9:
            ep.closed = True
            self._finish(ep)
            return self.stats.drop('after_done')
        ep.frames.append(frame)
        ep.success = ep.success or bool(status.get('success'))
        if status:
            ep.status = status

    def close(self):
        """Finish the current episode (bag end, or before a new one)."""
        if self.current is not None and not self.current.closed:
            self._finish(self.current)
        self.current = None

    def _finish(self, ep: Episode):
        ep.closed = True
        if ep.frames:
            self.emit(ep)


def params_from_instruction(task: str, instruction: str) -> Dict:
    """
    Episode parameters (colour, direction, close) read back from a simulated task's text.

    sim_node's status JSON names the task and seed but not its parameters; the instruction
    is one of the task's templates (``instructions.py``) filled with them. Empty when the
    task is unknown or no template matches (a robot's own instructions).
    """
    import re
    templates = instructions.TRAIN.get(task, []) + instructions.HELD_OUT.get(task, [])
    groups = {'colour': r'(?P<colour>[a-z]+)', 'side': r'(?P<side>left|right)',
              'action': r'(?P<action>[a-z]+)', 'state': r'(?P<state>open|closed)'}
    for template in templates:
        pattern = re.escape(template)
        for name, group in groups.items():
            pattern = pattern.replace(re.escape('{' + name + '}'), group)
        match = re.fullmatch(pattern, instruction.strip().lower())
        if match is None:
            continue
        found = match.groupdict()
        out: Dict = {}
        if found.get('colour'):
            out['colour'] = found['colour']
        if found.get('side'):
            out['direction'] = found['side']
        words = {w: k for k, ws in instructions.ACTION_WORDS.items() for w in ws}
        if found.get('action') in words:
            out['close'] = words[found['action']] == 'close'
        elif found.get('state'):
            out['close'] = found['state'] == 'closed'
        return out
    return {}


def provenance(episode_index: int, frame_index: int, frame: Frame) -> Dict:
    """Where one written frame came from (bag times and stamps in ns), JSON-friendly."""
    return {'episode_index': int(episode_index), 'frame_index': int(frame_index),
            't': int(frame.t), 'source_stamp': frame.source_stamp,
            'image_stamp': frame.image_stamp, 'image_matched': bool(frame.matched),
            'sources': {k: int(v) for k, v in sorted(frame.sources.items())}}


def convert(bags: Sequence[str], out: str, options: Optional[Options] = None,
            action_space_file: Optional[str] = None, flush_every: int = 50,
            crf: int = 0, on_frame=None) -> Dict:
    """
    Convert ``bags`` into the dataset folder ``out``; return the counters.

    ``on_frame(provenance_dict)`` is called for every written frame, in dataset order.
    """
    options = options or Options()
    space_file = action_space_file or default_action_space_file()
    try:
        space = ActionSpace.from_yaml(space_file)
    except ActionSpaceError as exc:
        raise BagDatasetError(str(exc)) from exc
    for path in bags:
        if not os.path.exists(path):
            raise BagDatasetError(f'bag {path} does not exist')
    tokenizer = ActionTokenizer(space)
    resizer = Resizer(IMAGE_SIZE, IMAGE_SIZE, 'crop')
    stats = Stats()
    meta = {'vla_ros.action_space': space.to_dict(), 'vla_ros.source': 'rosbag'}
    try:
        writer = ds.DatasetWriter(out, options.fps, meta, crf=crf)
    except ValueError as exc:
        raise BagDatasetError(str(exc)) from exc
    existing = {(e.get('bag'), e.get('bag_start_ns')) for e in writer.episodes}
    state = {'writer': writer, 'written': 0}
    tick_times: List[int] = []

    def emit(ep: Episode):
        frames, kept = [], []
        for f in ep.frames:
            if f.image_msg is None:  # kept until here: it still shows where the episode began
                stats.drop('no_image')
                continue
            try:
                frames.append(ds.Frame(image=decode_image(f.image_msg, resizer), state=f.state,
                                       joint_state=f.joint_state, action=f.action,
                                       tokens=f.tokens))
                kept.append(f)
            except (ImageError, ValueError):
                stats.bad(options.topics()['image'])
                stats.drop('malformed_image')
        if not frames:
            return
        start_ns = int(kept[0].t)
        name = os.path.basename(os.path.normpath(ep.bag))
        if (name, start_ns) in existing:
            stats.add('episodes_already_in_dataset')
            return
        first = ep.frames[0].status  # the first tick, even one without an image
        try:
            late = float(first.get('episode_time', 0.0)) > PARTIAL_START_S
        except (TypeError, ValueError):
            late = False
        if late and not options.keep_partial:
            stats.add('episodes_skipped_partial')
            stats.drop('partial_episode', len(frames))
            return
        if options.only_success and not ep.success:
            stats.add('episodes_skipped_unsuccessful')
            stats.drop('unsuccessful_episode', len(frames))
            return
        frames[-1].success = bool(ep.success)
        status = ep.status
        seed = status.get('seed')
        task = str(status.get('task', '') or '')
        params = params_from_instruction(task, ep.instruction)
        params.update({k: status[k] for k in ('colour', 'direction', 'close') if k in status})
        extra = {'task': task,
                 'seed': int(seed) if isinstance(seed, int) else -1,
                 'success': bool(ep.success),
                 'colour': str(params.get('colour', '') or ''),
                 'direction': str(params.get('direction', '') or ''),
                 'close': bool(params.get('close', False)),
                 'source': 'rosbag', 'bag': name, 'bag_start_ns': start_ns}
        index = state['writer'].add_episode(frames, ep.instruction, extra)
        stats.episodes.append({'episode_index': index, 'frames': len(frames),
                               'instruction': ep.instruction, 'task': extra['task'],
                               'seed': extra['seed'], 'success': extra['success'],
                               'bag': name, 'start_ns': start_ns,
                               'end_ns': int(kept[-1].t)})
        stats.add('frames_written', len(frames))
        if on_frame is not None:
            for i, f in enumerate(kept):
                on_frame(provenance(index, i, f))
        state['written'] += 1
        if state['written'] % flush_every == 0:
            state['writer'].close()
            state['writer'] = ds.DatasetWriter(out, options.fps, meta, crf=crf)

    builder = EpisodeBuilder(options, stats, emit)
    try:
        for path in bags:
            stats.add('bags')
            aligner = BagAligner(options, tokenizer, stats)
            for role, t, msg in iter_bag_messages(path, options, stats, aligner.set_roles):
                for frame in aligner.feed(role, t, msg):
                    _place(frame, builder, stats, path, tick_times)
            for frame in aligner.finish():
                _place(frame, builder, stats, path, tick_times)
            builder.close()
    finally:
        state['writer'].close()
    if len(tick_times) > 2:
        rate = 1e9 / float(np.median(np.diff(tick_times)))
        stats.counts['tick_rate_hz'] = round(rate, 3)
        if abs(rate - options.fps) > 0.25 * options.fps:
            stats.counts['warning'] = (f'ticks arrive at {rate:.2f} Hz but the dataset says '
                                       f'--fps {options.fps}')
    stats.counts.setdefault('frames_written', 0)
    stats.counts['episodes_written'] = state['written']
    return stats.to_dict()


def _place(frame: Frame, builder: EpisodeBuilder, stats: Stats, bag: str,
           tick_times: List[int]):
    if frame.image_msg is not None:
        stats.add('frames_image_matched' if frame.matched else 'frames_image_latest')
    tick_times.append(frame.t)
    builder.add(frame, bag)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros dataset``."""
    parser = argparse.ArgumentParser(prog='vla-ros dataset',
                                     description='Build demonstration datasets.')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('from-bag', help="rosbag2 bags of the graph's topics → "
                       'LeRobotDataset v3', description=__doc__.split('\n\n')[1])
    p.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 folders (MCAP/sqlite3)')
    p.add_argument('--out', required=True, help='dataset folder (created, or appended to)')
    p.add_argument('--action-space', default=None,
                   help='action space YAML the tokens were made with (default: '
                   'config/action_space.yaml)')
    p.add_argument('--max-age', type=float, default=0.25, help='newest message of a topic '
                   'older than this (s, bag time) at a tick → frame dropped (default 0.25)')
    p.add_argument('--episode-topic', default='sim/task_status', help='JSON episode status '
                   'topic (empty: split on instruction changes and gaps only)')
    p.add_argument('--after-done', type=float, default=AFTER_DONE, help='seconds of frames '
                   'kept after the episode topic reports done (default %(default)s, as collect)')
    p.add_argument('--max-gap', type=float, default=2.0, help='a gap without ticks longer '
                   'than this (s) ends an episode (default 2)')
    p.add_argument('--namespace', default='/', help='namespace of the recorded graph')
    for role, default in (('tokens', 'vla/action_tokens'), ('image', 'vla/image'),
                          ('instruction', 'vla/instruction'), ('joint-states', 'joint_states'),
                          ('target', 'vla/target')):
        p.add_argument(f'--{role}-topic', default=default, help=f'(default {default})')
    p.add_argument('--arm-joints', default=','.join(Options.arm_joints),
                   help='the 7 arm joint names in joint_states, comma separated')
    p.add_argument('--gripper-joint', default=Options.gripper_joint)
    p.add_argument('--target-timeout', type=float, default=Options.target_timeout,
                   help='state: previous target older than this (s) → measured arm')
    p.add_argument('--max-target-deviation', type=float, default=Options.max_target_deviation,
                   help='state: previous target further than this (rad) → measured arm')
    p.add_argument('--fps', type=int, default=Options.fps, help='policy rate of the frames (Hz)')
    p.add_argument('--only-success', action='store_true',
                   help='keep only episodes the episode topic reports successful')
    p.add_argument('--keep-partial', action='store_true', help='keep an episode the '
                   f'recording joined more than {PARTIAL_START_S:g} s after it started '
                   '(by the episode topic); dropped by default')
    p.add_argument('--flush-every', type=int, default=50)
    p.add_argument('--provenance', default=None, metavar='FILE.jsonl',
                   help='write where every frame came from (bag times, stamps), one JSON '
                   'line per frame')
    args = parser.parse_args(argv)
    try:
        options = Options(
            max_age=args.max_age, episode_topic=args.episode_topic,
            tokens_topic=args.tokens_topic, image_topic=args.image_topic,
            instruction_topic=args.instruction_topic,
            joint_states_topic=args.joint_states_topic,
            target_topic=args.target_topic, namespace=args.namespace,
            arm_joints=tuple(n.strip() for n in args.arm_joints.split(',') if n.strip()),
            gripper_joint=args.gripper_joint, after_done=args.after_done,
            max_gap=args.max_gap, target_timeout=args.target_timeout,
            max_target_deviation=args.max_target_deviation, fps=args.fps,
            only_success=args.only_success, keep_partial=args.keep_partial)
        trace = open(args.provenance, 'w', encoding='utf-8') if args.provenance else None
    except (BagDatasetError, OSError) as exc:
        print(f'vla-ros dataset from-bag: {exc}', file=sys.stderr)
        return 2
    try:
        stats = convert(args.bags, args.out, options, args.action_space,
                        max(1, args.flush_every), on_frame=(
                            None if trace is None else
                            lambda record: trace.write(json.dumps(record) + '\n')))
    except BagDatasetError as exc:
        print(f'vla-ros dataset from-bag: {exc}', file=sys.stderr)
        return 2
    finally:
        if trace is not None:
            trace.close()
    print(f'vla-ros dataset from-bag: {stats["frames_written"]} frames in '
          f'{stats["episodes_written"]} episodes → {args.out}')
    print(json.dumps(stats, indent=1, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
