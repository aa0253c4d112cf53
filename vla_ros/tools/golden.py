"""
`vla-ros golden`: golden replay of a rosbag2 bag through the four node processes.

A *case* is a JSON file (``test/golden/*.json``) naming a bag, a model, an action space and
parameter overrides, and holding the *goldens*: the action tokens the pipeline produced for
each camera frame (matched by the source stamp they carry), the targets the detokenizer made
of them, and the controller commands of every 20 Hz tick. Checking a case replays the bag's
input topics (``camera/image_raw``, ``joint_states``, ``vla/instruction``, ``vla/estop``)
through camera_node, inference_node, detokenizer_node and interpolation_node on sim time
driven in lock step (``tools/lockstep.py``), and compares: tokens exactly, targets and
commands to ``tolerance`` (1e-6). A changed model, tokenizer, action space, interpolation
rule or parameter shows up as a diff naming the frame or tick, the dimension, the expected
and the found value.

    vla-ros golden --case test/golden/rt1_nano.json             # check (exit 1 on a diff)
    vla-ros golden --case test/golden/rt1_nano.json --regenerate  # (re)write the goldens
    vla-ros golden --case test/golden/my_robot.json --bag runs/bags/run_042 --regenerate
    vla-ros golden --write-bag /tmp/golden_bag                  # the generated input bag

``--regenerate`` replays twice and writes only when both runs agree exactly, so a golden
is never taken from a run that would not repeat. The built-in cases use a bag generated
here, deterministically, on every run (``generate_bag``): two 3-second tasks with 320x240
bgr8 camera frames at 10 Hz, joint_states at 50 Hz and one instruction per task.

The shipped model reads the previous commanded target (``state`` input), so the run is a
closed loop through the nodes; it still repeats exactly because the lock step fixes the sim
time at which every message is handled. ``joint_states`` come from the bag (a replay does not
move a robot). interpolation_node runs with ``start_enabled`` (nobody calls ``vla/enable``)
and ``clock_timeout`` 10 s: between two steps ROS time stands still on purpose, which must
not be taken for a lost clock.

Length (over 300 lines): one workflow (case files, the generated bag, lock-step replay, the
readable diff, the command) whose parts change together; the replay engine itself is
tools/lockstep.py.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import known_model
from .lockstep import Lockstep
from ..bag import topics as bag_topics
from ..bag.play import open_bag
from ..bag.record import Recording
from ..core.action_space import ActionSpace, DEFAULT_ARM_JOINTS
from ..core.model_contract import file_sha256
from ..graph import node_params
from ..nodes.common import LATCHED_QOS, SENSOR_QOS
from ..paths import default_action_space_file, default_model_dir, default_params_file, share_file
# The simulated robot's ready pose; vla_ros.sim.robot imports MuJoCo only when a Robot is made.
from ..sim.robot import READY_ARM

NS = 1_000_000_000
FORMAT = 1
TOLERANCE = 1e-6
GENERATED_BAG_VERSION = 1
INPUT_TOPICS = ('camera/image_raw', 'joint_states', 'vla/instruction', 'vla/estop')
ARM_JOINTS = list(DEFAULT_ARM_JOINTS)
DIMENSION_NAMES = ARM_JOINTS + ['base_vx', 'base_vy', 'base_wz', 'gripper']
# Run so that a bag replays exactly (see the module docstring).
REPLAY_PARAMETERS = {'interpolation_node': {'start_enabled': True, 'clock_timeout': 10.0}}


class GoldenError(ValueError):
    """A case that cannot be run (missing model or bag, bad case file)."""


def shipped_model_dir() -> str:
    """
    Return the shipped model folder: the installed share/vla_ros/models/rt1_nano.

    When the installed copy has no policy yet but the source checkout this module runs from
    has one (``make models`` exported it, ``make install`` has not copied it yet), that one.
    """
    installed = default_model_dir()
    if os.path.isfile(os.path.join(installed, 'policy.onnx')):
        return installed
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'models', os.path.basename(installed))
    return source if os.path.isfile(os.path.join(source, 'policy.onnx')) else installed


# -- the generated input bag -------------------------------------------------------------------

TASKS = (
    # instruction, block colours (RGB) and their top-left corners in a 320x240 frame
    ('pick up the red block', [((200, 40, 40), (60, 150)), ((40, 170, 60), (170, 120)),
                               ((40, 70, 200), (250, 160))]),
    ('put the green block in the bowl', [((40, 170, 60), (90, 110)),
                                         ((200, 40, 40), (220, 150)),
                                         ((230, 230, 230), (150, 60))]),
)
TASK_NS = 3 * NS
CAMERA_PERIOD_NS = 100_000_000
JOINT_PERIOD_NS = 20_000_000


def frame(task: int, k: int, height: int = 240, width: int = 320) -> np.ndarray:
    """
    Return camera frame ``k`` of task ``task`` as RGB uint8 (integer arithmetic only).

    A table-coloured gradient, the task's blocks drifting a few pixels per frame and a dark
    'gripper' bar sweeping across: the same bytes on every machine.
    """
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 140 + (x * 40) // width
    img[..., 1] = 112 + (y * 30) // height
    img[..., 2] = 84 + ((x + y) * 20) // (width + height)
    for i, (colour, (bx, by)) in enumerate(TASKS[task][1]):
        dx = ((k * (2 + i)) % 24) - 12
        dy = ((k * (1 + i)) % 10) - 5
        img[by + dy:by + dy + 30, bx + dx:bx + dx + 30] = colour
    gx = 20 + (k * 7) % (width - 60)
    img[10:70, gx:gx + 16] = (35, 35, 40)
    return img


def joint_positions_at(task: int, k: int) -> List[float]:
    """Return the 7 arm positions of joint_states sample ``k`` of a task (triangle waves)."""
    out = []
    for j, q in enumerate(READY_ARM.tolist()):
        phase = (k * (3 + j) + 40 * task) % 120
        tri = phase if phase < 60 else 120 - phase          # 0..60
        out.append(round(q + (tri - 30) * 1e-3, 6))         # +-30 mrad around the pose
    return out


def generate_bag(path: str, start_ns: int = 1000 * NS, storage: str = 'mcap') -> Dict:
    """
    Write the built-in golden input bag to ``path`` (a new rosbag2 folder); return counts.

    Bag times are what a recorder stores (receive times): camera frames arrive 4 ms after
    their header stamp, joint_states 1 ms after theirs; none falls on a 50 ms control tick.
    """
    # Serialized by rosbags, which writes CDR alignment padding as zeros (rclpy leaves it
    # uninitialised): the bag's bytes, and the digest a golden keeps of them, never change.
    store = bag_topics.typestore()
    types = store.types
    header = types['std_msgs/msg/Header']
    time_cls = types['builtin_interfaces/msg/Time']

    def stamped(ns: int, frame_id: str = ''):
        return header(stamp=time_cls(sec=ns // NS, nanosec=ns % NS), frame_id=frame_id)

    def cdr(msg, msgtype: str) -> bytes:
        return bytes(store.serialize_cdr(msg, msgtype))

    image_t, joints_t = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/JointState'
    string_t = 'std_msgs/msg/String'
    events = []
    for task, (text, _) in enumerate(TASKS):
        t0 = start_ns + task * TASK_NS
        events.append((t0 + 3_000_000, 'vla/instruction', string_t,
                       cdr(types[string_t](data=text), string_t), LATCHED_QOS))
        for k in range(TASK_NS // CAMERA_PERIOD_NS):
            stamp = t0 + 29_000_000 + k * CAMERA_PERIOD_NS
            bgr = np.ascontiguousarray(frame(task, k)[..., ::-1])
            h, w = bgr.shape[:2]
            msg = types[image_t](header=stamped(stamp, 'camera_optical_frame'), height=h,
                                 width=w, encoding='bgr8', is_bigendian=0, step=w * 3,
                                 data=bgr.reshape(-1))
            events.append((stamp + 4_000_000, 'camera/image_raw', image_t, cdr(msg, image_t),
                           SENSOR_QOS))
        for k in range(TASK_NS // JOINT_PERIOD_NS):
            stamp = t0 + 6_000_000 + k * JOINT_PERIOD_NS
            msg = types[joints_t](header=stamped(stamp), name=ARM_JOINTS + ['gripper'],
                                  position=np.array(joint_positions_at(task, k) + [0.0]),
                                  velocity=np.zeros(0), effort=np.zeros(0))
            events.append((stamp + 1_000_000, 'joint_states', joints_t, cdr(msg, joints_t),
                           SENSOR_QOS))
    events.sort(key=lambda e: (e[0], e[1]))
    recording = Recording(path, storage)
    try:
        for t, topic, msgtype, data, qos in events:
            recording.write('/' + topic, msgtype, t, data, offered=[qos])
        recording.set_custom_data('vla_ros.golden_bag', json.dumps(
            {'generator': 'vla_ros.tools.golden.generate_bag',
             'version': GENERATED_BAG_VERSION}))
    finally:
        recording.close()
    counts: Dict[str, int] = {}
    for _, topic, _, _, _ in events:
        counts[topic] = counts.get(topic, 0) + 1
    return counts


# -- replay --------------------------------------------------------------------------------

def read_inputs(bag: str, topics: Sequence[str] = INPUT_TOPICS,
                remap: Optional[Dict[str, str]] = None) -> Dict:
    """
    Read the input messages of a bag: [(bag time ns, topic, msgtype, bytes, qos)], digest.

    ``remap`` renames bag topics first (a robot's ``/head_camera/color/image_raw`` to
    ``camera/image_raw``). The digest is a sha256 over every (topic, time, bytes)
    replayed, so a golden can tell whether it is checked against the bag it was made from.
    """
    reader = open_bag(bag)
    renamed = {bag_topics.resolve(k): bag_topics.resolve(v) for k, v in (remap or {}).items()}
    wanted = {bag_topics.resolve(t) for t in topics}
    digest = hashlib.sha256()
    messages = []
    try:

        def name(conn) -> str:
            topic = bag_topics.resolve(conn.topic)
            return renamed.get(topic, topic)
        conns = [c for c in reader.connections if name(c) in wanted]
        qos = {c.id: bag_topics.qos_from_bag(list(getattr(c.ext, 'offered_qos_profiles', [])
                                                  or [])) for c in conns}
        for conn, t, data in reader.messages(conns):
            topic = name(conn)
            messages.append((int(t), topic, conn.msgtype, bytes(data), qos[conn.id]))
    finally:
        reader.close()
    messages.sort(key=lambda m: (m[0], m[1]))
    counts: Dict[str, int] = {}
    for t, topic, msgtype, data, _ in messages:
        digest.update(f'{topic}\0{msgtype}\0{t}\0{len(data)}\0'.encode())
        digest.update(data)
        counts[topic] = counts.get(topic, 0) + 1
    if not messages:
        raise GoldenError(f'bag {bag} has none of the input topics {list(topics)}')
    return {'messages': messages, 'sha256': digest.hexdigest(), 'counts': counts,
            'camera_lag_s': _camera_lag(messages)}


def _camera_lag(messages) -> Optional[float]:
    """Return the median of (bag time - header stamp) of the camera frames, in seconds."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    lags = []
    for t, topic, msgtype, data, _ in messages:
        if topic == '/camera/image_raw' and msgtype == 'sensor_msgs/msg/Image':
            stamp = deserialize_message(data, Image).header.stamp
            lags.append((t - (stamp.sec * NS + stamp.nanosec)) / NS)
            if len(lags) >= 20:
                break
    return float(np.median(lags)) if lags else None


def replay(bag: str, params_file: str, overrides: Dict[str, Dict], tail_s: float = 0.5,
           topics: Sequence[str] = INPUT_TOPICS, timeout: float = 60.0,
           control_period_ns: int = 50_000_000, inference_period_ns: int = 200_000_000,
           remap: Optional[Dict[str, str]] = None) -> Dict:
    """
    Replay a bag's inputs through the four nodes in lock step; return what came out.

    rclpy is initialised here when it is not yet. Returns ``tokens`` (tick, source stamp,
    11 tokens), ``targets`` (arrival time, stamp, arm, base, gripper), ``commands`` (tick,
    arm, base, gripper or None), the bag's digest and the driver's round count.
    """
    import rclpy

    inputs = read_inputs(bag, topics, remap)
    owns = not rclpy.ok()
    if owns:
        rclpy.init()
    step = None
    try:
        step = Lockstep(params_file, overrides, period_ns=control_period_ns, timeout=timeout,
                        late_periods={'inference_node': inference_period_ns})
        classes = {m[2]: bag_topics.message_class(m[2]) for m in inputs['messages']}
        first = {}
        for _, topic, msgtype, _, qos in inputs['messages']:
            first.setdefault(topic, (topic, classes[msgtype], qos))
        step.start(list(first.values()))
        messages = inputs['messages']
        # Start on the tick grid just before the first message.
        step.set_clock((messages[0][0] // step.period_ns) * step.period_ns)
        step.settle(2)
        for t, topic, msgtype, data, qos in messages:
            step.advance_to(t)
            step.publish(topic, data, classes[msgtype], qos)
        step.advance_to(messages[-1][0] + int(tail_s * NS))
        step.settle(2)
        result = collect(step)
        result['rounds'] = step.rounds
    finally:
        if step is not None:
            step.close()
        if owns:
            rclpy.try_shutdown()
    result['bag'] = {'sha256': inputs['sha256'], 'counts': inputs['counts']}
    if inputs['camera_lag_s'] is not None:
        result['bag']['camera_lag_s'] = round(inputs['camera_lag_s'], 6)
    return result


def collect(step) -> Dict:
    """Turn a Lockstep's records into the golden layout (lists of plain JSON values)."""
    r = step.records
    tokens = [{'tick_ns': e['t_ns'], 'stamp_ns': e['stamp_ns'], 'tokens': e['tokens']}
              for e in r.tokens]
    targets = []
    for e in r.targets:
        targets.append({'t_ns': e['t_ns'], 'stamp_ns': e['stamp_ns'], 'arm': e['arm'],
                        'base': e['base'], 'gripper': e['gripper']})
    ticks: Dict[int, Dict] = {}
    for kind, store in (('arm', r.arm), ('base', r.base), ('gripper', r.gripper)):
        for e in store:
            entry = ticks.setdefault(e['t_ns'], {'tick_ns': e['t_ns'], 'arm': None,
                                                 'base': None, 'gripper': None, 'count': 0})
            values = [float(v) for v in e['values']]
            entry[kind] = values[0] if kind == 'gripper' and values else values
            if kind == 'arm':
                entry['count'] += 1
    commands = [ticks[t] for t in sorted(ticks)]
    return {'tokens': tokens, 'targets': targets, 'commands': commands}


# -- comparison ----------------------------------------------------------------------------

def _s(ns: Optional[int]) -> str:
    return 'none' if ns is None else f'{ns / NS:.3f} s'


def _close(a, b, tol: float) -> bool:
    return abs(float(a) - float(b)) <= tol


def compare(expected: Dict, found: Dict, tolerance: float = TOLERANCE) -> List[str]:
    """
    Return one readable line per difference (empty: identical within ``tolerance``).

    Tokens are matched by the source (camera) stamp they carry, commands by their control
    tick's sim time, targets by their stamp; each line names the frame or tick, the
    dimension, the expected and the found value.
    """
    out: List[str] = []
    out += _compare_tokens(expected.get('tokens', []), found.get('tokens', []))
    out += _compare_targets(expected.get('targets', []), found.get('targets', []), tolerance)
    out += _compare_commands(expected.get('commands', []), found.get('commands', []),
                             tolerance)
    return out


def _by_key(entries: List[Dict], key: str) -> Dict:
    """Index entries by ``key``; repeated keys get (key, n) for their n-th occurrence."""
    out, seen = {}, {}
    for e in entries:
        k = e[key]
        n = seen[k] = seen.get(k, -1) + 1
        out[(k, n)] = e
    return out


def _compare_tokens(expected: List[Dict], found: List[Dict]) -> List[str]:
    out = []
    exp, got = _by_key(expected, 'stamp_ns'), _by_key(found, 'stamp_ns')
    for key in sorted(set(exp) | set(got), key=lambda k: (k[0] or 0, k[1])):
        e, f = exp.get(key), got.get(key)
        where = f'tokens for frame stamped {_s(key[0])}'
        if f is None:
            out.append(f'{where} (tick {_s(e["tick_ns"])}): missing; expected {e["tokens"]}')
            continue
        if e is None:
            out.append(f'{where} (tick {_s(f["tick_ns"])}): unexpected {f["tokens"]}')
            continue
        if e['tick_ns'] != f['tick_ns']:
            out.append(f'{where}: produced at tick {_s(f["tick_ns"])}, expected at '
                       f'{_s(e["tick_ns"])}')
        for d, (a, b) in enumerate(zip(e['tokens'], f['tokens'])):
            if a != b:
                name = DIMENSION_NAMES[d] if d < len(DIMENSION_NAMES) else str(d)
                out.append(f'{where} (tick {_s(f["tick_ns"])}): dim {d} {name}: expected '
                           f'{a}, found {b}')
        if len(e['tokens']) != len(f['tokens']):
            out.append(f'{where}: expected {len(e["tokens"])} tokens, found '
                       f'{len(f["tokens"])}')
    return out


def _compare_vectors(where: str, names: Sequence[str], expected, found,
                     tolerance: float) -> List[str]:
    if expected is None or found is None:
        if expected is None and found is None:
            return []
        return [f'{where}: expected {expected}, found {found}']
    e = [expected] if not isinstance(expected, list) else expected
    f = [found] if not isinstance(found, list) else found
    if len(e) != len(f):
        return [f'{where}: expected {len(e)} values {e}, found {len(f)} {f}']
    out = []
    for i, (a, b) in enumerate(zip(e, f)):
        if not _close(a, b, tolerance):
            out.append(f'{where} {names[i]}: expected {a:.9g}, found {b:.9g} '
                       f'(|diff| {abs(a - b):.3g} > {tolerance:g})')
    return out


def _compare_targets(expected: List[Dict], found: List[Dict], tolerance: float) -> List[str]:
    out = []
    exp, got = _by_key(expected, 'stamp_ns'), _by_key(found, 'stamp_ns')
    for key in sorted(set(exp) | set(got), key=lambda k: (k[0] or 0, k[1])):
        e, f = exp.get(key), got.get(key)
        where = f'target for frame stamped {_s(key[0])}'
        if f is None or e is None:
            out.append(f'{where}: {"missing" if f is None else "unexpected"}')
            continue
        out += _compare_vectors(where, ARM_JOINTS, e['arm'], f['arm'], tolerance)
        out += _compare_vectors(where, DIMENSION_NAMES[7:10], e['base'], f['base'],
                                tolerance)
        out += _compare_vectors(where, ['gripper'], e['gripper'], f['gripper'], tolerance)
    return out


def _compare_commands(expected: List[Dict], found: List[Dict], tolerance: float) -> List[str]:
    out = []
    exp = {e['tick_ns']: e for e in expected}
    got = {f['tick_ns']: f for f in found}
    for tick in sorted(set(exp) | set(got)):
        e, f = exp.get(tick), got.get(tick)
        where = f'command at tick {_s(tick)}'
        if f is None or e is None:
            out.append(f'{where}: {"missing" if f is None else "unexpected"} '
                       f'(arm {(e or f)["arm"]})')
            continue
        if f.get('count', 1) != e.get('count', 1):
            out.append(f'{where}: {f.get("count")} arm commands in this tick, expected '
                       f'{e.get("count")}')
        out += _compare_vectors(f'{where} arm', ARM_JOINTS, e['arm'], f['arm'], tolerance)
        out += _compare_vectors(f'{where} cmd_vel', DIMENSION_NAMES[7:10], e['base'],
                                f['base'], tolerance)
        out += _compare_vectors(f'{where} gripper', ['gripper'], e['gripper'], f['gripper'],
                                tolerance)
    return out


def report(case_name: str, differences: List[str], limit: int = 40,
           notes: Sequence[str] = ()) -> str:
    """Return a readable summary of the differences (the first ``limit`` in full)."""
    if not differences:
        return f'golden replay {case_name!r}: identical'
    kinds: Dict[str, int] = {}
    for line in differences:
        kind = line.split(' ', 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    lines = [f'golden replay {case_name!r}: {len(differences)} differences ('
             + ', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) + ')']
    lines += [f'  note: {n}' for n in notes]
    lines += ['  ' + d for d in differences[:limit]]
    if len(differences) > limit:
        lines.append(f'  ... and {len(differences) - limit} more')
    return '\n'.join(lines)


# -- cases ---------------------------------------------------------------------------------

def load_case(path: str) -> Dict:
    """Read a case file."""
    try:
        with open(path, encoding='utf-8') as stream:
            case = json.load(stream)
    except (OSError, ValueError) as exc:
        raise GoldenError(f'cannot read case {path}: {exc}') from exc
    if case.get('format') != FORMAT:
        raise GoldenError(f'{path}: format {case.get("format")!r}, expected {FORMAT}')
    return case


def _resolve(path: str, case_path: str) -> str:
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(case_path)), path))


class Prepared:
    """The files one case runs with; temporary ones are removed by ``cleanup``."""

    def __init__(self, case: Dict, case_path: str, bag: str = ''):
        """Resolve the case's model, action space, parameters and bag (writing temporaries)."""
        import yaml
        self.tmp = tempfile.mkdtemp(prefix='vla_golden_')
        space = case.get('action_space', 'shipped')
        self.action_space_file = {
            'shipped': default_action_space_file(),
            'absolute': share_file('config', 'action_space_absolute.yaml'),
        }.get(space) or _resolve(space, case_path)
        model = case.get('model', 'shipped')
        if model == 'test_model':
            self.model_dir = known_model.write(os.path.join(self.tmp, 'test_model'),
                                               ActionSpace.from_yaml(self.action_space_file))
        else:
            self.model_dir = shipped_model_dir() if model == 'shipped' else _resolve(
                model, case_path)
        policy = os.path.join(self.model_dir, 'policy.onnx')
        if not os.path.isfile(policy):
            self.cleanup()
            raise GoldenError(f'model {policy} does not exist (case model {model!r}); '
                              'the shipped model is exported by `make models`')
        params = case.get('params_file', '')
        self.params_file = _resolve(params, case_path) if params else default_params_file()
        # Every node that reads an action space gets the case's.
        with open(self.params_file, encoding='utf-8') as stream:
            data = yaml.safe_load(stream) or {}
        for name in ('inference_node', 'detokenizer_node'):
            section = data.setdefault(f'/**/{name}', {}).setdefault('ros__parameters', {})
            section['action_space_file'] = self.action_space_file
        self.params_file = os.path.join(self.tmp, 'params.yaml')
        with open(self.params_file, 'w', encoding='utf-8') as stream:
            yaml.safe_dump(data, stream)
        self.overrides: Dict[str, Dict] = {k: dict(v) for k, v in REPLAY_PARAMETERS.items()}
        for name, values in (case.get('parameters') or {}).items():
            self.overrides.setdefault(name, {}).update(values)
        self.overrides.setdefault('inference_node', {})['model_file_path'] = policy
        self.model = _model_identity(self.model_dir)

        def period(node: str, key: str, default: float) -> int:
            values = {**node_params(self.params_file, node), **self.overrides.get(node, {})}
            return int(round(NS / float(values.get(key, default))))
        self.control_period_ns = period('interpolation_node', 'control_frequency', 20.0)
        self.inference_period_ns = period('inference_node', 'inference_frequency', 5.0)
        source = bag or case.get('bag', 'generated')
        if source == 'generated':
            self.bag = os.path.join(self.tmp, 'bag')
            generate_bag(self.bag)
        else:
            self.bag = _resolve(source, case_path)
        if not os.path.exists(self.bag):
            self.cleanup()
            raise GoldenError(f'bag {self.bag} does not exist')
        self.bag_source = source

    def cleanup(self):
        """Remove the temporary folder (generated bag, test model, params)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def _model_identity(model_dir: str) -> Dict:
    out = {'policy_sha256': file_sha256(os.path.join(model_dir, 'policy.onnx'))}
    manifest = os.path.join(model_dir, 'manifest.json')
    if os.path.isfile(manifest):
        with open(manifest, encoding='utf-8') as stream:
            data = json.load(stream)
        out['weights_sha256'] = data.get('weights_sha256', '')
        out['config'] = data.get('config', '')
    return out


def run_case(case_path: str, bag: str = '', timeout: float = 60.0) -> Dict:
    """Replay one case's bag with its model and parameters; return the results."""
    case = load_case(case_path) if os.path.exists(case_path) else {'format': FORMAT}
    prepared = Prepared(case, case_path, bag)
    try:
        if prepared.inference_period_ns % prepared.control_period_ns:
            raise GoldenError('the inference period must be a whole number of control periods')
        result = replay(prepared.bag, prepared.params_file, prepared.overrides,
                        float(case.get('tail_s', 0.5)), case.get('topics', INPUT_TOPICS),
                        timeout, prepared.control_period_ns, prepared.inference_period_ns,
                        case.get('remap'))
    finally:
        prepared.cleanup()
    result['model'] = prepared.model
    result['bag_source'] = prepared.bag_source
    return result


def check_case(case_path: str, timeout: float = 60.0, tolerance: float = TOLERANCE
               ) -> Dict:
    """
    Replay a case and compare with its goldens.

    Returns ``differences`` (readable lines), ``notes`` (model or bag not the ones the
    goldens were made with), ``report`` and the run's ``result``.
    """
    case = load_case(case_path)
    if 'goldens' not in case:
        raise GoldenError(f'{case_path} has no goldens yet: run `vla-ros golden --case '
                          f'{case_path} --regenerate`')
    result = run_case(case_path, timeout=timeout)
    golden = case['goldens']
    notes = []
    if golden.get('bag', {}).get('sha256') != result['bag']['sha256']:
        notes.append('the input bag differs from the one the goldens were made from '
                     f'({golden.get("bag", {}).get("sha256", "?")[:12]} vs '
                     f'{result["bag"]["sha256"][:12]})')
    if golden.get('model', {}).get('policy_sha256') != result['model']['policy_sha256']:
        notes.append('the model differs from the one the goldens were made with (policy.onnx '
                     f'{golden.get("model", {}).get("policy_sha256", "?")[:12]} vs '
                     f'{result["model"]["policy_sha256"][:12]})')
    differences = compare(golden, result, float(case.get('tolerance', tolerance)))
    name = case.get('name', os.path.basename(case_path))
    return {'differences': differences, 'notes': notes, 'result': result,
            'report': report(name, differences, notes=notes)}


def regenerate(case_path: str, bag: str = '', runs: int = 2, timeout: float = 60.0,
               name: str = '', model: str = '', action_space: str = '',
               remap: Optional[Dict[str, str]] = None, params_file: str = '',
               parameters: Optional[Dict[str, Dict]] = None) -> Dict:
    """
    Replay ``runs`` times; when every run agrees exactly, write the goldens into the case.

    A missing case file is created; ``bag``, ``model``, ``action_space``, ``remap``,
    ``params_file`` (stored relative to the case) fill it in or replace what it says, and
    ``parameters`` ({node: {name: value}}) are added to its per-node overrides.
    """
    if os.path.exists(case_path):
        case = load_case(case_path)
    else:
        case = {'format': FORMAT, 'name': name or os.path.splitext(
            os.path.basename(case_path))[0], 'bag': 'generated', 'model': 'shipped',
            'action_space': 'shipped', 'parameters': {}, 'tail_s': 0.5}
    if bag:
        case['bag'] = os.path.relpath(os.path.abspath(bag), os.path.dirname(
            os.path.abspath(case_path)))
    if model:
        case['model'] = model
    if action_space:
        case['action_space'] = action_space
    if remap:
        case['remap'] = dict(remap)
    for node, values in (parameters or {}).items():
        case.setdefault('parameters', {}).setdefault(node, {}).update(values)
    if params_file:
        case['params_file'] = os.path.relpath(os.path.abspath(params_file), os.path.dirname(
            os.path.abspath(case_path)))
    case.pop('goldens', None)
    os.makedirs(os.path.dirname(os.path.abspath(case_path)) or '.', exist_ok=True)
    tmp_case = case_path + '.tmp'
    with open(tmp_case, 'w', encoding='utf-8') as stream:
        json.dump(case, stream)
    try:
        results = [run_case(tmp_case, timeout=timeout) for _ in range(runs)]
    finally:
        os.remove(tmp_case)
    for i, other in enumerate(results[1:], start=2):
        diff = compare(results[0], other, tolerance=0.0)
        if diff:
            raise GoldenError(report(f'{case["name"]} run 1 vs run {i}', diff) +
                              '\nthe replay did not repeat exactly: goldens not written '
                              '(look for an input whose order of arrival decides the '
                              'result; docs/bags.md, "Note on rt1_nano.json")')
    first = results[0]
    if not first['tokens'] or not first['commands']:
        lag = first['bag'].get('camera_lag_s')
        hint = '' if lag is None or abs(lag) < 1.0 else (
            f'; camera frames are stamped {lag:.3f} s before their bag time (median): the '
            'replay clock is the bag time, so stamps and bag times must share a clock '
            '(record a simulation with `vla-ros record --use-sim-time`, or `ros2 bag record '
            '--use-sim-time`)')
        raise GoldenError(f'the replay produced {len(first["tokens"])} token messages and '
                          f'{len(first["commands"])} commands: nothing to compare against'
                          + hint)
    case['goldens'] = {
        'model': first['model'], 'bag': first['bag'], 'created_by':
        f'vla-ros golden --case {os.path.relpath(case_path)} --regenerate',
        'runs_agreeing': runs, 'tokens': first['tokens'], 'targets': first['targets'],
        'commands': first['commands']}
    with open(case_path, 'w', encoding='utf-8') as stream:
        stream.write(dumps(case))
    return case


def dumps(case: Dict) -> str:
    """Return a case as JSON text with one golden entry per line (readable git diffs)."""
    def one(value) -> str:
        return json.dumps(value, separators=(', ', ': '))
    lines = ['{']
    items = list(case.items())
    for i, (key, value) in enumerate(items):
        comma = ',' if i < len(items) - 1 else ''
        if key != 'goldens':
            lines.append(f' {one(key)}: {one(value)}{comma}')
            continue
        lines.append(f' {one(key)}: {{')
        parts = list(value.items())
        for j, (name, entries) in enumerate(parts):
            comma2 = ',' if j < len(parts) - 1 else ''
            if not isinstance(entries, list):
                lines.append(f'  {one(name)}: {one(entries)}{comma2}')
                continue
            lines.append(f'  {one(name)}: [')
            lines += [f'   {one(e)}' + (',' if n < len(entries) - 1 else '')
                      for n, e in enumerate(entries)]
            lines.append(f'  ]{comma2}')
        lines.append(f' }}{comma}')
    lines.append('}')
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] = None) -> int:
    """Command line of ``vla-ros golden``."""
    parser = argparse.ArgumentParser(prog='vla-ros golden', description=__doc__.split(
        '\n')[1])
    parser.add_argument('--case', help='case file (JSON); created by --regenerate')
    parser.add_argument('--regenerate', action='store_true',
                        help='replay (twice) and write the goldens into the case')
    parser.add_argument('--bag', default='', help='with --regenerate: the bag to replay '
                        '(stored relative to the case file); default: the generated bag')
    parser.add_argument('--model', default='', help="with --regenerate: 'shipped', "
                        "'test_model' or a model folder")
    parser.add_argument('--action-space', default='', help="with --regenerate: 'shipped', "
                        "'absolute' or a YAML file")
    parser.add_argument('--remap', nargs='+', default=[], metavar='FROM:=TO',
                        help='with --regenerate: rename bag topics, e.g. '
                        '/head_camera/color/image_raw:=camera/image_raw')
    parser.add_argument('--params-file', default='', help='with --regenerate: parameters file '
                        'of the nodes (default: the shipped config/vla_ros.yaml)')
    parser.add_argument('--param', nargs='+', default=[], metavar='NODE.NAME=VALUE',
                        help='with --regenerate: a parameter override stored in the case, '
                        'e.g. interpolation_node.interpolation=min_jerk (value read as YAML)')
    parser.add_argument('--runs', type=int, default=2, help='runs that must agree before '
                        'goldens are written (default 2)')
    parser.add_argument('--write-bag', default='', metavar='FOLDER',
                        help='write the generated input bag to FOLDER and exit')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds any single step may take')
    args = parser.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ['RMW_FASTRTPS_PUBLICATION_MODE'] = 'SYNCHRONOUS'  # see tools/lockstep.py
    try:
        if args.write_bag:
            counts = generate_bag(args.write_bag)
            print(f'wrote {args.write_bag}: {json.dumps(counts, sort_keys=True)}')
            return 0
        if not args.case:
            parser.error('--case is required (or --write-bag)')
        if args.regenerate:
            remap = {}
            for rule in args.remap:
                if ':=' not in rule:
                    parser.error(f'--remap takes FROM:=TO, found {rule!r}')
                src, dst = rule.split(':=', 1)
                remap[src] = dst
            parameters: Dict[str, Dict] = {}
            for rule in args.param:
                key, sep, value = rule.partition('=')
                node, dot, name = key.partition('.')
                if not (sep and dot and node and name):
                    parser.error(f'--param takes NODE.NAME=VALUE, found {rule!r}')
                import yaml
                parameters.setdefault(node, {})[name] = yaml.safe_load(value)
            case = regenerate(args.case, args.bag, args.runs, args.timeout,
                              model=args.model, action_space=args.action_space, remap=remap,
                              params_file=args.params_file, parameters=parameters)
            g = case['goldens']
            print(f'wrote {args.case}: {len(g["tokens"])} token frames, {len(g["targets"])} '
                  f'targets, {len(g["commands"])} control ticks; {args.runs} runs agreed')
            return 0
        outcome = check_case(args.case, args.timeout)
    except GoldenError as exc:
        print(f'vla-ros golden: {exc}', file=sys.stderr)
        return 2
    print(outcome['report'])
    return 1 if outcome['differences'] else 0


if __name__ == '__main__':
    sys.exit(main())
