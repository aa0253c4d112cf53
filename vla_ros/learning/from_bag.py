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
episode_time``, is before its source stamp, not to the newest status received: a tick
computed on a frame from before a reset may arrive after the reset's status, and a frame
stamped at the reset instant shows the scene before it),
``--after-done`` seconds after it reports done (the rest of that episode is dropped), or
after a gap of ``--max-gap`` seconds without ticks. An episode the recording joined late
(its status says it had run for over a second) is left out unless ``--keep-partial``;
``--only-success`` keeps successful episodes only. Episode fields (task, seed, success;
colour, direction, close) come from the status JSON, the last three read back from a
simulated task's instruction when the status lacks them.

Split as training is: ``from_bag_config.py`` (options, limits, counters),
``from_bag_align.py`` (reading the bag, aligning topics into ticks) and this file (episodes,
writing the dataset, the command).
"""

import argparse
from dataclasses import dataclass, field
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import dataset as ds, instructions
from .from_bag_align import BagAligner, decode_image, Frame, iter_bag_messages
from .from_bag_config import (AFTER_DONE, BagDatasetError, IMAGE_SIZE, Options, PARTIAL_START_S,
                              Stats)
from ..core.action_space import ActionSpace, ActionSpaceError, ActionTokenizer
from ..core.image import ImageError, Resizer
from ..paths import default_action_space_file


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


class DatasetSink:
    """
    Writes each finished episode into the dataset (``EpisodeBuilder``'s ``emit``).

    Frames without an image or with one that does not decode are dropped (counted); an
    episode already in the dataset, joined late (``PARTIAL_START_S``) or, with
    ``only_success``, unsuccessful is skipped; the writer is flushed every
    ``flush_every`` episodes.
    """

    def __init__(self, out: str, options: Options, meta: Dict, stats: Stats, crf: int,
                 flush_every: int, on_frame=None):
        self.out, self.options, self.meta, self.stats = out, options, meta, stats
        self.crf, self.flush_every, self.on_frame = crf, flush_every, on_frame
        self.resizer = Resizer(IMAGE_SIZE, IMAGE_SIZE, 'crop')
        try:
            self.writer = ds.DatasetWriter(out, options.fps, meta, crf=crf)
        except ValueError as exc:
            raise BagDatasetError(str(exc)) from exc
        self.existing = {(e.get('bag'), e.get('bag_start_ns')) for e in self.writer.episodes}
        self.written = 0

    def _decoded(self, ep: Episode):
        frames, kept = [], []
        for f in ep.frames:
            if f.image_msg is None:  # kept until here: it still shows where the episode began
                self.stats.drop('no_image')
                continue
            try:
                frames.append(ds.Frame(image=decode_image(f.image_msg, self.resizer),
                                       state=f.state, joint_state=f.joint_state,
                                       action=f.action, tokens=f.tokens))
                kept.append(f)
            except (ImageError, ValueError):
                self.stats.bad(self.options.topics()['image'])
                self.stats.drop('malformed_image')
        return frames, kept

    def _skipped(self, ep: Episode, name: str, start_ns: int, count: int) -> bool:
        if (name, start_ns) in self.existing:
            self.stats.add('episodes_already_in_dataset')
            return True
        first = ep.frames[0].status  # the first tick, even one without an image
        try:
            late = float(first.get('episode_time', 0.0)) > PARTIAL_START_S
        except (TypeError, ValueError):
            late = False
        if late and not self.options.keep_partial:
            self.stats.add('episodes_skipped_partial')
            self.stats.drop('partial_episode', count)
            return True
        if self.options.only_success and not ep.success:
            self.stats.add('episodes_skipped_unsuccessful')
            self.stats.drop('unsuccessful_episode', count)
            return True
        return False

    def __call__(self, ep: Episode):
        """Write ``ep`` (or count why not)."""
        frames, kept = self._decoded(ep)
        if not frames:
            return
        start_ns = int(kept[0].t)
        name = os.path.basename(os.path.normpath(ep.bag))
        if self._skipped(ep, name, start_ns, len(frames)):
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
        index = self.writer.add_episode(frames, ep.instruction, extra)
        self.stats.episodes.append({'episode_index': index, 'frames': len(frames),
                                    'instruction': ep.instruction, 'task': extra['task'],
                                    'seed': extra['seed'], 'success': extra['success'],
                                    'bag': name, 'start_ns': start_ns,
                                    'end_ns': int(kept[-1].t)})
        self.stats.add('frames_written', len(frames))
        if self.on_frame is not None:
            for i, f in enumerate(kept):
                self.on_frame(provenance(index, i, f))
        self.written += 1
        if self.written % self.flush_every == 0:
            self.writer.close()
            self.writer = ds.DatasetWriter(self.out, self.options.fps, self.meta, crf=self.crf)

    def close(self):
        """Write what is pending."""
        self.writer.close()


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
    stats = Stats()
    meta = {'vla_ros.action_space': space.to_dict(), 'vla_ros.source': 'rosbag'}
    sink = DatasetSink(out, options, meta, stats, crf, flush_every, on_frame)
    tick_times: List[int] = []
    builder = EpisodeBuilder(options, stats, sink)
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
        sink.close()
    if len(tick_times) > 2:
        rate = 1e9 / float(np.median(np.diff(tick_times)))
        stats.counts['tick_rate_hz'] = round(rate, 3)
        if abs(rate - options.fps) > 0.25 * options.fps:
            stats.counts['warning'] = (f'ticks arrive at {rate:.2f} Hz but the dataset says '
                                       f'--fps {options.fps}')
    stats.counts.setdefault('frames_written', 0)
    stats.counts['episodes_written'] = sink.written
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
