"""
`vla-ros dataset from-bag`: bags of the graph's topics → LeRobotDataset v3 episodes.

First on a bag built message by message (every alignment rule has a case: stamp-matched
image received after the tokens, images from the future, stale topics, malformed
messages, targets at the tick's own time, episode changes, done); then on a bag recorded by
`vla-ros record` from the live graph while the scripted expert (expert_node) drives the robot,
checked against what a subscriber in this process saw.
"""

import json
import os
import signal
import subprocess
import sys
import threading

from graph_harness import sim_graph, wait_for
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from vla_ros.bag import topics as bag_topics
from vla_ros.conversions import array_to_image, ns_to_time, target_to_msg, tokens_to_msg
from vla_ros.core.action_space import ActionSpace, ActionTokenizer, DEFAULT_ARM_JOINTS
from vla_ros.learning import dataset as ds, from_bag, from_bag_config
from vla_ros.paths import default_action_space_file

MS = 1_000_000
T0 = 1_800_000_000_000_000_000   # bag times: wall-clock-like
JOINTS = list(DEFAULT_ARM_JOINTS)


class BagBuilder:
    """Messages with chosen bag times, written with rosbags (as any recorder would)."""

    def __init__(self):
        """Start empty."""
        self.items = []

    def add(self, topic: str, t_ms: float, msg=None, raw: bytes = None):
        """Add a message (or raw bytes) at bag time T0 + t_ms."""
        msgtype = bag_topics.spec_for(topic).msgtype if topic in bag_topics.GRAPH_TOPICS \
            else 'std_msgs/msg/String'
        data = raw if raw is not None else serialize_message(msg)
        self.items.append((T0 + int(t_ms * MS), bag_topics.resolve(topic), msgtype, data))

    def write(self, path: str, storage: str = 'mcap'):
        """Write the bag."""
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        with Writer(path, version=9, storage_plugin=plugin) as writer:
            conns = {}
            for t, topic, msgtype, data in sorted(self.items, key=lambda x: x[0]):
                if (topic, msgtype) not in conns:
                    msgdef, digest = bag_topics.definition(msgtype)
                    conns[(topic, msgtype)] = writer.add_connection(topic, msgtype,
                                                                    msgdef=msgdef, rihs01=digest)
                writer.write(conns[(topic, msgtype)], t, data)
        return path


def _image(stamp_ms: float):
    value = int(stamp_ms // 10) % 256
    arr = np.full((300, 300, 3), value, np.uint8)
    return array_to_image(arr, 'rgb8', ns_to_time(int(stamp_ms * MS)), 'camera')


def _joints(t_ms: float, arm, grip: float):
    from sensor_msgs.msg import JointState
    msg = JointState(name=JOINTS + ['gripper'], position=list(arm) + [grip])
    msg.header.stamp = ns_to_time(int(t_ms * MS))
    return msg


def _string(text: str):
    from std_msgs.msg import String
    return String(data=text)


def _status(task: str, seed: int, episode_time: float, done=False, success=False):
    return _string(json.dumps({'task': task, 'seed': seed, 'episode_time': episode_time,
                               'done': done, 'success': success, 'colour': 'red'}))


def _targets(b: BagBuilder, t_ms: float, arm, base, grip):
    # Joint names in another order than the dataset's: the converter reorders them.
    msg = target_to_msg(list(reversed(arm)) + list(base) + [grip], int(t_ms * MS),
                        list(reversed(JOINTS)))
    b.add('vla/target', t_ms, msg)


def _synthetic(path: str, storage: str = 'mcap'):
    """Build the scenario bag; returns what each written frame must contain."""
    b = BagBuilder()
    rng = np.random.default_rng(3)
    tokens = {t: rng.integers(0, 256, 11).astype(np.uint8)
              for t in (1000, 1200, 1400, 1600, 2000, 2200, 2600, 2800, 3000, 3400)}
    for t, tok in tokens.items():
        b.add('vla/action_tokens', t, tokens_to_msg(tok, t * MS))
    b.add('vla/instruction', 900, _string('pick up the red block'))
    b.add('sim/task_status', 950, _status('pick_block', 5, 0.1))
    measured = np.linspace(-0.05, 0.05, 7)
    # every 20 ms, never at a tick's own time; none between 1907 and 2307
    for t in list(range(907, 1908, 20)) + list(range(2307, 3508, 20)):
        b.add('joint_states', t, _joints(t, measured + t * 1e-6, 0.0))
    # A: stamp-matched image received before the tokens
    b.add('vla/image', 990, _image(1000))
    # B: a candidate before the tick, then the matching stamp 30 ms after the tick
    b.add('vla/image', 1160, _image(1150))
    b.add('vla/image', 1230, _image(1200))
    # C: no match; the newest image at/before the tick with a stamp not after the source
    b.add('vla/image', 1360, _image(1350))
    b.add('vla/image', 1399, _image(1450))     # stamped after the source stamp: never used
    b.add('vla/image', 1410, _image(1390))     # received after tick C: not for C
    # D: newest image received at or before 1600 within 250 ms → the one received at 1410
    # E (2000): newest image is 590 ms old, its match arrives 300 ms late → no image
    b.add('vla/image', 2300, _image(2000))
    # F (2200): images fine, joint_states stopped at 1900 → no joint states
    b.add('vla/image', 2190, _image(2200))
    # malformed: 5 tokens, and bytes that are no CDR at all
    b.add('vla/action_tokens', 1700, tokens_to_msg(np.arange(5), 1700 * MS))
    b.add('vla/action_tokens', 1750, raw=b'\x00\x01\x00\x00\xff\xff\xff\x7f')
    # targets: after A (used by B), one at B's own time (first used by C)
    p1, p2 = measured + 0.02, measured - 0.03
    _targets(b, 1005, p1, (0.1, 0.0, -0.2), 1.0)
    _targets(b, 1200, p2, (0.0, 0.3, 0.0), 0.0)
    # episode 2: new instruction and (task, seed)
    b.add('vla/instruction', 2390, _string('put the red block in the bowl'))
    b.add('sim/task_status', 2395, _status('place_in_bowl', 6, 0.0))
    for t in (2600, 2800, 3000, 3400):
        b.add('vla/image', t - 5, _image(t))
    b.add('sim/task_status', 2850, _status('place_in_bowl', 6, 0.45, done=True, success=True))
    b.write(path, storage)

    def m(tick):  # the arm of the newest joint_states at or before the tick
        return measured + ((tick - 7) // 20 * 20 + 7) * 1e-6
    expect = [  # (tick, image stamp, state arm, state base, state grip, instruction)
        (1000, 1000, m(1000), (0, 0, 0), 0.0, 0),
        (1200, 1200, p1, (0.1, 0.0, -0.2), 1.0, 0),
        (1400, 1350, p2, (0.0, 0.3, 0.0), 0.0, 0),
        (1600, 1390, p2, (0.0, 0.3, 0.0), 0.0, 0),
        (2600, 2600, m(2600), (0, 0, 0), 0.0, 1),   # target > 1 s old → measured arm
        (2800, 2800, m(2800), (0, 0, 0), 0.0, 1),
        (3000, 3000, m(3000), (0, 0, 0), 0.0, 1),
    ]
    return tokens, expect, m


def test_a_tick_belongs_to_the_episode_of_its_source_stamp(tmp_path):
    """A tick computed on a frame from before a reset, received after it, stays in its episode."""
    b = BagBuilder()
    rng = np.random.default_rng(4)

    def status(task, seed, sim_time, episode_time):  # as sim_node publishes it
        instruction = {'pick_block': 'pick up the red block',
                       'place_in_bowl': 'put the red block in the bowl'}[task]
        return _string(json.dumps({'task': task, 'seed': seed, 'sim_time': sim_time,
                                   'instruction': instruction,
                                   'episode_time': episode_time, 'done': False,
                                   'success': False, 'colour': 'red'}))
    b.add('vla/instruction', 900, _string('pick up the red block'))
    b.add('sim/task_status', 950, status('pick_block', 5, 0.95, 0.1))
    for t in range(907, 2600, 20):
        b.add('joint_states', t, _joints(t, np.zeros(7), 0.0))
    # The reset at sim time 1.995 s: status and instruction arrive before the tick that
    # inference_node computed on the last frame of the old episode (stamp 1990).
    b.add('sim/task_status', 2000, status('place_in_bowl', 6, 1.995, 0.0))
    b.add('vla/instruction', 2003, _string('put the red block in the bowl'))
    # 1995: a frame rendered at the reset instant (before the reset) is the old scene's.
    arrivals = {1000: 1000, 1200: 1200, 1990: 2010, 1995: 2015, 2200: 2200, 2400: 2400}
    for stamp, t in arrivals.items():
        b.add('vla/image', stamp + 1, _image(stamp))
        b.add('vla/action_tokens', t, tokens_to_msg(rng.integers(0, 256, 11), stamp * MS))
    bag = b.write(str(tmp_path / 'bag'))
    records = []
    from_bag.convert([bag], str(tmp_path / 'dataset'), on_frame=records.append)
    loaded = ds.load(str(tmp_path / 'dataset'))
    assert [(e['task'], e['seed'], e['length']) for e in loaded.episodes] == [
        ('pick_block', 5, 4), ('place_in_bowl', 6, 2)]
    assert loaded.tasks == ['pick up the red block', 'put the red block in the bowl']
    assert [r['source_stamp'] // MS for r in records if r['episode_index'] == 0] == [
        1000, 1200, 1990, 1995]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_alignment_rules_on_a_built_bag(tmp_path, storage):
    """Every frame takes what the rules say; drops and malformed messages are counted."""
    bag = str(tmp_path / 'bag')
    tokens, expect, m = _synthetic(bag, storage)
    out = str(tmp_path / 'dataset')
    records = []
    stats = from_bag.convert([bag], out, from_bag_config.Options(after_done=0.3),
                             on_frame=records.append)
    assert stats['dropped'] == {'after_done': 1, 'malformed_tokens': 1, 'no_image': 1,
                                'no_joint_states': 1}, stats
    assert stats['malformed'] == {'/vla/action_tokens': 2}, stats
    assert stats['ticks'] == 11 and stats['frames_written'] == len(expect)
    loaded = ds.load(out)
    assert [e['length'] for e in loaded.episodes] == [4, 3]
    assert loaded.tasks == ['pick up the red block', 'put the red block in the bowl']
    e0, e1 = loaded.episodes
    assert (e0['task'], e0['seed'], e0['success']) == ('pick_block', 5, False)
    assert e0['colour'] == 'red' and e0['source'] == 'rosbag'
    assert (e1['task'], e1['seed'], e1['success']) == ('place_in_bowl', 6, True)
    assert loaded.columns['next.success'].tolist() == [False] * 6 + [True]
    tokenizer = ActionTokenizer(ActionSpace.from_yaml(default_action_space_file()))
    images = [img for _, _, img in ds.iter_episode_images(out, loaded.episodes)]
    for i, (tick, image_stamp, arm, base, grip, task) in enumerate(expect):
        assert records[i]['t'] == T0 + tick * MS
        assert loaded.columns['task_index'][i] == task
        np.testing.assert_array_equal(loaded.columns[ds.TOKENS_KEY][i], tokens[tick])
        np.testing.assert_allclose(loaded.columns[ds.ACTION_KEY][i],
                                   tokenizer.detokenize(tokens[tick]), atol=1e-6)
        assert records[i]['image_stamp'] == image_stamp * MS, (i, records[i])
        assert int(images[i][0, 0, 0]) == (image_stamp // 10) % 256, i
        state = loaded.columns[ds.STATE_KEY][i]
        np.testing.assert_allclose(state[:7], arm, atol=1e-6, err_msg=str(i))
        np.testing.assert_allclose(state[7:10], base, atol=1e-6, err_msg=str(i))
        assert state[10] == grip, i
        joints = loaded.columns[ds.JOINT_KEY][i]
        np.testing.assert_allclose(joints[:7], m(tick), atol=1e-6, err_msg=str(i))
        # nothing from after the tick, except the image carrying the tick's own stamp
        for role, t in records[i]['sources'].items():
            if role == 'image' and records[i]['image_matched']:
                assert records[i]['image_stamp'] == records[i]['source_stamp']
            elif role == 'target':
                assert t < records[i]['t'], (i, role)
            else:
                assert t <= records[i]['t'], (i, role)


def test_command_line_errors_name_the_topic_and_the_bag(tmp_path, capsys):
    """A bag without a required topic, a missing bag, a bad option: exit 2 and a reason."""
    b = BagBuilder()
    b.add('vla/action_tokens', 0, tokens_to_msg(np.zeros(11), 0))
    bag = b.write(str(tmp_path / 'tokens_only'))
    out = str(tmp_path / 'ds')
    assert from_bag.main(['from-bag', bag, '--out', out]) == 2
    err = capsys.readouterr().err
    assert bag in err and '/vla/image' in err and '/joint_states' in err
    assert from_bag.main(['from-bag', str(tmp_path / 'missing'), '--out', out]) == 2
    assert 'missing' in capsys.readouterr().err
    assert from_bag.main(['from-bag', bag, '--out', out, '--max-age', '-1']) == 2
    assert '--max-age' in capsys.readouterr().err


def test_command_line_writes_dataset_and_provenance(tmp_path, capsys):
    """The CLI path (vla-ros dataset from-bag) and a second run that adds nothing twice."""
    bag = str(tmp_path / 'bag')
    _synthetic(bag)
    out, trace = str(tmp_path / 'ds'), str(tmp_path / 'frames.jsonl')
    args = ['dataset', 'from-bag', bag, '--out', out, '--after-done', '0.3',
            '--provenance', trace]
    from vla_ros import cli
    assert cli.main(args) == 0
    assert '7 frames in 2 episodes' in capsys.readouterr().out
    lines = [json.loads(x) for x in open(trace, encoding='utf-8')]
    assert [(r['episode_index'], r['frame_index']) for r in lines] == \
        [(0, i) for i in range(4)] + [(1, i) for i in range(3)]
    # Converting the same bag again finds its episodes already there.
    assert cli.main(args) == 0
    assert len(ds.load(out).episodes) == 2
    assert ds.read_info(out)['vla_ros.source'] == 'rosbag'


def test_episode_parameters_from_the_instruction():
    """Read colour / direction / close back from a simulated task's instruction."""
    read = from_bag.params_from_instruction
    assert read('pick_block', 'pick up the blue block') == {'colour': 'blue'}
    pushed = read('push_block', 'slide the red cube to the left')
    assert pushed == {'colour': 'red', 'direction': 'left'}
    assert read('gripper', 'close the gripper') == {'close': True}
    assert read('gripper', 'release the hand') == {'close': False}
    assert read('pick_block', 'wave at the camera') == {}
    assert read('', 'pick up the blue block') == {}


def test_after_done_matches_collect():
    """from_bag keeps as many seconds after done as collect keeps after success."""
    from vla_ros.learning import collect
    assert from_bag_config.AFTER_DONE == collect.AFTER_SUCCESS


# -- the live graph -------------------------------------------------------------------------

@pytest.fixture
def live_graph(shipped_params_file):
    """sim_node, expert_node, camera, detokenizer and interpolation nodes, on sim time."""
    yield from sim_graph(shipped_params_file, expert=True)


def _watch(rec):
    """Keep what the graph publishes, as seen by a subscriber in this process."""
    from sensor_msgs.msg import Image
    from vla_ros.conversions import msg_to_tokens, time_to_ns
    from vla_ros_interfaces.msg import ActionTokens
    from rclpy.qos import QoSProfile
    from vla_ros.nodes.common import COMMAND_QOS, LATEST_IMAGE_QOS
    seen = {'tokens': [], 'images': {}}

    def on_tokens(msg):
        tokens, stamp = msg_to_tokens(msg, 11)
        with rec.lock:
            seen['tokens'].append((stamp, tokens))

    def on_image(msg):
        array = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        with rec.lock:
            seen['images'][time_to_ns(msg.header.stamp)] = array.copy()
    # Reliable with a queue: this subscriber must see every token (depth 1 keeps the newest).
    rec.node.create_subscription(ActionTokens, 'vla/action_tokens', on_tokens,
                                 QoSProfile(reliability=COMMAND_QOS.reliability,
                                            history=COMMAND_QOS.history, depth=50))
    # camera_node's best-effort QoS, with a queue deep enough to keep every frame
    qos = QoSProfile(reliability=LATEST_IMAGE_QOS.reliability, history=LATEST_IMAGE_QOS.history,
                     depth=50)
    rec.node.create_subscription(Image, 'vla/image', on_image, qos)
    return seen


class _Lines:
    """Every line a child process prints, read on a thread; waits on a condition."""

    def __init__(self, proc):
        self.lines = []
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(lines)`` holds (False after ``timeout`` s)."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.lines), timeout)

    def text(self) -> str:
        """Return everything read so far."""
        with self.changed:
            return ''.join(self.lines)

    def close(self):
        """Wait for the end of the output (the process has exited)."""
        self._thread.join(timeout=10.0)


def test_dataset_from_a_bag_of_the_live_graph(live_graph, tmp_path):
    """Record the expert driving the robot, convert, compare with what was published."""
    from vla_ros.processes import child_env
    rec, group = live_graph
    seen = _watch(rec)
    assert wait_for(lambda: rec.enable.service_is_ready() and rec.reset.service_is_ready(), 60)
    # The episode sim_node starts at launch (sim time 0) must be one the recording joins
    # late: start recording only once it has run longer than the converter's partial-start
    # limit, whatever the machine's load did to the launch.
    assert rec.wait_sim_time(from_bag_config.PARTIAL_START_S + 1.0, 60.0)
    bag = str(tmp_path / 'bag')
    proc = subprocess.Popen([sys.executable, '-m', 'vla_ros.cli', 'record', '--out', bag],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = _Lines(proc)
    try:
        # Events, no sleeping: the recorder writes the first message of every topic the
        # converter reads (so each publisher has matched it), and this process sees tokens
        # and frames of the graph (so its subscriptions matched too).
        flowing = ('/vla/action_tokens', '/vla/image', '/sim/task_status', '/joint_states',
                   '/vla/target', '/vla/instruction')
        assert output.wait(lambda lines: all(
            any(f'first message on {topic} ' in line for line in lines) for topic in flowing),
            60.0), output.text()
        assert wait_for(lambda: seen['tokens'] and seen['images'], 30.0)
        first = rec.start_episode('gripper', 1)
        status = rec.wait_done('gripper', 1, timeout=20.0)
        assert status.get('success'), status
        # The expert keeps publishing after done: frames to drop, 2 s of sim time.
        with rec.lock:
            done_at = rec.sim_now
        assert rec.wait_sim_time(done_at + 2.0, 60.0)
        second = rec.start_episode('pick_block', 3)
        assert rec.wait_sim_time(second['sim_time'] + 4.0, 60.0)
        assert group.failed() is None, group.failed()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output.close()
    rest = output.text()
    assert proc.returncode == 0, rest
    out = str(tmp_path / 'dataset')
    records = []
    stats = from_bag.convert([bag], out, on_frame=records.append)
    print(json.dumps({k: v for k, v in stats.items() if k != 'episodes'}, indent=1))
    loaded = ds.load(out)
    # Episodes: the one running when recording started was joined late (dropped); then
    # the gripper episode (ends 1 s after done) and the pick_block episode.
    episodes = [(e['task'], e['seed']) for e in loaded.episodes]
    assert episodes == [('gripper', 1), ('pick_block', 3)], stats
    assert loaded.tasks == [first['instruction'], second['instruction']]
    assert loaded.episodes[0]['success'] and not loaded.episodes[1]['success']
    assert loaded.episodes[0]['close'] is True  # 'close the gripper'
    assert loaded.episodes[1]['colour'] in second['instruction']
    assert stats['dropped'].get('after_done', 0) >= 3, stats
    reset_ns = int(round(second['sim_time'] * 1e9))
    start_ns = int(round(first['sim_time'] * 1e9))
    done_ns = start_ns + int(round(status['episode_time'] * 1e9))
    for r in records:
        if r['episode_index'] == 0:
            assert start_ns <= r['source_stamp'] < reset_ns
            assert r['source_stamp'] <= done_ns + int(1.2e9)
        else:
            assert r['source_stamp'] >= reset_ns
    # Tokens: the published ones, in order, none missing inside an episode.
    with rec.lock:
        published = dict(seen['tokens'])
        images = dict(seen['images'])
    stamps = [r['source_stamp'] for r in records]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    for i, r in enumerate(records):
        np.testing.assert_array_equal(loaded.columns[ds.TOKENS_KEY][i],
                                      published[r['source_stamp']])
    # Inside an episode a published tick is missing only when the converter says why: on a
    # loaded machine the recorder can miss best-effort joint_states (250 Hz) or frames.
    missing = []
    ticks = 0
    for episode in (0, 1):
        own = [r['source_stamp'] for r in records if r['episode_index'] == episode]
        inside = [s for s in sorted(published) if own[0] <= s <= own[-1]]
        assert set(own) <= set(inside), episode
        missing += sorted(set(inside) - set(own))
        ticks += len(inside)
    # A tick the recorder never wrote (its subscription missed the message on a loaded
    # machine) is not the converter's to count: read the bag's own tokens.
    from vla_ros.conversions import msg_to_tokens
    from vla_ros_interfaces.msg import ActionTokens
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == '/vla/action_tokens']
        recorded = {msg_to_tokens(deserialize_message(bytes(d), ActionTokens), 11)[1]
                    for _, _, d in reader.messages(conns)}
    unrecorded = [s for s in missing if s not in recorded]
    explained = sum(stats['dropped'].get(k, 0) for k in ('no_joint_states', 'no_image'))
    assert len(missing) - len(unrecorded) <= explained, (missing, unrecorded,
                                                         stats['dropped'])
    # Every miss is counted (above): a few on a busy machine, never a large share (a CI run
    # on the 2 shared cores missed 3 ticks of the two episodes, all counted; another missed
    # 5 with 3 counted, the bag not read then).
    assert len(missing) <= max(2, ticks // 10), (missing, ticks)
    # Images: the vla/image with the tokens' stamp when the bag has one (every other tick:
    # camera 12.5 Hz, policy 5 Hz), else an earlier one; pixel for pixel as published.
    from sensor_msgs.msg import Image
    from vla_ros.conversions import time_to_ns
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == '/vla/image']
        in_bag = {time_to_ns(deserialize_message(bytes(d), Image).header.stamp): t
                  for _, t, d in reader.messages(conns)}
    frames = [img for _, _, img in ds.iter_episode_images(out, loaded.episodes)]
    compared = 0
    # A frame waits max_age for its own image: one the recorder wrote later than that (a
    # loaded machine) is not matched, and an earlier image stands in.
    wait_ns = int(from_bag_config.Options().max_age * 1e9)
    for i, r in enumerate(records):
        assert r['image_stamp'] <= r['source_stamp'] and r['image_stamp'] in in_bag
        if r['source_stamp'] in in_bag and in_bag[r['source_stamp']] <= r['t'] + wait_ns:
            assert r['image_matched'] and r['image_stamp'] == r['source_stamp'], r
        else:
            assert in_bag[r['image_stamp']] <= r['t'], r
        if r['image_stamp'] in images:
            np.testing.assert_array_equal(frames[i], images[r['image_stamp']])
            compared += 1
    assert sum(r['image_matched'] for r in records) >= 0.3 * len(records), stats
    assert compared >= 0.8 * len(records)
    # No future leakage, checked against the bag itself: every source is at or before the
    # tick (targets strictly before); the state is the last target before the tick.
    from vla_ros_interfaces.msg import ActionTarget
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == '/vla/target']
        targets = [(t, deserialize_message(bytes(d), ActionTarget))
                   for _, t, d in reader.messages(conns)]
    for i, r in enumerate(records):
        for role, t in r['sources'].items():
            if role == 'image' and r['image_matched']:
                continue
            assert t <= r['t'] if 'target' not in role else t < r['t'], (i, role)
        if 'target' in r['sources']:
            before = [m for t, m in targets if t < r['t']]
            order = {n: k for k, n in enumerate(before[-1].joint_names)}
            expected = [before[-1].positions[order[n]] for n in JOINTS]
            np.testing.assert_allclose(loaded.columns[ds.STATE_KEY][i][:7], expected,
                                       atol=1e-6)
    assert sum('target' in r['sources'] for r in records) >= len(records) // 2
    assert os.path.isfile(os.path.join(out, 'meta', 'info.json'))
