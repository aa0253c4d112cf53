"""
`vla-ros record` and `vla-ros play` as real processes on real DDS, with real bag files.

Recording: a node in this process publishes the graph's topic types with the graph's QoS
(and one topic the recorder does not know beforehand); the bag is read back with rosbags
and every message must be the published one, byte for byte on the wire and field for field
after deserialization. Playback: a bag written with rosbags alone is played to a
subscriber in this process, which checks order, spacing and /clock.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from graph_harness import wait_for
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from vla_ros.bag import play as bag_play, record as bag_record, topics as bag_topics
from vla_ros.conversions import array_to_image, ns_to_time, tokens_to_msg
from vla_ros.nodes.common import COMMAND_QOS, LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS
from vla_ros.processes import child_env
import yaml


class Spinner:
    """A node spun on a background thread."""

    def __init__(self, name: str):
        """Create the node and start spinning it."""
        self.node = Node(name)
        self.lock = threading.Lock()
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self._running and rclpy.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                break

    def close(self):
        """Stop spinning and destroy the node."""
        self._running = False
        self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def _cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'vla_ros.cli', *args], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read the process output until a line contains ``marker``."""
    out = []
    end = time.monotonic() + timeout
    result = {}

    def reader():
        for line in proc.stdout:
            out.append(line)
            if marker in line:
                result['ok'] = True
                return
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(max(0.0, end - time.monotonic()))
    assert result.get('ok'), f'no {marker!r} from {proc.args}:\n' + ''.join(out)
    return ''.join(out)


def _wait_recorded(proc: subprocess.Popen, done, timeout: float = 30.0) -> dict:
    """
    Ask ``vla-ros record`` for its progress (SIGUSR1) until ``done(progress)`` holds.

    The recorder's own count of what it wrote, not a sleep, says when a recording may stop.
    """
    end = time.monotonic() + timeout
    while True:
        proc.send_signal(signal.SIGUSR1)
        text = _read_until(proc, 'vla-ros record: progress ', max(1.0, end - time.monotonic()))
        line = [ln for ln in text.splitlines() if 'vla-ros record: progress ' in ln][-1]
        progress = json.loads(line.split('vla-ros record: progress ', 1)[1])
        if done(progress):
            return progress
        assert time.monotonic() < end, f'recorder progress {progress} after {timeout:g} s'
        time.sleep(0.05)  # polling interval of the question, not a synchronisation


def _finish(proc: subprocess.Popen, sig=None, timeout: float = 20.0):
    if sig is not None:
        proc.send_signal(sig)
    try:
        rest, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
        pytest.fail(f'{proc.args} did not stop:\n{rest}')
    return proc.returncode, rest


def _messages(n: int):
    """Per topic: (relative name, QoS, list of messages) as the graph publishes them."""
    from geometry_msgs.msg import TwistStamped
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String
    import numpy as np
    rng = np.random.default_rng(7)
    images, joints, tokens, twists, clocks, extra = [], [], [], [], [], []
    for i in range(n):
        stamp_ns = 1_000_000_000 + i * 50_000_000
        arr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        images.append(array_to_image(arr, 'rgb8', ns_to_time(stamp_ns), 'camera'))
        js = JointState(name=[f'arm_joint_{k}' for k in range(1, 8)] + ['gripper'],
                        position=rng.normal(size=8).tolist())
        js.header.stamp = ns_to_time(stamp_ns)
        joints.append(js)
        tokens.append(tokens_to_msg(rng.integers(0, 256, 11), stamp_ns))
        tw = TwistStamped()
        tw.header.stamp = ns_to_time(stamp_ns)
        tw.twist.linear.x = float(i)
        twists.append(tw)
        clocks.append(Clock(clock=ns_to_time(stamp_ns)))
        extra.append(Float64MultiArray(data=[float(i), -1.5]))
    return [('vla/image', SENSOR_QOS, images), ('joint_states', SENSOR_QOS, joints),
            ('vla/action_tokens', COMMAND_QOS, tokens), ('cmd_vel', COMMAND_QOS, twists),
            ('/clock', RELIABLE_QOS, clocks), ('test/extra', RELIABLE_QOS, extra),
            ('vla/instruction', LATCHED_QOS, [String(data='pick up the red block')])]


@pytest.mark.parametrize('storage,stop', [('mcap', signal.SIGINT), ('sqlite3', signal.SIGTERM)])
def test_record_round_trip(ros, tmp_path, storage, stop):
    """Every published message is in the bag: type, hash, QoS, count, CDR bytes."""
    n = 25
    topics = _messages(n)
    pub = Spinner('bag_test_publisher')
    # Latched: published before the recorder exists, delivered when it subscribes.
    latched = pub.node.create_publisher(type(topics[-1][2][0]), 'vla/instruction', LATCHED_QOS)
    latched.publish(topics[-1][2][0])
    raw = {}

    def keep(topic):
        def callback(data):
            with pub.lock:
                raw.setdefault(topic, []).append(data)
        return callback
    publishers = {}
    for topic, qos, msgs in topics[:-1]:
        publishers[topic] = pub.node.create_publisher(type(msgs[0]), topic, qos)
        # What went over the wire, for the byte-for-byte comparison.
        pub.node.create_subscription(type(msgs[0]), topic, keep(topic), qos, raw=True)
    bag = str(tmp_path / f'bag_{storage}')
    t_start = time.time_ns()
    proc = _cli('record', '--out', bag, '--storage', storage, '--topics',
                *bag_topics.DEFAULT_TOPICS, 'test/extra')
    try:
        _read_until(proc, 'vla-ros record: recording', 30.0)
        # The unknown topic is subscribed once the recorder sees it on the graph.
        assert wait_for(lambda: all(p.get_subscription_count() >= 2
                                    for p in publishers.values()), 20.0), \
            {t: p.get_subscription_count() for t, p in publishers.items()}
        sent = {}
        for i in range(n):
            for topic, _, msgs in topics[:-1]:
                sent.setdefault(topic, []).append(time.time_ns())
                publishers[topic].publish(msgs[i])
            # Paced by delivery (the history depth is smaller than n): the next message
            # goes out once this one reached the test's own subscriber on every topic.
            assert wait_for(lambda: all(len(raw.get(t, [])) > i for t, _, _ in topics[:-1]),
                            30.0), {t: len(v) for t, v in raw.items()}
        resolved = {t: bag_topics.resolve(t) for t, _, _ in topics[:-1]}
        _wait_recorded(proc, lambda p: all(p['written'].get(r, 0) >= n
                                           for r in resolved.values()))
        code, out = _finish(proc, stop)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    t_end = time.time_ns()
    assert code == 0, out
    with open(os.path.join(bag, 'metadata.yaml'), encoding='utf-8') as stream:
        meta = yaml.safe_load(stream)['rosbag2_bagfile_information']
    assert meta['version'] == 9 and meta['storage_identifier'] == storage
    assert all(t['topic_metadata']['type_description_hash'].startswith('RIHS01_')
               for t in meta['topics_with_message_count'])
    with Reader(bag) as reader:
        by_topic = {c.topic: c for c in reader.connections}
        store = bag_topics.typestore()
        for topic, qos, msgs in topics:
            full = bag_topics.resolve(topic)
            conn = by_topic[full]
            cls = type(msgs[0])
            assert conn.msgtype == bag_topics.type_name(cls)
            assert conn.digest == bag_topics.definition(conn.msgtype)[1]  # registers it
            assert conn.digest == store.hash_rihs01(conn.msgtype)
            assert conn.digest.startswith('RIHS01_')
            assert conn.msgdef.data and conn.ext.serialization_format == 'cdr'
            profiles = conn.ext.offered_qos_profiles
            assert profiles, topic
            assert profiles[0].reliability.name == qos.reliability.name, topic
            assert profiles[0].durability.name == qos.durability.name, topic
            got = [(t, data) for _, t, data in reader.messages([conn])]
            assert len(got) == len(msgs), (topic, len(got))
            stamps = [t for t, _ in got]
            assert stamps == sorted(stamps) and t_start <= stamps[0] and stamps[-1] <= t_end
            if topic in sent:  # bag time = reception time: after sending, soon after
                delays = [t - s for t, s in zip(stamps, sent[topic])]
                assert 0 < min(delays) and max(delays) < 500_000_000, (topic, delays)
            for k, (_, data) in enumerate(got):
                assert deserialize_message(bytes(data), cls) == msgs[k], (topic, k)
                if topic in raw:
                    # Same CDR bytes; a transport may add up to 3 bytes of alignment
                    # padding at the end (shared memory here, not in-process delivery).
                    wire = bytes(raw[topic][k])
                    stored = bytes(data)
                    pad = stored[len(wire):]
                    assert stored[:len(wire)] == wire and len(pad) < 4, (topic, k)
                    assert pad == bytes(len(pad)), (topic, k)
                # rosbags reads it with the stored definition too.
                store.deserialize_cdr(bytes(data), conn.msgtype)
    # rosbags' own writer layout: metadata.yaml next to the storage file
    files = os.listdir(bag)
    assert 'metadata.yaml' in files
    assert any(f.endswith('.mcap' if storage == 'mcap' else '.db3') for f in files)


def test_record_refuses_an_existing_folder(tmp_path, capsys):
    """An existing output folder is an error naming it, exit status 2."""
    code = bag_record.main(['--out', str(tmp_path)])
    assert code == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_record_duration_stops_and_closes(tmp_path):
    """--duration ends the recording with a readable bag."""
    bag = str(tmp_path / 'short')
    proc = _cli('record', '--out', bag, '--duration', '1.0', '--topics', 'nothing/here')
    code, out = _finish(proc, timeout=30.0)
    assert code == 0, out
    with Reader(bag) as reader:
        assert reader.message_count == 0


def test_interface_types_round_trip_through_rosbags():
    """Register the interface types in rosbags from the .msg files: same bytes, same hashes."""
    import json
    from ament_index_python.packages import get_package_share_directory
    from rclpy.serialization import deserialize_message, serialize_message
    from vla_ros.conversions import target_to_msg
    share = get_package_share_directory('vla_ros_interfaces')
    tokens = tokens_to_msg(list(range(11)), 1_234_000_000_007, 'sha256:0123456789abcdef',
                           'camera')
    target = target_to_msg([0.1 * i for i in range(7)] + [0.2, -0.1, 0.3, 1.0],
                           5_000_000_001, [f'arm_joint_{i}' for i in range(1, 8)],
                           'sha256:0123456789abcdef', 'base_link')
    store = bag_topics.typestore()
    for msg, name in ((tokens, 'ActionTokens'), (target, 'ActionTarget')):
        msgtype = f'vla_ros_interfaces/msg/{name}'
        _, digest = bag_topics.definition(msgtype)
        with open(os.path.join(share, 'msg', f'{name}.json'), encoding='utf-8') as stream:
            hashes = {h['type_name']: h['hash_string']
                      for h in json.load(stream)['type_hashes']}
        assert digest == hashes[msgtype]  # rosidl's RIHS01 for the type
        data = serialize_message(msg)
        decoded = store.deserialize_cdr(data, msgtype)
        assert decoded.header.stamp.sec == msg.header.stamp.sec
        assert decoded.header.stamp.nanosec == msg.header.stamp.nanosec
        assert decoded.action_space == 'sha256:0123456789abcdef'
        # Back through rosbags' writer, rclpy reads the same message. (Bytes are not
        # compared: CDR alignment padding is unspecified, and rclpy's serializer can leave
        # whatever was in memory there, where rosbags writes zeros.)
        again = deserialize_message(bytes(store.serialize_cdr(decoded, msgtype)), type(msg))
        assert again == msg
        assert len(store.serialize_cdr(decoded, msgtype)) == len(data)
    decoded = store.deserialize_cdr(serialize_message(target), 'vla_ros_interfaces/msg/'
                                    'ActionTarget')
    assert list(decoded.positions) == list(target.positions)
    assert decoded.base.angular.z == 0.3 and decoded.gripper == 1.0


def test_record_on_sim_time_holds_messages_until_the_first_clock(ros, tmp_path):
    """With --use-sim-time nothing is stamped 0: early messages take the first clock time."""
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import String
    pub = Spinner('bag_sim_time_publisher')
    latched = pub.node.create_publisher(String, 'vla/instruction', LATCHED_QOS)
    latched.publish(String(data='pick up the red block'))  # arrives before any /clock
    clock = pub.node.create_publisher(Clock, '/clock', RELIABLE_QOS)
    bag = str(tmp_path / 'sim_bag')
    proc = _cli('record', '--out', bag, '--use-sim-time', '--topics', 'vla/instruction',
                '/clock')
    try:
        _read_until(proc, 'vla-ros record: recording', 30.0)
        assert wait_for(lambda: clock.get_subscription_count() >= 1
                        and latched.get_subscription_count() >= 1, 20.0)
        _wait_recorded(proc, lambda p: p['held'] >= 1)  # the instruction: no clock yet
        for i in range(20):
            clock.publish(Clock(clock=ns_to_time(5_000_000_000 + i * 50_000_000)))
            # Received: the instruction and i + 1 clocks, written or still held.
            _wait_recorded(proc, lambda p: sum(p['written'].values()) + p['held'] >= i + 2)
        _wait_recorded(proc, lambda p: p['held'] == 0
                       and p['written'].get('/vla/instruction', 0) == 1)
        code, out = _finish(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    assert code == 0, out
    # The instruction is held; so may be the first /clock message itself (the recorder's
    # own clock takes that time only after its subscription has seen the message).
    held = json.loads(out[out.index('{'):])['counters'].get('held_until_first_clock', 0)
    assert 1 <= held <= 2, out
    with Reader(bag) as reader:
        times = {c.topic: [t for _, t, _ in reader.messages([c])] for c in reader.connections}
    assert len(times['/vla/instruction']) == 1, times
    assert 5_000_000_000 <= times['/vla/instruction'][0] <= 6_000_000_000, times
    assert min(times['/clock']) >= 5_000_000_000, times


def _write_play_bag(path: str, storage: str, n: int, spacing_ns: int, t0: int):
    """Write a bag with rosbags only (as another tool or a robot would)."""
    store = bag_topics.typestore()
    String = store.types['std_msgs/msg/String']
    Clock = store.types['rosgraph_msgs/msg/Clock']
    Time = store.types['builtin_interfaces/msg/Time']
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        conn = writer.add_connection('/play/test', 'std_msgs/msg/String', typestore=store)
        clock = writer.add_connection('/clock', 'rosgraph_msgs/msg/Clock', typestore=store)
        for i in range(n):
            t = t0 + i * spacing_ns
            writer.write(conn, t, store.serialize_cdr(String(data=f'message {i}'),
                                                      'std_msgs/msg/String'))
            # A recorded /clock far from the bag time: --clock must not replay it.
            writer.write(clock, t, store.serialize_cdr(Clock(clock=Time(sec=1, nanosec=0)),
                                                       'rosgraph_msgs/msg/Clock'))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_play_timing_order_and_clock(ros, tmp_path, storage):
    """Messages arrive in order at the recorded spacing / rate; /clock is the bag time."""
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import String
    n, spacing, rate, t0 = 20, 100_000_000, 2.0, 1_700_000_000_000_000_000
    bag = str(tmp_path / f'play_{storage}')
    _write_play_bag(bag, storage, n, spacing, t0)
    sub = Spinner('bag_test_subscriber')
    got, clocks = [], []

    def on_msg(msg):
        with sub.lock:
            got.append((time.monotonic(), msg.data, clocks[-1][1] if clocks else None))

    def on_clock(msg):
        with sub.lock:
            clocks.append((time.monotonic(), msg.clock.sec * 10 ** 9 + msg.clock.nanosec))
    sub.node.create_subscription(String, 'play/test', on_msg, 10)
    sub.node.create_subscription(Clock, '/clock', on_clock, 10)
    try:
        proc = _cli('play', bag, '--rate', str(rate), '--clock', '50', '--wait', '20')
        code, out = _finish(proc, timeout=60.0)
        wait_for(lambda: len(got) >= n, 5.0)
    finally:
        sub.close()
    assert code == 0, out
    assert [m for _, m, _ in got] == [f'message {i}' for i in range(n)], out
    gaps = [b[0] - a[0] for a, b in zip(got, got[1:])]
    expected = spacing * 1e-9 / rate
    gaps_sorted = sorted(gaps)
    # Spacing follows the bag (generous bounds: a loaded 2-core CI machine delays callbacks).
    assert abs(gaps_sorted[len(gaps) // 2] - expected) < 0.5 * expected, gaps
    assert abs((got[-1][0] - got[0][0]) - (n - 1) * expected) < 0.5, gaps
    # /clock comes from the bag time (the recorded /clock of 1 s is not replayed), never
    # goes back, and is not ahead of a message when it arrives: /clock and the messages are
    # two topics, and a loaded machine may run one topic's callbacks late (the first message
    # also waits for its reader to match), so most messages, not all, must find /clock
    # behind them, and none far ahead.
    values = [v for _, v in clocks]
    assert values and values == sorted(values)
    assert t0 <= values[0] and values[-1] <= t0 + (n - 1) * spacing
    assert len(values) >= 0.5 * 50 * (n - 1) * expected
    ahead = [clock - (t0 + k * spacing) for k, (_, _, clock) in enumerate(got)
             if clock is not None and clock > t0 + k * spacing + 30_000_000]
    assert len(ahead) <= 0.25 * n, ahead
    assert max(ahead, default=0) <= 5 * spacing, ahead


def test_play_reports_a_missing_bag(tmp_path, capsys):
    """A missing bag is an error naming it, exit status 2."""
    code = bag_play.main([str(tmp_path / 'nope')])
    assert code == 2
    assert 'nope' in capsys.readouterr().err
