"""
The four nodes as real processes on real DDS, on a sim clock that only the test moves.

The graph runs in lock step (``graph_harness.LockstepRig``): each ``tick`` is one 20 Hz
control period, and everything it causes (frame → tokens → target → command) has happened
when it returns. So the tests count control ticks and policy periods, never wall-clock
seconds, and predict exact outputs: the policy is the known-function test model
(vla_ros.testing.known_model), whose commands follow from the image colour and instruction.
"""

from graph_harness import LockstepRig
import numpy as np
import pytest
from vla_ros.core.action_space import ActionTokenizer
from vla_ros.testing.known_model import expected_tokens
from vla_ros.testing.lockstep import NS

TIMEOUT = 0.5          # interpolation_node command_timeout (s)
PERIOD = 0.05          # control period (s)
POLICY = 4             # control ticks per policy period (5 Hz)
DECEL = 2.0            # base deceleration limit, x (m/s^2)
MAX_IMAGE_AGE = 0.5    # inference_node (s)
START_NS = 100 * NS
DRIVE = (150, 230, 110)  # colour whose known-model base vx is about 0.40 m/s


def _rig(params_file, model_dir, **inference) -> LockstepRig:
    rig = LockstepRig(params_file, {
        'inference_node': dict({'model_file_path': f'{model_dir}/policy.onnx'}, **inference),
        # A long clock timeout: sim time stands still while the test calls services.
        'interpolation_node': {'command_timeout': TIMEOUT, 'start_enabled': True,
                               'clock_timeout': 10.0}})
    rig.start(START_NS)
    return rig


@pytest.fixture
def graph(ros, params_file, test_model_dir):
    rig = _rig(params_file, test_model_dir)
    try:
        yield rig
    finally:
        rig.close()


def _expected(action_space, test_model_dir, rgb, instruction):
    """Return the known model's tokens for a uniform frame, and their values."""
    from vla_ros.runtime.text_encoder import TextEncoder
    enc = TextEncoder(f'{test_model_dir}/text_encoder.onnx')
    emb, mask = enc.encode(instruction)
    image = np.empty((300, 300, 3), np.uint8)
    image[...] = rgb
    tokens = expected_tokens(image, emb, mask)
    return [int(v) for v in tokens], ActionTokenizer(action_space).detokenize(tokens)


def _last(entries):
    return entries[-1]['values'] if entries else None


def _driving(rig) -> float:
    """Drive forward until the base command is steady at full speed; return it."""
    rig.set_color(*DRIVE)
    rig.instruct('drive to the marker')
    base = rig.records.base

    def steady():
        return (len(base) >= 3 and base[-1]['values'][0] > 0.35
                and all(np.array_equal(e['values'], base[-1]['values']) for e in base[-3:]))
    assert rig.run_until(steady, 100) < 100, rig.step.logs()
    return float(_last(base)[0])


def test_commands_match_the_known_model(graph, action_space, test_model_dir):
    rig, records = graph, graph.records
    rgb, text = (150, 190, 110), 'close the gripper'
    rig.set_color(*rgb)
    rig.instruct(text)
    tokens, expected = _expected(action_space, test_model_dir, rgb, text)
    assert expected[10] == 1.0 and expected[9] == 0.0  # closed, inside the deadband

    def converged():
        arm, base, grip = (_last(s) for s in (records.arm, records.base, records.gripper))
        return (arm is not None and base is not None and grip is not None
                and np.allclose(arm, expected[:7], atol=1e-6)
                and np.allclose(base, expected[7:10], atol=1e-6) and grip[0] == 1.0)
    # Within 4 s of sim time (the arm's velocity and acceleration limits set the pace).
    ticks = rig.run_until(converged, 80)
    assert ticks < 80, (_last(records.arm), _last(records.base), expected, rig.step.logs())
    # Every token is the known model's answer for the frame it carries the stamp of.
    assert records.tokens and all(e['tokens'] == tokens for e in records.tokens)
    # A new instruction changes the gripper without restarting anything: its tokens come
    # at the next policy tick, the command at the control tick after it.
    rig.instruct('open the gripper')
    t0 = rig.step.now_ns
    ticks = rig.run_until(lambda: _last(records.gripper)[0] == 0.0, 3 * POLICY)
    assert ticks <= POLICY + 1, ticks
    opened = next(e for e in records.gripper if e['t_ns'] > t0 and e['values'][0] == 0.0)
    tokens = [e for e in records.tokens if e['t_ns'] > t0]
    assert tokens and opened['t_ns'] == tokens[0]['t_ns'] + int(PERIOD * NS)
    assert rig.step.group.failed() is None


def test_killing_inference_stops_base_and_holds_arm(graph):
    rig, records = graph, graph.records
    vx = _driving(rig)
    last_target = records.targets[-1]
    rig.step.kill('inference_node')
    killed = rig.step.now_ns
    # The last target is followed until its source stamp is TIMEOUT old; then the base
    # ramps down at the deceleration limit, one step per control tick, and stops.
    stop_ticks = int(np.ceil(vx / (DECEL * PERIOD))) + 1
    deadline = last_target['stamp_ns'] + int((TIMEOUT + (stop_ticks + 1) * PERIOD) * NS)
    rig.run_until(lambda: rig.step.now_ns >= deadline, 200)
    after = [e for e in records.base if e['t_ns'] > killed]
    vxs = [e['values'][0] for e in after]
    assert vxs[-1] == 0.0 and all(np.all(e['values'] == 0.0) for e in after if
                                  e['t_ns'] >= deadline - int(PERIOD * NS)), vxs
    assert np.all(np.diff(vxs) <= 1e-12)  # never speeds up again
    assert np.all(np.diff(vxs) >= -DECEL * PERIOD - 1e-9)  # ramps within the limit
    # Full speed while the last target is fresh, ramping from the tick after it expired.
    expiry = last_target['stamp_ns'] + int(TIMEOUT * NS)
    assert all(e['values'][0] == vx for e in after if e['t_ns'] < expiry), (vxs, expiry)
    assert all(e['values'][0] < vx for e in after if e['t_ns'] > expiry + int(PERIOD * NS))
    # One command per control tick throughout, and the arm holds where it stopped.
    assert [e['t_ns'] for e in after] == sorted({e['t_ns'] for e in after})
    for _ in range(10):
        rig.tick()
    held = [e['values'] for e in records.arm[-10:]]
    assert all(np.array_equal(h, held[0]) for h in held)
    assert all(np.all(e['values'] == 0.0) for e in records.base[-10:])


def test_estop_stops_on_the_next_tick_and_latches(graph):
    rig, records = graph, graph.records
    _driving(rig)
    rig.estop(True)
    t0 = rig.step.now_ns
    rig.tick()
    # The command of the very next control tick is zero.
    first = next(e for e in records.base if e['t_ns'] > t0)
    assert np.all(first['values'] == 0.0) and first['t_ns'] == t0 + int(PERIOD * NS), first
    # Latched: the policy keeps producing targets for 1 s of sim time, nothing moves, and
    # enabling is refused.
    tokens = len(records.tokens)
    for _ in range(20):
        rig.tick()
    assert len(records.tokens) >= tokens + 4
    latched = [e for e in records.base if e['t_ns'] > t0]
    assert len(latched) == 21 and all(np.all(e['values'] == 0.0) for e in latched)
    arms = [e['values'] for e in records.arm if e['t_ns'] > t0]
    assert all(np.array_equal(a, arms[0]) for a in arms)
    assert rig.enable(True).success is False
    # Clearing the e-stop alone does not move the robot; enabling does, within one policy
    # period plus the ramp.
    rig.estop(False)
    for _ in range(10):
        rig.tick()
    assert np.all(_last(records.base) == 0.0)
    assert rig.enable(True).success is True
    assert rig.run_until(lambda: _last(records.base)[0] > 0.1, 3 * POLICY) <= 2 * POLICY


def test_garbage_images_do_not_kill_camera_node(graph):
    from sensor_msgs.msg import Image
    rig, records = graph, graph.records
    rig.camera_on = False
    garbage = [
        Image(height=300, width=300, encoding='rgb8', step=900, data=b'\x01' * 100),
        Image(height=10, width=10, encoding='yuv-weird', step=20, data=b'\x00' * 200),
        Image(height=0, width=0, encoding='rgb8', step=0, data=b''),
        Image(height=10, width=10, encoding='rgb8', step=5, data=b'\x00' * 300),
    ]
    rig.step.settle(1)
    images = len(records.images)
    for _ in range(5):
        for msg in garbage:
            rig.step.publish('camera/image_raw', msg)
        rig.tick()
    rig.step.settle(1)
    assert len(records.images) == images  # nothing came out of camera_node
    assert rig.step.group.procs['camera_node'].poll() is None
    _, counters = rig.report('camera_node')
    assert int(counters.get('dropped_malformed', 0)) == 20, counters
    # A valid frame afterwards is converted at once.
    rig.camera_on = True
    rig.set_color(10, 20, 30)
    t0 = rig.step.now_ns
    assert rig.run_until(lambda: len(records.images) > images, 3) <= 3
    assert records.images[-1]['stamp_ns'] >= t0
    assert rig.step.group.procs['camera_node'].poll() is None


def test_stale_camera_stops_inference_and_says_why(graph):
    rig, records = graph, graph.records
    rig.set_color(100, 128, 128)
    rig.instruct('pick up the red block')
    assert rig.run_until(lambda: len(records.tokens) >= 3, 100) < 100, rig.step.logs()
    rig.camera_on = False
    for _ in range(20):
        rig.tick()
    # Read after the ticks: on a loaded machine the last frame sent may still be on its way
    # through camera_node when the camera stops; 20 ticks later it has long arrived.
    last_frame = records.images[-1]['stamp_ns']
    # The newest frame is used while it is at most MAX_IMAGE_AGE old: the tokens after the
    # camera stopped all carry that frame's stamp and come at policy ticks within the age.
    late = [e for e in records.tokens if e['t_ns'] > last_frame]
    assert late and all(e['stamp_ns'] == last_frame for e in late), late
    assert all(e['t_ns'] - last_frame <= MAX_IMAGE_AGE * NS for e in late), late
    assert len(late) == int(MAX_IMAGE_AGE / (POLICY * PERIOD) + 1e-9) or \
        len(late) == int(MAX_IMAGE_AGE / (POLICY * PERIOD) + 1e-9) + 1, late
    message, values = rig.report('inference_node')
    assert 'old' in message, message
    assert int(values['skipped']) > 0 and int(values['published']) >= 3
    # With no new targets, the watchdog has brought the base to rest.
    assert np.all(_last(records.base) == 0.0)


def test_grounded_instructions_reach_the_policy_and_refused_ones_stop_it(
        ros, params_file, test_model_dir, action_space):
    from vla_ros.runtime.grounding import grounding_from_parameter
    from vla_ros.runtime.text_encoder import TextEncoder
    said = 'go to the cyan marker please'
    grounded = grounding_from_parameter('sim_tasks', TextEncoder(
        f'{test_model_dir}/text_encoder.onnx').encode).ground(said).text
    assert grounded == 'go to the cyan marker'
    tokens, _ = _expected(action_space, test_model_dir, DRIVE, grounded)
    rig = _rig(params_file, test_model_dir, instruction_grounding='sim_tasks')
    records = rig.records
    try:
        rig.set_color(*DRIVE)
        rig.instruct(said)
        assert rig.run_until(lambda: len(records.tokens) >= 3, 100) < 100, rig.step.logs()
        assert all(e['tokens'] == tokens for e in records.tokens), records.tokens[-1]
        assert rig.run_until(lambda: _last(records.base)[0] > 0.3, 100) < 100
        # Nothing trained is near it, or it names no marker colour ('drive to the marker'
        # drives the graph in the other tests): refused, no more tokens, the base stops.
        for text in ('make me a sandwich', 'drive to the marker'):
            rig.instruct(text)
            refused = rig.step.now_ns
            for _ in range(2 * POLICY):
                rig.tick()
            late = [e for e in records.tokens if e['stamp_ns'] > refused]
            assert late == [], late
        for _ in range(int((TIMEOUT + 0.5 / DECEL) / PERIOD) + 4):
            rig.tick()
        assert np.all(_last(records.base) == 0.0), _last(records.base)
        message, values = rig.report('inference_node')
        assert int(values['refused_instructions']) == 2, values
        assert values['grounded_instruction'] == '' and 'no instruction' in message, message
        # A grounded instruction again: the tokens come back.
        count = len(records.tokens)
        rig.instruct(said)
        assert rig.run_until(lambda: len(records.tokens) > count, 3 * POLICY) < 3 * POLICY
        message, values = rig.report('inference_node')
        assert values['grounded_instruction'] == grounded, values
        assert float(values['grounding_similarity']) > 0.9
        assert rig.step.group.failed() is None
    finally:
        rig.close()


@pytest.fixture(scope='module')
def rt1_tiny_dir(tmp_path_factory):
    """Export the (untrained) RT-1 tiny in the chapter's absolute space."""
    pytest.importorskip('torch')
    from conftest import absolute_action_space_file
    from vla_ros.tools import export
    out = str(tmp_path_factory.mktemp('rt1_tiny'))
    assert export.main(['--config', 'tiny', '--out', out,
                        '--action-space', absolute_action_space_file()]) == 0
    return out


def test_graph_runs_the_exported_rt1_tiny(ros, params_file, rt1_tiny_dir, action_space):
    """The same graph with the real (untrained) RT-1 tiny export and its MiniLM encoder."""
    from vla_ros.runtime.policy import Policy, PolicyFiles
    rgb, text = (90, 140, 60), 'pick up the green block'
    image = np.empty((300, 300, 3), np.uint8)
    image[...] = rgb
    # ONNX Runtime on the CPU is deterministic: the node must command exactly this.
    policy = Policy(PolicyFiles.from_paths(f'{rt1_tiny_dir}/policy.onnx'), action_space)
    tokens = policy.predict(image, text).tokens
    expected = ActionTokenizer(action_space).detokenize(tokens)
    rig = _rig(params_file, rt1_tiny_dir)
    records = rig.records
    try:
        rig.set_color(*rgb)
        rig.instruct(text)
        assert rig.run_until(lambda: len(records.tokens) >= 2, 100) < 100, rig.step.logs()
        assert all(e['tokens'] == [int(v) for v in tokens] for e in records.tokens)

        def converged():
            arm, base = _last(records.arm), _last(records.base)
            return (arm is not None and base is not None
                    and np.allclose(arm, expected[:7], atol=1e-6)
                    and np.allclose(base, expected[7:10], atol=1e-6))
        assert rig.run_until(converged, 100) < 100, (_last(records.arm), expected)
        assert rig.step.group.failed() is None
    finally:
        rig.close()
