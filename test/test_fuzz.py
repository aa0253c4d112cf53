"""
Fault suite: every input topic fuzzed, and every node killed with -9 and restarted.

The four nodes run as processes on loopback DDS with sim time driven in lock step
(``vla_ros.testing.lockstep``), so every run sees the same sequence of events, and every
controller command is checked exactly: each one is one control period after the last
(the timers only fire when the driver moves time), so positions, velocities and
accelerations follow from consecutive commands without wall-clock noise.

Malformed messages come from a seeded numpy generator, not hypothesis: a property-based
engine would re-run and shrink examples against a graph whose state each message changes,
across four processes, which takes far longer than the 2.5 minutes this suite may use and
shrinks nothing meaningful. Seeded generation makes every failure reproducible (the seed
and the message index are in the failure text).

The harness also plays the robot: its ``joint_states`` report the last arm command
(a perfect position controller), and a camera sends a valid frame every 100 ms, so the
pipeline moves the arm while the garbage arrives.
"""

import os
import time

from builtin_interfaces.msg import Time
from graph_harness import LockstepRig
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from vla_ros.core.action_space import ActionSpace, DEFAULT_ARM_JOINTS
from vla_ros.core.control import ControlConfig
from vla_ros.graph import node_params
from vla_ros.nodes.common import COMMAND_QOS, LATCHED_QOS, LATEST_IMAGE_QOS, SENSOR_QOS
from vla_ros.paths import default_action_space_file, default_params_file
from vla_ros.testing.golden import shipped_model_dir
from vla_ros.testing.lockstep import NS
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

SEED = 20261130
MESSAGES_PER_TOPIC = 1000
JOINTS = list(DEFAULT_ARM_JOINTS)
START_NS = 500 * NS
INSTRUCTION = 'pick up the red block'
FUZZED = ('camera/image_raw', 'vla/image', 'vla/instruction', 'vla/action_tokens',
          'vla/target', 'joint_states')
QOS = {'camera/image_raw': LATEST_IMAGE_QOS, 'vla/image': LATEST_IMAGE_QOS,
       'vla/instruction': LATCHED_QOS, 'vla/action_tokens': COMMAND_QOS,
       'vla/target': COMMAND_QOS, 'joint_states': SENSOR_QOS, 'vla/estop': LATCHED_QOS}
TYPES = {'camera/image_raw': Image, 'vla/image': Image, 'vla/instruction': String,
         'vla/action_tokens': ActionTokens, 'vla/target': ActionTarget,
         'joint_states': JointState, 'vla/estop': Bool}


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """
    Return the policy to fuzz with.

    The shipped model when it is exported (its state input makes inference_node subscribe
    to every topic), else the known-function test model in the shipped action space.
    """
    policy = os.path.join(shipped_model_dir(), 'policy.onnx')
    if os.path.isfile(policy):
        return policy
    from vla_ros.testing import known_model
    folder = known_model.write(str(tmp_path_factory.mktemp('fuzz_model')),
                               ActionSpace.from_yaml(default_action_space_file()))
    print(f'{policy} is not exported: fuzzing with the test model (inference_node then '
          'does not subscribe to joint_states and the targets)')
    return os.path.join(folder, 'policy.onnx')


# -- the limits every command must respect --------------------------------------------------

class LimitChecker:
    """Checks every controller command against the interpolation node's limits."""

    def __init__(self, params_file: str):
        self.config = ControlConfig.from_params(node_params(params_file, 'interpolation_node'))
        self.dt = self.config.control_period
        self.violations = []
        self.counts = {'arm': 0, 'base': 0, 'gripper': 0}
        self.allow_hold = False     # e-stop phase: a one-tick halt is the e-stop's right
        self.where = ''
        self._arm = []              # the last two arm commands
        self._base = None
        self.boundary = []          # (last cmd_vel before, first after) an interp restart

    def restart(self):
        """
        Expect an interpolation_node restart: its first commands start a new stream.

        The new process starts at rest where the arm stands (joint_states = last command)
        with the base at zero, so its commands are checked from that state. The step
        between the dead process's last cmd_vel (which a controller keeps applying) and
        the new process's first one is recorded in ``boundary`` rather than checked.
        """
        self._restarting = {'arm', 'base'}

    def _boundary(self, kind: str, values: np.ndarray) -> bool:
        if kind not in getattr(self, '_restarting', ()):
            return False
        self._restarting.discard(kind)
        if kind == 'arm':
            last = self._arm[-1] if self._arm else values
            self._arm = [last, last]
            return False
        self.boundary.append((self._base, values.copy()))
        self._base = np.zeros(3)
        return False

    def _fail(self, text: str):
        if len(self.violations) < 20:
            self.violations.append(f'{self.where}: {text}')

    def __call__(self, kind: str, values: np.ndarray):
        """Check one command (the Lockstep ``on_command`` hook)."""
        self.counts[kind] += 1
        values = np.asarray(values, dtype=float)
        self._boundary(kind, values)
        if not np.all(np.isfinite(values)):
            return self._fail(f'{kind} command not finite: {values}')
        if kind == 'gripper':
            if values.shape != (1,) or not 0.0 <= values[0] <= 1.0:
                self._fail(f'gripper command {values} outside [0, 1]')
            return
        if kind == 'base':
            self._check_base(values)
            return
        self._check_arm(values)

    def _check_arm(self, q: np.ndarray):
        lim = self.config.joint_limits
        eps = 1e-9
        if q.shape != (7,):
            return self._fail(f'arm command has {q.size} values')
        if np.any(q < lim.position_min - eps) or np.any(q > lim.position_max + eps):
            self._fail(f'arm command {q} outside the position limits')
        if self._arm:
            v = (q - self._arm[-1]) / self.dt
            if np.any(np.abs(v) > lim.velocity_max + 1e-6):
                self._fail(f'joint velocity {v} beyond {lim.velocity_max}')
            if len(self._arm) == 2:
                v0 = (self._arm[-1] - self._arm[-2]) / self.dt
                a = (v - v0) / self.dt
                held = self.allow_hold and np.all(q == self._arm[-1])
                if np.any(np.abs(a) > lim.acceleration_max + 1e-4) and not held:
                    self._fail(f'joint acceleration {a} beyond {lim.acceleration_max}')
        self._arm = (self._arm + [q])[-2:]

    def _check_base(self, b: np.ndarray):
        c = self.config
        eps = 1e-9
        if b.shape != (3,):
            return self._fail(f'base command has {b.size} values')
        if np.any(np.abs(b) > c.base_max_velocity + eps):
            self._fail(f'base velocity {b} beyond {c.base_max_velocity}')
        stopped = self.allow_hold and np.all(b == 0.0)  # the e-stop zeroes the base at once
        if self._base is not None and not stopped:
            step = np.abs(b - self._base)
            grow = np.abs(b) - np.abs(self._base)
            step_max = np.maximum(c.base_max_acceleration, c.base_max_deceleration) * self.dt
            if np.any(step > step_max + eps) or np.any(
                    grow > c.base_max_acceleration * self.dt + eps):
                self._fail(f'base velocity jumped {self._base} -> {b}')
        self._base = b


# -- the graph and the robot around it ----------------------------------------------------

class Bench(LockstepRig):
    """The four nodes in lock step, a robot that follows the commands, a camera, a checker."""

    def __init__(self, model_path: str, params_file: str):
        super().__init__(params_file, {
            'inference_node': {'model_file_path': model_path},
            'interpolation_node': {'start_enabled': True, 'clock_timeout': 10.0}},
            flush='barrier')
        self.checker = LimitChecker(params_file)
        self.step.on_command = self.checker
        self.sent = dict.fromkeys(QOS, 0)

    def start(self):
        """Start the graph, send the instruction and run until the arm is commanded."""
        super().start(START_NS, [(t, TYPES[t], QOS[t]) for t in QOS])
        self.instruct(INSTRUCTION)
        for _ in range(20):
            self.tick()
        assert self.step.records.arm, self.step.logs()

    def frame_image(self) -> np.ndarray:
        """Return a valid frame whose colour changes slowly (the policy has work to do)."""
        img = np.empty((240, 320, 3), np.uint8)
        img[...] = ((60 + 7 * self.frames) % 256, (90 + 3 * self.frames) % 256, 120)
        return img

    def tick(self, camera: bool = True):
        """One control period (``LockstepRig.tick``), named in the checker's reports."""
        super().tick(camera)
        self.checker.where = f'tick {self.step.now_ns / NS:.2f} s'

    def publish(self, topic: str, message):
        """Publish one (fuzzed) message and count it."""
        self.step.publish(topic, message, TYPES[topic], QOS[topic])
        self.sent[topic] += 1

    def state(self) -> str:
        """Return the control state interpolation_node reports next: tracking, target_timeout..."""
        message, _ = self.report('interpolation_node', ticking=True)
        return 'tracking' if message == 'ok' else message.split(' ')[0]

    def counters(self, node: str) -> dict:
        """Return the counters of ``node``'s next /diagnostics report (waits up to 3 s)."""
        return self.report(node, timeout=3.0)[1]


@pytest.fixture(scope='module')
def bench(ros, model):
    """
    Return a started Bench shared by the tests below, in file order.

    One graph for all three saves two start-ups: the fuzzing leaves it with a valid
    instruction and a robot and camera that never stopped; the kill test restarts every
    node; the e-stop test comes last because the e-stop latches.
    """
    b = Bench(model, default_params_file())
    try:
        b.start()
        yield b
    finally:
        b.close()


# -- malformed messages ---------------------------------------------------------------------

U32 = 2 ** 32 - 1


def garbage(rng, limit: int = 164) -> bytes:
    """
    Return random bytes, half of them behind a valid CDR little-endian header.

    ``limit``: the most a publisher takes for the type (fixed-size types such as Float64
    and Bool have a fixed-size history: their publisher refuses longer payloads).
    """
    body = rng.integers(0, 256, int(rng.integers(0, limit - 3)), dtype=np.uint8).tobytes()
    return (b'\x00\x01\x00\x00' + body) if rng.random() < 0.5 else body[:limit]


def stamp(rng, now_ns: int) -> Time:
    """Return a stamp: current, zero, a little or far off either way, or out of range."""
    k = int(rng.integers(8))
    if k == 0:
        return Time()
    if k == 1:
        return Time(sec=int(rng.integers(-2 ** 31, 2 ** 31)), nanosec=int(rng.integers(U32)))
    if k == 2:
        return Time(sec=2 ** 31 - 1, nanosec=U32)
    offset = [0, int(3e7), -int(2e8), int(1e15), -int(1e15)][k - 3]
    ns = max(0, now_ns + offset)
    sec = min(ns // NS, 2 ** 31 - 1)
    return Time(sec=sec, nanosec=ns % NS)


def weird_float(rng) -> float:
    """Return NaN, an infinity, a huge, tiny or ordinary value."""
    return float(rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324, 0.0,
                             rng.normal(0, 5), rng.uniform(-3.2, 3.2)]))


def fuzz_image(rng, now_ns: int) -> object:
    """Return a malformed (or hostile but well-formed) sensor_msgs/Image."""
    if rng.random() < 0.1:
        return garbage(rng)
    msg = Image()
    msg.header.stamp = stamp(rng, now_ns)
    msg.header.frame_id = 'x' * int(rng.integers(0, 40))
    msg.encoding = str(rng.choice(['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16',
                                   '16UC1', '32FC1', '', 'yuv422', 'bayer_rggb8', 'RGB8',
                                   '64FC1', '8UC3', 'rgb8 ', 'z' * 200]))
    dims = [0, 1, 2, 3, 299, 300, 301, 4096, 65536, 2 ** 31, U32]
    msg.height = int(rng.choice(dims)) if rng.random() < 0.6 else int(rng.integers(1, 64))
    msg.width = int(rng.choice(dims)) if rng.random() < 0.6 else int(rng.integers(1, 64))
    msg.is_bigendian = int(rng.choice([0, 1, 255]))
    row = msg.width * 4
    steps = [0, row, row - 1, row + 3, U32, int(rng.integers(0, 4096))]
    msg.step = int(np.clip(rng.choice(steps), 0, U32))
    n = int(rng.choice([0, 1, 7, 4096, 270000, int(rng.integers(0, 20000))]))
    if msg.encoding == '32FC1' and rng.random() < 0.5 and 0 < msg.height * msg.width < 5000:
        # well-formed float image full of NaN and infinities
        msg.step = msg.width * 4
        values = rng.choice([np.nan, np.inf, -np.inf, 1e30, -1.0, 0.5],
                            msg.height * msg.width).astype('<f4')
        msg.data = values.tobytes()
        return msg
    msg.data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return msg


def fuzz_instruction(rng, now_ns: int) -> object:
    """Return an empty, blank, huge, control-character, random-unicode or non-UTF-8 text."""
    k = int(rng.integers(9))
    if k == 0:
        return garbage(rng)
    if k == 1:
        good = serialize_message(String(data='abcdefgh'))
        return good.replace(b'abcdefgh', rng.integers(128, 256, 8, dtype=np.uint8).tobytes())
    texts = ['', ' ', '\t\n\r', 'pick up the red block ' * int(rng.integers(50, 600)),
             ''.join(chr(int(c)) for c in rng.integers(1, 0xD7FF, int(rng.integers(1, 300)))),
             '\x01\x02\x1b[31m' + 'close' * 10, 'drive to the blue marker']
    return String(data=texts[k - 2])


SPACE_ID = ActionSpace.from_yaml(default_action_space_file()).identity


def _space_id(rng) -> str:
    return str(rng.choice([SPACE_ID, SPACE_ID, SPACE_ID, '', 'sha256:0000000000000000',
                           SPACE_ID + ' ', 'x' * 300]))


def fuzz_tokens(rng, now_ns: int) -> object:
    """Return tokens with wrong counts, extreme stamps, other action spaces, any values."""
    if rng.random() < 0.08:
        return garbage(rng)
    n = int(rng.choice([0, 1, 10, 11, 11, 11, 12, 300]))
    msg = ActionTokens()
    msg.tokens = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    msg.header.stamp = stamp(rng, now_ns)
    msg.header.frame_id = str(rng.choice(['camera', '', 'z' * 300]))
    msg.action_space = _space_id(rng)
    return msg


def _names(rng):
    k = int(rng.integers(7))
    names = list(JOINTS)
    if k == 0:
        return names[::-1]
    if k == 1:
        return names[:6]
    if k == 2:
        return names + ['arm_joint_3']
    if k == 3:
        return []
    if k == 4:
        return names + ['gripper', 'wheel']
    if k == 5:
        return [f'j{int(i)}' for i in rng.integers(0, 9, 7)]
    return names


def _stamped_joints(rng, now_ns: int, msg, names: str, values: str, lengths):
    """Stamp ``msg`` anyhow and fill its joint ``names`` and ``values`` (often ragged)."""
    msg.header.stamp = stamp(rng, now_ns)
    joints = _names(rng)
    setattr(msg, names, joints)
    n = int(rng.choice([len(joints), len(joints), *lengths]))
    setattr(msg, values, [weird_float(rng) for _ in range(n)])
    return msg


def fuzz_target(rng, now_ns: int) -> object:
    """Return a target with wrong names, lengths, NaN/huge values, any stamp or space."""
    if rng.random() < 0.08:
        return garbage(rng)
    msg = _stamped_joints(rng, now_ns, ActionTarget(), 'joint_names', 'positions', (7, 0, 3, 9))
    b = msg.base
    b.linear.x, b.linear.y, b.angular.z = (weird_float(rng) for _ in range(3))
    b.linear.z, b.angular.x, b.angular.y = (weird_float(rng) for _ in range(3))
    msg.gripper = weird_float(rng)
    msg.action_space = _space_id(rng)
    return msg


def fuzz_joint_states(rng, now_ns: int) -> object:
    """Return joint states with repeated, missing or foreign names, ragged arrays, bad values."""
    if rng.random() < 0.08:
        return garbage(rng)
    msg = _stamped_joints(rng, now_ns, JointState(), 'name', 'position', (0, 3, 8))
    msg.velocity = [weird_float(rng) for _ in range(int(rng.integers(0, 9)))]
    return msg


def fuzz_estop(rng, now_ns: int) -> object:
    """Return bytes that are no Bool, or a Bool whose byte is neither 0 nor 1."""
    good = serialize_message(Bool(data=False))
    if rng.random() < 0.7:
        return garbage(rng, len(good))
    return good[:4] + bytes([int(rng.integers(2, 256))]) + good[5:]


GENERATORS = {'camera/image_raw': fuzz_image, 'vla/image': fuzz_image,
              'vla/instruction': fuzz_instruction, 'vla/action_tokens': fuzz_tokens,
              'vla/target': fuzz_target, 'joint_states': fuzz_joint_states,
              'vla/estop': fuzz_estop}


def _assert_alive(bench):
    failed = bench.step.group.failed()
    assert failed is None, failed + '\n' + bench.step.logs()
    bench.step.barrier()  # every node still answers


# -- the tests --------------------------------------------------------------------------------

def test_fuzzing_every_input_topic_keeps_commands_within_limits(bench):
    """>= 1000 malformed messages per input topic: no node dies, every command is sane."""
    rng = np.random.default_rng(SEED)
    checker = bench.checker
    for i in range(MESSAGES_PER_TOPIC):
        for topic in FUZZED:
            checker.where = f'seed {SEED} message {i} ({topic})'
            bench.publish(topic, GENERATORS[topic](rng, bench.step.now_ns))
        if i % 4 == 3:
            bench.tick()
            if i % 40 == 39:  # the valid instruction comes back now and then
                bench.step.publish('vla/instruction', String(data=INSTRUCTION))
    for _ in range(10):
        bench.tick()
    _assert_alive(bench)
    assert all(bench.sent[t] >= MESSAGES_PER_TOPIC for t in FUZZED), bench.sent
    assert not checker.violations, '\n'.join(checker.violations)
    ticks = len({e['t_ns'] for e in bench.step.records.arm})
    assert checker.counts['arm'] == ticks >= 250, (checker.counts, ticks)
    # The garbage reached the nodes and was counted as rejected, not silently lost.
    camera = bench.counters('camera_node')
    assert int(camera.get('dropped_malformed', 0)) > 100, camera
    detok = bench.counters('detokenizer_node')
    assert int(detok.get('rejected', 0)) > 100, detok
    interp = bench.counters('interpolation_node')
    assert int(interp.get('rejected_targets', 0)) + int(interp.get(
        'rejected_stale_targets', 0)) > 100, interp
    assert int(interp.get('joint_states_rejected', 0)) > 100, interp


def test_kill_9_and_restart_of_each_node(bench):
    """
    Kill each node in turn with -9 while the arm moves, then start it again.

    Nothing moves beyond the limits meanwhile, and the graph recovers once it is back.
    """
    step, checker = bench.step, bench.checker
    records = step.records

    def run_until(condition, ticks: int = 200) -> int:
        for n in range(ticks):
            if condition():
                return n
            bench.tick()
        return ticks
    for name in ('camera_node', 'inference_node', 'detokenizer_node', 'interpolation_node'):
        # A fresh target first.
        run_until(lambda: records.targets[-1]['t_ns'] >= step.now_ns - 100_000_000)
        assert records.targets[-1]['t_ns'] >= step.now_ns - 100_000_000, (
            name, 'no fresh target before the kill', step.diagnostic_messages)
        step.kill(name)
        killed_at = step.now_ns
        for _ in range(20):  # one second of sim time without the node
            bench.tick()
        if name == 'interpolation_node':
            assert not [e for e in records.arm if e['t_ns'] > killed_at], name
        else:
            # No fresh targets: the arm has braked to rest and the base stopped.
            last = [e['values'] for e in records.arm[-3:]]
            assert all(np.array_equal(q, last[0]) for q in last), (name, last)
            assert np.all(records.base[-1]['values'] == 0.0), name
            state = bench.state()
            assert state == 'target_timeout', (name, state, step.diagnostic_messages)
        tokens_before = len(records.tokens)
        if name == 'interpolation_node':
            checker.restart()
        step.restart(name, keep_clock=bench.tick)
        restarted_at = step.now_ns
        # Recovered: fresh tokens flow again (within 10 s of sim time: the restarted node's
        # peers discover it on the wall clock, while sim time runs as fast as the graph)...
        ticks = run_until(lambda: len([e for e in records.tokens[tokens_before:]
                                       if e['t_ns'] > restarted_at]) >= 3)
        assert ticks < 200, (name, 'no fresh tokens', step.diagnostic_messages, step.logs(name))
        print(f'{name}: 3 fresh tokens {ticks} ticks after the restart')
        _assert_alive(bench)
        assert not checker.violations, '\n'.join(checker.violations)
        # ... and interpolation_node tracks their targets. The restarted node's targets reach
        # it once DDS discovery has matched them (wall clock: seconds on a loaded machine), and
        # its state comes with the next /diagnostics report, once a wall-clock second. So:
        # wait for fresh targets, then read reports until it says tracking (30 s at most).
        assert [e for e in records.arm if e['t_ns'] > restarted_at], name
        deadline = time.monotonic() + 30.0
        while (not [e for e in records.targets if e['t_ns'] > restarted_at]
               and time.monotonic() < deadline):
            bench.tick()
        states = [bench.state()]
        while states[-1] != 'tracking' and time.monotonic() < deadline:
            states.append(bench.state())
        assert states[-1] == 'tracking', (name, states, step.diagnostic_messages, step.logs())
    # While interpolation_node was dead its last cmd_vel stayed on the wire; the new process
    # starts the base from zero (README, safety: the base controller's own cmd_vel timeout
    # stops the base meanwhile). Shown here, not hidden.
    print('cmd_vel across the interpolation_node restart (last before, first after):',
          checker.boundary)
    assert len(checker.boundary) == 1


def test_fuzzed_estop_holds_the_robot_and_kills_nothing(bench):
    """>= 1000 malformed vla/estop messages while the arm moves: held or moving sanely."""
    rng = np.random.default_rng(SEED + 1)
    checker = bench.checker
    checker.allow_hold = True  # the e-stop alone may halt the arm in one tick
    for i in range(MESSAGES_PER_TOPIC):
        checker.where = f'seed {SEED + 1} estop message {i}'
        bench.publish('vla/estop', fuzz_estop(rng, bench.step.now_ns))
        if i % 8 == 7:
            bench.tick()
    for _ in range(10):
        bench.tick()
    _assert_alive(bench)
    assert bench.sent['vla/estop'] >= MESSAGES_PER_TOPIC
    assert not checker.violations, '\n'.join(checker.violations)
    # A Bool byte other than 0 reads as true: the e-stop latched, the robot stands still.
    arm = [e['values'] for e in bench.step.records.arm[-10:]]
    base = [e['values'] for e in bench.step.records.base[-10:]]
    assert all(np.array_equal(a, arm[0]) for a in arm), arm
    assert all(np.all(b == 0.0) for b in base), base
    assert bench.counters('interpolation_node').get('estop') == 'True'
