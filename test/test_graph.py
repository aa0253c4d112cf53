"""
The four nodes as real processes on real DDS, driven by a real harness node.

The policy is the known-function test model (vla_ros.tools.known_model), so the commands
the controllers receive can be predicted exactly from the image colour and instruction.
"""

import signal
import time

from graph_harness import Harness, print_logs
import numpy as np
import pytest
from vla_ros.core.action_space import ActionTokenizer
from vla_ros.graph import pipeline_nodes
from vla_ros.tools.known_model import expected_tokens
from vla_ros.tools.up import ProcessGroup

TIMEOUT = 0.5
PERIOD = 0.05
DECEL = 2.0


def _start(params_file, model_dir, **interp):
    overrides = {'inference_node': {'model_file_path': f'{model_dir}/policy.onnx'},
                 'interpolation_node': dict(command_timeout=TIMEOUT, start_enabled=True,
                                            **interp)}
    group = ProcessGroup(params_file, quiet=True)
    group.start_all(pipeline_nodes(overrides=overrides))
    return group


@pytest.fixture
def graph(ros, params_file, test_model_dir):
    harness = Harness()
    group = _start(params_file, test_model_dir)
    yield harness, group
    harness.close()
    group.stop()
    print_logs(group)


def _expected(action_space, test_model_dir, rgb, instruction):
    from vla_ros.runtime.text_encoder import TextEncoder
    enc = TextEncoder(f'{test_model_dir}/text_encoder.onnx')
    emb, mask = enc.encode(instruction)
    image = np.empty((300, 300, 3), np.uint8)
    image[...] = rgb
    return ActionTokenizer(action_space).detokenize(expected_tokens(image, emb, mask))


def _flowing(harness, since, timeout=30.0):
    return harness.wait_for(lambda: len(harness.since(harness.base, since)) > 10, timeout)


def test_commands_match_the_known_model(graph, action_space, test_model_dir):
    harness, group = graph
    rgb, text = (150, 190, 110), 'close the gripper'
    harness.set_color(*rgb)
    harness.instruct(text)
    expected = _expected(action_space, test_model_dir, rgb, text)
    assert expected[10] == 1.0 and expected[9] == 0.0  # closed, inside the deadband

    def converged():
        arm, base, grip = (harness.latest(s)
                           for s in (harness.arm, harness.base, harness.gripper))
        return (arm is not None and base is not None and grip is not None
                and np.allclose(arm[1], expected[:7], atol=1e-6)
                and np.allclose(base[1], expected[7:10], atol=1e-6) and grip[1] == 1.0)

    assert harness.wait_for(converged, 40.0), (
        group.failed(), harness.latest(harness.arm), harness.latest(harness.base), expected)
    # (The command rate and its jitter are measured by `vla-ros bench pipeline`, not here.)
    # A new instruction changes the gripper without restarting anything.
    harness.instruct('open the gripper')
    assert harness.wait_for(lambda: harness.latest(harness.gripper)[1] == 0.0, 5.0)
    assert group.failed() is None


def test_killing_inference_stops_base_and_holds_arm(graph):
    harness, group = graph
    harness.set_color(150, 230, 110)  # vx ≈ 0.40 m/s
    harness.instruct('drive to the marker')
    assert harness.wait_for(
        lambda: (harness.latest(harness.base) or (0, np.zeros(3)))[1][0] > 0.35, 40.0)
    vx = harness.latest(harness.base)[1][0]
    group.kill('inference_node', signal.SIGKILL)
    t_kill = time.monotonic()
    assert harness.wait_for(lambda: harness.latest(harness.base)[1][0] == 0.0
                            and harness.latest(harness.base)[0] > t_kill, 5.0)
    # How long the stop takes is a sim-time property, checked exactly in test_fuzz.py (kill
    # -9 of each node in lock step); here: the base ramps down, never up, within the
    # deceleration limit per command, and stops.
    assert vx > 0.35
    ramp = [v[0] for t, v in harness.since(harness.base, t_kill)]
    assert np.all(np.diff(ramp) <= 1e-12)  # never speeds up again
    # At most DECEL x PERIOD per control tick; the publish stamps count the ticks between
    # two received commands (a command the harness did not receive in time still counts).
    with harness.lock:
        stamped = list(harness.base_stamped)
    for (s0, v0), (s1, v1) in zip(stamped, stamped[1:]):
        ticks = max(1, round((s1 - s0) / PERIOD))
        assert abs(v1[0] - v0[0]) <= DECEL * PERIOD * ticks + 1e-9, (s0, s1, v0, v1)
    t_hold = time.monotonic()
    time.sleep(0.5)
    held = [v for t, v in harness.since(harness.arm, t_hold)]
    assert len(held) >= 5 and all(np.array_equal(h, held[0]) for h in held)
    assert all(np.all(v == 0) for t, v in harness.since(harness.base, t_hold))


def test_estop_stops_within_one_period_and_latches(graph):
    harness, group = graph
    harness.set_color(150, 230, 110)
    harness.instruct('drive to the marker')
    assert harness.wait_for(
        lambda: (harness.latest(harness.base) or (0, np.zeros(3)))[1][0] > 0.35, 40.0)
    from std_msgs.msg import Bool
    t0 = time.monotonic()
    harness.estop_pub.publish(Bool(data=True))
    assert harness.wait_for(lambda: harness.latest(harness.base)[1][0] == 0.0, 2.0)
    # Counted in commands, not seconds: the e-stop acts on the next tick, so at most one
    # moving command (the one already in flight) comes after it.
    after = [v for t, v in harness.since(harness.base, t0)]
    first_zero = next(i for i, v in enumerate(after) if np.all(v == 0.0))
    assert first_zero <= 1, after[:5]
    # Latched: the policy keeps producing targets, nothing moves, enable is refused.
    t1 = time.monotonic()
    time.sleep(1.0)
    after = harness.since(harness.base, t1)
    # (a loaded 2-core machine can delay ticks; what matters is that every one is zero)
    assert len(after) >= 5 and all(np.all(v == 0) for t, v in after)
    arms = [v for t, v in harness.since(harness.arm, t1)]
    assert all(np.array_equal(a, arms[0]) for a in arms)
    assert harness.call_enable(True).success is False
    # Clearing the e-stop alone does not move the robot; enabling does.
    harness.estop_pub.publish(Bool(data=False))
    time.sleep(0.5)
    assert harness.latest(harness.base)[1][0] == 0.0
    assert harness.call_enable(True).success is True
    assert harness.wait_for(lambda: harness.latest(harness.base)[1][0] > 0.1, 5.0)


def test_garbage_images_do_not_kill_camera_node(graph):
    from sensor_msgs.msg import Image
    harness, group = graph
    harness.camera_enabled = False
    garbage = [
        Image(height=300, width=300, encoding='rgb8', step=900, data=b'\x01' * 100),
        Image(height=10, width=10, encoding='yuv-weird', step=20, data=b'\x00' * 200),
        Image(height=0, width=0, encoding='rgb8', step=0, data=b''),
        Image(height=10, width=10, encoding='rgb8', step=5, data=b'\x00' * 300),
    ]
    for _ in range(5):
        for msg in garbage:
            harness.image_pub.publish(msg)
            time.sleep(0.01)
    time.sleep(0.5)
    t0 = time.monotonic()
    assert harness.since(harness.vla_images, t0) == []
    assert group.procs['camera_node'].poll() is None
    harness.set_color(10, 20, 30)
    harness.camera_enabled = True
    assert harness.wait_for(lambda: len(harness.since(harness.vla_images, t0)) >= 3, 10.0)
    img = harness.since(harness.vla_images, t0)[-1][1]
    assert (img.encoding, img.height, img.width) == ('rgb8', 300, 300)
    assert bytes(img.data[:3]) == bytes([10, 20, 30])
    assert group.procs['camera_node'].poll() is None


def test_stale_camera_stops_inference_and_says_why(graph):
    harness, group = graph
    harness.set_color(100, 128, 128)
    harness.instruct('pick up the red block')
    assert harness.wait_for(lambda: len(harness.tokens) >= 3, 40.0)
    harness.camera_enabled = False
    t_off = time.monotonic()
    assert harness.wait_for(
        lambda: 'old' in getattr(harness.diagnostics.get('inference_node'), 'message', ''),
        10.0), harness.diagnostics.get('inference_node')
    # Counted in policy ticks: the newest frame is used while younger than max_image_age
    # (0.5 s = 2.5 periods of 0.2 s), so at most 3 more token messages, plus one in flight.
    assert len(harness.since(harness.tokens, t_off)) <= 4, harness.since(harness.tokens, t_off)
    assert harness.wait_for(
        lambda: 'old' in getattr(harness.diagnostics.get('inference_node'), 'message', ''),
        3.0), harness.diagnostics.get('inference_node')
    status = harness.diagnostics['inference_node']
    assert status.level == status.WARN
    values = {kv.key: kv.value for kv in status.values}
    assert int(values['skipped']) > 0 and int(values['published']) >= 3
    # and the base, with no new targets, is brought to rest by the watchdog
    assert harness.wait_for(lambda: np.all(harness.latest(harness.base)[1] == 0.0), 3.0)


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
    expected = ActionTokenizer(action_space).detokenize(policy.predict(image, text).tokens)
    harness = Harness()
    group = _start(params_file, rt1_tiny_dir)
    try:
        harness.set_color(*rgb)
        harness.instruct(text)
        assert harness.wait_for(lambda: len(harness.tokens) >= 2, 60.0), group.failed()
        tokens = np.frombuffer(harness.latest(harness.tokens)[1], np.uint8)
        assert np.array_equal(tokens, policy.predict(image, text).tokens)

        def converged():
            arm, base = harness.latest(harness.arm), harness.latest(harness.base)
            return (arm is not None and base is not None
                    and np.allclose(arm[1], expected[:7], atol=1e-6)
                    and np.allclose(base[1], expected[7:10], atol=1e-6))
        assert harness.wait_for(converged, 30.0), (harness.latest(harness.arm), expected)
        assert group.failed() is None
    finally:
        harness.close()
        group.stop()
