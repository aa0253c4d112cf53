"""
``vla-ros record``: record the graph's topics into a rosbag2 bag (MCAP or sqlite3).

A stand-in for ``ros2 bag record`` where rosbag2 is not installed, writing the same format
through ``rosbags``: CDR messages exactly as they arrived (raw subscriptions, no
re-serialization), the message definition and RIHS01 type description hash of every
connection, and the publishers' offered QoS profiles, so ``ros2 bag info`` / ``ros2 bag play``
open the result on a robot.

Topics of the graph (``topics.GRAPH_TOPICS``) are subscribed at start with the QoS their
publishers use, so nothing published after the recorder came up is lost; any other topic
is subscribed when it appears on the graph, with a QoS adapted to its publishers. A topic
that shows up with a different type than expected is recorded under both connections.

Each message is stamped with its receive time (the middleware's reception timestamp, system
clock; with ``--use-sim-time`` the ROS time from ``/clock``, messages received before the
first ``/clock`` being held and stamped with it, not with 0) unless ``--timestamp header``
asks for the header stamp of stamped messages. Ctrl-C,
SIGTERM or ``--duration`` close the bag cleanly (metadata.yaml and the storage index
written); the exit status is 0, or 2 with a message for bad arguments. SIGUSR1 prints the
progress so far (messages written per topic, messages held for the first ``/clock``) as
one line of JSON, as ``dd`` does: what a script waits on before it stops the recording.

Length (over 300 lines): graph discovery, QoS adaptation, raw writing and the command
belong to one recorder; bag/topics.py holds the shared tables.
"""

import argparse
import functools
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from . import topics as bag_topics

STORAGES = ('mcap', 'sqlite3')
TIMESTAMPS = ('receive', 'header')
# Messages kept while waiting for the first /clock with --use-sim-time (then stamped with it).
HELD_BEFORE_CLOCK = 10000


class RecordError(ValueError):
    """A recording that cannot start (bad output path, bad topic name)."""


class Recording:
    """A rosbags Writer plus the connections and counters of one recording session."""

    def __init__(self, path: str, storage: str = 'mcap', version: int = 9):
        """Create the bag folder and open its storage (RecordError when impossible)."""
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
        if storage not in STORAGES:
            raise RecordError(f'storage must be one of {STORAGES}, found {storage!r}')
        if os.path.exists(path):
            raise RecordError(f'{path} exists already; choose a new bag folder (a bag is '
                              'never overwritten or appended to)')
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise RecordError(f'cannot create bag {path}: folder {parent} does not exist')
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        try:
            self.writer = Writer(path, version=version, storage_plugin=plugin)
            self.writer.open()
        except (WriterError, OSError) as exc:
            raise RecordError(f'cannot create bag {path}: {exc}') from exc
        self.path = path
        self.connections: Dict[Tuple[str, str], object] = {}
        self.counts: Dict[Tuple[str, str], int] = {}
        self.closed = False

    def connection(self, topic: str, msgtype: str, offered: Sequence = ()):
        """Return the connection of (topic, type), creating it on first use."""
        key = (topic, msgtype)
        conn = self.connections.get(key)
        if conn is None:
            msgdef, digest = bag_topics.definition(msgtype)
            conn = self.writer.add_connection(
                topic, msgtype, msgdef=msgdef, rihs01=digest,
                offered_qos_profiles=[bag_topics.qos_to_bag(q) for q in offered])
            self.connections[key] = conn
            self.counts[key] = 0
        return conn

    def write(self, topic: str, msgtype: str, stamp_ns: int, data: bytes,
              offered: Sequence = ()):
        """Append one serialized message."""
        conn = self.connection(topic, msgtype, offered)
        self.writer.write(conn, int(stamp_ns), data)
        self.counts[(topic, msgtype)] += 1

    def set_custom_data(self, key: str, value: str):
        """Add a key to metadata.yaml's custom_data."""
        self.writer.set_custom_data(key, value)

    def close(self):
        """Write the storage index and metadata.yaml (idempotent)."""
        if not self.closed:
            self.closed = True
            self.writer.close()


def _header_stamp_ns(data: bytes, cls) -> Optional[int]:
    """Header stamp of a serialized stamped message (None: no header, or zero)."""
    from rclpy.serialization import deserialize_message
    msg = deserialize_message(data, cls)
    header = getattr(msg, 'header', None)
    stamp = getattr(header, 'stamp', None)
    if stamp is None:
        return None
    ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return ns or None


class Recorder:
    """The recording node: subscriptions, graph discovery, writing, counters."""

    def __init__(self, recording: Recording, topics: Sequence[str], record_all: bool = False,
                 timestamp: str = 'receive', use_sim_time: bool = False,
                 log=print):
        """Create the node and subscribe to the topics already known."""
        from rclpy.clock import Clock, ClockType
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        self.recording = recording
        self.timestamp = timestamp
        self.log = log
        overrides = [Parameter('use_sim_time', value=True)] if use_sim_time else []
        self.node = Node('vla_bag_recorder', parameter_overrides=overrides)
        self.record_all = record_all
        self.wanted = [self._resolve(t) for t in topics]
        self.subscribed: Dict[Tuple[str, str], object] = {}
        self.offered: Dict[Tuple[str, str], List] = {}
        self.classes: Dict[str, object] = {}
        self.kinds: Dict[Tuple[str, str], str] = {}
        self.counters: Dict[str, int] = {}
        self.warned = set()
        self._held: List[Tuple[str, str, object, bytes]] = []
        for name in topics:
            spec = bag_topics.spec_for(name)
            if spec is not None:
                self._subscribe(self._resolve(name), spec.msgtype, spec.qos)
        self.discover()
        self.node.create_timer(0.5, self.discover, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.node.create_timer(0.1, self.release_held,
                               clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _resolve(self, name: str) -> str:
        try:
            return self.node.resolve_topic_name(name)
        except Exception:  # rclpy without resolve_topic_name, or an invalid name
            return bag_topics.resolve(name, self.node.get_namespace())

    def count(self, key: str, n: int = 1):
        """Add to one of the recorder's counters."""
        self.counters[key] = self.counters.get(key, 0) + n

    def _warn_once(self, key, text: str):
        if key not in self.warned:
            self.warned.add(key)
            self.log(f'vla-ros record: {text}')

    def _subscribe(self, topic: str, msgtype: str, kind: str) -> bool:
        key = (topic, msgtype)
        if key in self.subscribed:
            return True
        try:
            cls = self.classes.get(msgtype) or bag_topics.message_class(msgtype)
            bag_topics.definition(msgtype)  # fail here, not on the first message
        except (bag_topics.UnknownTypeError, ValueError) as exc:
            self.count('topics_skipped_unknown_type')
            self._warn_once(key, f'not recording {topic}: {exc}')
            return False
        self.classes[msgtype] = cls
        self.kinds[key] = kind
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks

        def incompatible(event, topic=topic):
            self.count('incompatible_qos')
            self._warn_once(('qos', topic), f'{topic}: a publisher offers a QoS this '
                            f'subscription ({kind}) cannot match; its messages are not '
                            'recorded')

        # Exactly two parameters: rclpy then passes the message info with its reception
        # timestamp (a callback that also accepts one argument gets the message only).
        callback = functools.partial(self._on_message, topic, msgtype, cls)
        self.subscribed[key] = self.node.create_subscription(
            cls, topic, callback, bag_topics.subscription_qos(kind), raw=True,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=incompatible))
        return True

    def discover(self):
        """Subscribe to wanted topics that appeared, record their publishers' QoS."""
        try:
            graph = self.node.get_topic_names_and_types()
        except Exception:  # the context is shutting down
            return
        for topic, types in graph:
            if not (self.record_all or topic in self.wanted):
                continue
            try:
                infos = self.node.get_publishers_info_by_topic(topic)
            except Exception:
                infos = []
            for msgtype in types:
                offered = [i.qos_profile for i in infos if i.topic_type == msgtype]
                if offered:
                    self.offered[(topic, msgtype)] = offered
                    self._check_hash(topic, msgtype, infos)
                if (topic, msgtype) not in self.subscribed and offered:
                    if self._subscribe(topic, msgtype, bag_topics.adapted_kind(offered)):
                        self.log(f'vla-ros record: subscribed to {topic} [{msgtype}]')

    def _check_hash(self, topic: str, msgtype: str, infos):
        key = ('hash', topic, msgtype)
        if key in self.warned:
            return
        try:
            _, ours = bag_topics.definition(msgtype)
        except (bag_topics.UnknownTypeError, ValueError):
            return
        for info in infos:
            theirs = str(getattr(info, 'topic_type_hash', ''))
            if theirs.startswith('RIHS01_') and theirs != ours and \
                    theirs != 'RIHS01_' + '0' * 64:
                self.count('type_hash_mismatch')
                self._warn_once(key, f'{topic}: a publisher announces {msgtype} with type '
                                f'hash {theirs}, the stored definition has {ours}; the bag '
                                'keeps the stored definition (check the interface versions)')

    def _on_message(self, topic: str, msgtype: str, cls, data: bytes, info):
        stamp = None
        if isinstance(info, dict):
            stamp = info.get('received_timestamp') or None
        if stamp is None or self.node.get_parameter('use_sim_time').value:
            stamp = self.node.get_clock().now().nanoseconds
            if stamp == 0 and self.timestamp != 'header':
                # Sim time before the first /clock reads 0: hold the message (latched
                # topics arrive only once) and stamp it with the first clock time.
                if len(self._held) < HELD_BEFORE_CLOCK:
                    self._held.append((topic, msgtype, cls, data))
                    self.count('held_until_first_clock')
                else:
                    self.count('dropped_before_first_clock')
                return
        self.release_held()
        if self.timestamp == 'header':
            try:
                header = _header_stamp_ns(data, cls)
            except Exception:  # malformed CDR: keep the message, stamped on receipt
                header = None
                self.count('header_unreadable')
            if header is None:
                self.count('stamped_on_receipt')
            else:
                stamp = header
        self._write(topic, msgtype, stamp, data)

    def release_held(self):
        """Write the messages held before the first /clock, stamped with the clock now."""
        if not self._held:
            return
        now = self.node.get_clock().now().nanoseconds
        if now == 0:
            return
        held, self._held = self._held, []
        for topic, msgtype, cls, data in held:
            self._write(topic, msgtype, now, data)

    def _write(self, topic: str, msgtype: str, stamp: int, data: bytes):
        key = (topic, msgtype)
        first = key not in self.recording.connections
        if first:
            self.offered[key] = self._offered_now(topic, msgtype)
        try:
            self.recording.write(topic, msgtype, stamp, bytes(data), self.offered.get(key, ()))
        except Exception as exc:  # a full disk must not lose the rest of the bag
            self.count('write_errors')
            self._warn_once(('write', topic), f'cannot write {topic}: {exc!r}')
            return
        if first:  # the topic's data flows: what a caller waits for (no sleeping)
            self.log(f'vla-ros record: first message on {topic} [{msgtype}]')

    def _offered_now(self, topic: str, msgtype: str) -> List:
        """Return the publishers' QoS for the metadata (ours when none is known)."""
        try:
            offered = [i.qos_profile for i in self.node.get_publishers_info_by_topic(topic)
                       if i.topic_type == msgtype]
        except Exception:
            offered = []
        return offered or self.offered.get((topic, msgtype)) or [
            bag_topics.subscription_qos(self.kinds.get((topic, msgtype), bag_topics.RELIABLE))]

    def progress(self) -> Dict:
        """Messages written so far per topic, and those held for the first /clock."""
        written: Dict[str, int] = {}
        for (topic, _), n in list(self.recording.counts.items()):
            written[topic] = written.get(topic, 0) + n
        return {'written': written, 'held': len(self._held)}

    def summary(self) -> Dict:
        """Messages per topic and the counters."""
        if self._held:  # no /clock ever came: nothing to stamp them with
            self.count('dropped_no_clock', len(self._held))
            self._warn_once('no_clock', f'{len(self._held)} messages received before any '
                            '/clock were not written (--use-sim-time and no clock source)')
            self._held = []
        per_topic = {f'{t} [{m}]': n for (t, m), n in sorted(self.recording.counts.items())}
        never = sorted(t for t in self.wanted
                       if not any(k[0] == t for k in self.recording.counts))
        return {'bag': self.recording.path, 'messages': sum(per_topic.values()),
                'topics': per_topic, 'no_messages': never, 'counters': dict(self.counters)}

    def destroy(self):
        """Destroy the node."""
        self.node.destroy_node()


def _on_progress_signal(recorder: Recorder):
    """
    Have SIGUSR1 print the recorder's progress; return the handler it replaces.

    Main thread only (where Python runs signal handlers); elsewhere nothing changes (None).
    """
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def report(signum, frame):
        print('vla-ros record: progress ' + json.dumps(recorder.progress(), sort_keys=True),
              flush=True)
    return signal.signal(signal.SIGUSR1, report)


def record(out: str, topics: Sequence[str], storage: str = 'mcap', duration: float = 0.0,
           timestamp: str = 'receive', record_all: bool = False, version: int = 9,
           use_sim_time: bool = False, quiet: bool = False) -> Dict:
    """Record until ``duration`` s pass (0: forever), Ctrl-C or SIGTERM; return a summary."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from ..spin import spin_once
    if timestamp not in TIMESTAMPS:
        raise RecordError(f'timestamp must be one of {TIMESTAMPS}, found {timestamp!r}')
    for name in topics:
        bag_topics.resolve(name)  # rejects private names early
    recording = Recording(out, storage, version)
    log = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    rclpy.init()
    recorder = previous_handler = None
    try:
        recorder = Recorder(recording, topics, record_all, timestamp, use_sim_time, log)
        recording.set_custom_data('vla_ros.recorder', json.dumps(
            {'tool': 'vla-ros record', 'timestamp': timestamp,
             'clock': 'ros' if use_sim_time else 'receive'}, sort_keys=True))
        executor = SingleThreadedExecutor()
        executor.add_node(recorder.node)
        previous_handler = _on_progress_signal(recorder)
        print(f'vla-ros record: recording {len(recorder.wanted)} topics'
              f'{" and every other topic" if record_all else ""} into {out} ({storage})',
              flush=True)
        end = time.monotonic() + duration if duration > 0 else None
        while rclpy.ok():
            if end is not None and time.monotonic() >= end:
                break
            if not spin_once(executor, 0.1):  # Ctrl-C
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        recording.close()
        summary = recorder.summary() if recorder is not None else {'bag': out}
        if recorder is not None:
            try:
                recorder.destroy()
            except Exception:  # the context may already be gone after a signal
                pass
        rclpy.try_shutdown()
        if previous_handler is not None:  # after the bag is closed: never mid-write
            import signal
            signal.signal(signal.SIGUSR1, previous_handler)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros record``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros record',
        description="Record the graph's topics into a rosbag2 bag (what `ros2 bag record` "
                    'writes: MCAP or sqlite3, CDR, definitions and type hashes).')
    parser.add_argument('--out', '-o', required=True, help='new bag folder')
    parser.add_argument('--topics', nargs='+', default=list(bag_topics.DEFAULT_TOPICS),
                        metavar='TOPIC', help="topics to record (default: the graph's: "
                        f'{" ".join(bag_topics.DEFAULT_TOPICS)})')
    parser.add_argument('--all', action='store_true', help='also record every other topic '
                        'that appears on the graph')
    parser.add_argument('--storage', '-s', choices=STORAGES, default='mcap')
    parser.add_argument('--duration', '-d', type=float, default=0.0,
                        help='stop after this many seconds (default: until Ctrl-C)')
    parser.add_argument('--timestamp', choices=TIMESTAMPS, default='receive',
                        help='bag time of a message: receive time (default, as ros2 bag '
                        'record) or the header stamp of stamped messages')
    parser.add_argument('--use-sim-time', action='store_true',
                        help='receive times from /clock instead of the system clock')
    parser.add_argument('--bag-version', type=int, choices=(8, 9), default=9,
                        help='metadata.yaml version (9: Jazzy; 8 for older readers)')
    parser.add_argument('--quiet', action='store_true', help='no per-topic log lines')
    args = parser.parse_args(argv)
    if args.duration < 0:
        print(f'vla-ros record: --duration must be >= 0, found {args.duration}',
              file=sys.stderr)
        return 2
    from ..verbs import finish, guarded
    summary = guarded('record', lambda: record(
        args.out, args.topics, args.storage, args.duration, args.timestamp, args.all,
        args.bag_version, args.use_sim_time, args.quiet), (RecordError, ValueError))
    return finish('record', summary,
                  lambda s: f'wrote {s.get("messages", 0)} messages to {args.out}')


if __name__ == '__main__':
    sys.exit(main())
