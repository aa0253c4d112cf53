"""
``vla-ros play``: publish a rosbag2 bag's messages at their recorded timing.

A stand-in for ``ros2 bag play`` where rosbag2 is not installed. Any bag ``rosbags`` reads
plays: MCAP or sqlite3, metadata versions of Humble to Jazzy, compressed or not, recorded
here or on a robot. Messages go out as the CDR bytes stored in the bag (no
re-serialization), each topic with a publisher of its recorded type and a QoS adapted from
its recorded publishers (best effort when one was, transient local when all were).

Timing: message i is published at ``start + (t_i - t_0) / rate`` on the steady clock,
``t`` being the bag time (receive time, for bags recorded the usual way). ``--clock``
publishes ``/clock`` from the bag time at a fixed rate, so nodes with ``use_sim_time``
follow the bag; a recorded ``/clock`` topic is then left out (one clock source only).
Before the first message the player waits, up to ``--wait`` seconds, until every played
topic has a subscriber (DDS discovery takes a moment; messages published before it are
lost).

Connections whose type is not installed or that are not CDR are skipped with a message and
counted; ``--topics`` restricts playback to some topics. Exit status 0, 2 for an unreadable
bag or bad arguments.
"""

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from . import topics as bag_topics


class PlayError(ValueError):
    """A bag that cannot be played."""


def open_bag(path: str):
    """Open a rosbag2 folder (or its single storage file) with rosbags; PlayError if not."""
    from rosbags.rosbag2 import Reader, ReaderError
    if not os.path.exists(path):
        raise PlayError(f'bag {path} does not exist')
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as exc:
        raise PlayError(f'cannot read bag {path}: {exc}') from exc
    return reader


def _matches(topic: str, wanted: Optional[Sequence[str]]) -> bool:
    return not wanted or any(bag_topics.resolve(w) == bag_topics.resolve(topic) for w in wanted)


class Player:
    """Publishers for a bag's connections and the timed publishing loop."""

    def __init__(self, node, reader, topics: Optional[Sequence[str]] = None,
                 clock_hz: float = 0.0, log=print):
        """Create a publisher per played connection (and /clock with ``clock_hz``)."""
        self.node = node
        self.reader = reader
        self.log = log
        self.clock_hz = float(clock_hz)
        self.counters: Dict[str, int] = {}
        self.published: Dict[str, int] = {}
        self.publishers: Dict[int, object] = {}   # connection id → publisher
        self.skipped: List[str] = []
        by_key: Dict[tuple, object] = {}
        for conn in reader.connections:
            name = f'{conn.topic} [{conn.msgtype}]'
            if not _matches(conn.topic, topics):
                continue
            if clock_hz > 0 and bag_topics.resolve(conn.topic) == '/clock':
                self.skipped.append(f'{name}: --clock publishes /clock from the bag time')
                continue
            fmt = getattr(conn.ext, 'serialization_format', 'cdr')
            if fmt != 'cdr':
                self.skipped.append(f'{name}: serialization format {fmt!r}, not cdr')
                continue
            try:
                cls = bag_topics.message_class(conn.msgtype)
            except bag_topics.UnknownTypeError as exc:
                self.skipped.append(f'{name}: {exc}')
                continue
            key = (conn.topic, conn.msgtype)
            if key not in by_key:
                profiles = list(getattr(conn.ext, 'offered_qos_profiles', []) or [])
                by_key[key] = node.create_publisher(cls, conn.topic,
                                                    bag_topics.qos_from_bag(profiles))
            self.publishers[conn.id] = by_key[key]
        for line in self.skipped:
            self.count('connections_skipped')
            self.log(f'vla-ros play: skipping {line}')
        self.clock_pub = None
        if clock_hz > 0:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock as ClockMsg
            self.clock_pub = node.create_publisher(
                ClockMsg, '/clock', QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
            self._clock_cls = ClockMsg

    def count(self, key: str, n: int = 1):
        """Add to a counter."""
        self.counters[key] = self.counters.get(key, 0) + n

    def flush(self, timeout: float = 2.0):
        """Wait until reliable subscribers acknowledged everything (the last message too)."""
        from rclpy.duration import Duration
        for pub in {id(p): p for p in self.publishers.values()}.values():
            try:
                if not pub.wait_for_all_acked(Duration(seconds=timeout)):
                    self.count('not_acknowledged_at_exit')
            except Exception:  # best-effort publishers, or rclpy without the call
                pass

    def wait_for_subscribers(self, timeout: float) -> List[str]:
        """Wait until every publisher has a subscriber (≤ timeout s); return those without."""
        pubs = {p.topic_name: p for p in self.publishers.values()}
        end = time.monotonic() + timeout
        while True:
            missing = sorted(t for t, p in pubs.items() if p.get_subscription_count() == 0)
            if not missing or time.monotonic() >= end:
                return missing
            time.sleep(0.02)

    def _publish_clock(self, bag_ns: int):
        from builtin_interfaces.msg import Time
        sec, nsec = divmod(int(bag_ns), 1_000_000_000)
        self.clock_pub.publish(self._clock_cls(clock=Time(sec=sec, nanosec=nsec)))
        self.count('clock_published')

    def play_once(self, rate: float, stop_at: Optional[float] = None) -> bool:
        """Play the bag once; returns False when interrupted (context shut down)."""
        import rclpy
        ids = set(self.publishers)
        messages = self.reader.messages([c for c in self.reader.connections if c.id in ids])
        t0 = None
        start = None
        next_clock = None
        clock_period = 1.0 / self.clock_hz if self.clock_hz > 0 else None
        for conn, stamp, data in messages:
            if t0 is None:
                t0, start = stamp, time.monotonic()
                if clock_period is not None:
                    self._publish_clock(t0)
                    next_clock = start + clock_period
            due = start + (stamp - t0) * 1e-9 / rate
            while True:
                if not rclpy.ok():
                    return False
                now = time.monotonic()
                if next_clock is not None and next_clock <= due and next_clock <= now:
                    self._publish_clock(t0 + int((next_clock - start) * rate * 1e9))
                    next_clock += clock_period
                    continue
                if now >= due:
                    break
                wake = due if next_clock is None else min(due, next_clock)
                time.sleep(min(0.1, max(0.0, wake - now)))
            try:
                self.publishers[conn.id].publish(bytes(data))
            except Exception as exc:  # context gone (Ctrl-C) or a broken message
                if not rclpy.ok():
                    return False
                self.count('publish_errors')
                self.log(f'vla-ros play: cannot publish on {conn.topic}: {exc!r}')
                continue
            self.published[conn.topic] = self.published.get(conn.topic, 0) + 1
            if stop_at is not None and time.monotonic() >= stop_at:
                return False
        return True


def play(path: str, rate: float = 1.0, loop: bool = False, clock_hz: float = 0.0,
         topics: Optional[Sequence[str]] = None, wait: float = 5.0, quiet: bool = False
         ) -> Dict:
    """Play ``path``; returns a summary (messages per topic, counters)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    if not rate > 0:
        raise PlayError(f'--rate must be > 0, found {rate}')
    reader = open_bag(path)
    log = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    rclpy.init()
    player = None
    node = None
    try:
        node = Node('vla_bag_player')
        player = Player(node, reader, topics, clock_hz, log)
        if not player.publishers:
            raise PlayError(f'nothing to play in {path}: no connection of '
                            f'{sorted({c.topic for c in reader.connections})} matches '
                            f'--topics {list(topics or [])} with an installed type')
        missing = player.wait_for_subscribers(wait)
        if missing:
            log(f'vla-ros play: no subscriber after {wait:g} s on {", ".join(missing)}; '
                'playing anyway')
        extras = (', looping' if loop else '') + (
            f', /clock at {clock_hz:g} Hz' if clock_hz else '')
        log(f'vla-ros play: {path}: {reader.message_count} messages, '
            f'{reader.duration * 1e-9:.3f} s, rate {rate:g}{extras}')
        while player.play_once(rate) and loop:
            player.count('loops')
        player.flush()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        reader.close()
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # context already shut down by a signal
                pass
        rclpy.try_shutdown()
    summary = {'bag': path, 'published': dict(sorted(player.published.items())) if player
               else {}, 'counters': dict(player.counters) if player else {},
               'skipped': list(player.skipped) if player else []}
    summary['messages'] = sum(summary['published'].values())
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``vla-ros play``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros play', description='Publish a rosbag2 bag at its recorded timing '
        '(what `ros2 bag play` does).')
    parser.add_argument('bag', help='bag folder (or its .mcap / .db3 file)')
    parser.add_argument('--rate', '-r', type=float, default=1.0,
                        help='playback speed factor (default 1)')
    parser.add_argument('--loop', '-l', action='store_true', help='play again and again')
    parser.add_argument('--clock', nargs='?', type=float, const=40.0, default=0.0,
                        metavar='HZ', help='publish /clock from the bag time (default 40 Hz '
                        'when given without a value)')
    parser.add_argument('--topics', nargs='+', default=None, metavar='TOPIC',
                        help='play only these topics')
    parser.add_argument('--wait', type=float, default=5.0,
                        help='seconds to wait for subscribers before the first message '
                        '(default 5)')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    if args.clock < 0 or args.wait < 0:
        print('vla-ros play: --clock and --wait must be >= 0', file=sys.stderr)
        return 2
    from ..verbs import finish, guarded
    summary = guarded('play', lambda: play(args.bag, args.rate, args.loop, args.clock,
                                           args.topics, args.wait, args.quiet), (PlayError,))
    return finish('play', summary, lambda s: f'published {s["messages"]} messages')


if __name__ == '__main__':
    sys.exit(main())
