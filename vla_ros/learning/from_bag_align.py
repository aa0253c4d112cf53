"""
Reading a bag and aligning its topics into policy ticks (the rules: ``from_bag.py``).

Each tick gets the frame the policy saw (stamp-matched, else the newest within limits),
the previous commanded target, the measured joints, the instruction and the episode status.
"""

from collections import deque
from dataclasses import dataclass, field
import json
import math
from typing import Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .from_bag_config import (BagDatasetError, IMAGE_SIZE, MATCH_BEFORE_S, Options, REQUIRED,
                              START_TOLERANCE_NS, Stats, STATUS_HISTORY, TOPIC_TYPES)
from ..bag.play import open_bag, PlayError
from ..bag.topics import message_class
from ..conversions import image_to_rgb8, joint_positions, msg_to_target, msg_to_tokens
from ..core.targets import ComposerConfig, TargetComposer


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
                # A frame stamped at the reset instant was rendered before it (sim_node
                # renders after each step): an episode's frames are stamped after its start.
                if entry[1] is not None and entry[1] + START_TOLERANCE_NS < source:
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
