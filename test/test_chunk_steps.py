"""
Action chunks through the ROS nodes: k steps per frame, one executed per policy period.

The rules (``core/step_queue.py``) are tested on their own, then in the real node processes
in lock step (``graph_harness.LockstepRig``): the whole pipeline with a chunked
known-function model, and detokenizer_node alone with chunks that come late, are replaced
or arrive out of order.
"""

from graph_harness import LockstepRig
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from vla_ros.conversions import tokens_to_msg
from vla_ros.core.action_space import ActionTokenizer
from vla_ros.core.step_queue import StepQueue
from vla_ros.nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from vla_ros.testing import known_model
from vla_ros.testing.lockstep import NS
from vla_ros_interfaces.msg import ActionTokens

POLICY_NS = NS // 5   # 5 Hz policy period
TICK_NS = NS // 20    # 20 Hz control period
START_NS = 100 * NS
COLOUR, TEXT = (150, 190, 110), 'close the gripper'


def _steps(k):
    return [np.full(11, float(j)) for j in range(k)]


def test_step_queue_releases_each_step_a_period_apart_and_merges_late_ones():
    q = StepQueue(0.2, tolerance_s=0.025)
    # The frame is 0.1 s old when the chunk arrives: steps run from the arrival, one per
    # period, and carry the frame's stamp plus j periods.
    q.put(_steps(4), 10 * NS, 10 * NS + 100_000_000)
    assert [(s.index, s.stamp_ns) for s in q.release(10 * NS + 100_000_000)] == [(0, 10 * NS)]
    assert q.release(10 * NS + 250_000_000) == []               # step 1 due at 10.3 s
    s = q.release(10 * NS + 280_000_000)                        # within the tolerance
    assert [(x.index, x.stamp_ns) for x in s] == [(1, 10 * NS + POLICY_NS)]
    # A newer chunk replaces the two steps left; an older one is refused.
    q.put(_steps(4), 10 * NS + 300_000_000, 10 * NS + 300_000_000)
    assert q.replaced == 2
    with pytest.raises(ValueError, match='out of order'):
        q.put(_steps(4), 10 * NS + 100_000_000, 10 * NS + 310_000_000)
    # Released 0.45 s late (a stalled executor): steps 0-2 are due together, in order;
    # 0 and 1 are merged into 2 (counted late), none is lost.
    s = q.release(10 * NS + 750_000_000)
    assert [x.index for x in s] == [0, 1, 2] and q.late == 2
    assert q.next_due_ns() == 10 * NS + 900_000_000
    # A clock that went back (a restarted simulator) starts the order afresh.
    q2 = StepQueue(0.2)
    q2.put(_steps(1), 20 * NS, 20 * NS)
    q2.put(_steps(2), 1 * NS, 1 * NS)
    assert q2.resets == 1 and q2.release(1 * NS)[0].stamp_ns == 1 * NS
    # The same frame again (a policy that predicted on it again) replaces the chunk.
    q2.put(_steps(2), 1 * NS, 1 * NS + 10_000_000)
    assert q2.replaced == 1 and q2.release(1 * NS + 10_000_000)[0].index == 0


@pytest.fixture(scope='module')
def chunked_model_dir(tmp_path_factory, action_space):
    return known_model.write(str(tmp_path_factory.mktemp('chunked_model')), action_space,
                             chunk_steps=4)


def _expected_steps(action_space, model_dir, k):
    """Return the known model's chunk (k, 11) of tokens and values for COLOUR and TEXT."""
    from vla_ros.runtime.text_encoder import TextEncoder
    emb, mask = TextEncoder(f'{model_dir}/text_encoder.onnx').encode(TEXT)
    image = np.empty((300, 300, 3), np.uint8)
    image[...] = COLOUR
    tokens = known_model.expected_tokens(image, emb, mask, 4).reshape(4, 11)[:k]
    tok = ActionTokenizer(action_space)
    return tokens, np.array([tok.detokenize(t) for t in tokens])


@pytest.mark.parametrize('execute', [0, 2])
def test_the_pipeline_executes_a_chunk_one_step_per_policy_period(
        ros, params_file, action_space, chunked_model_dir, execute):
    k = execute or 4
    rig = LockstepRig(params_file, {
        'inference_node': {'model_file_path': f'{chunked_model_dir}/policy.onnx',
                           'chunk_execute': execute},
        'interpolation_node': {'command_timeout': 0.5, 'start_enabled': True,
                               'clock_timeout': 10.0}})
    try:
        rig.start(START_NS)
        rig.set_color(*COLOUR)
        rig.instruct(TEXT)
        tokens, values = _expected_steps(action_space, chunked_model_dir, k)
        records = rig.records
        rig.run_until(lambda: len(records.tokens) >= 4, 40 * k)
        chunks = records.tokens[1:]  # the first may come before the instruction settled
        assert len(chunks) >= 3, rig.step.logs()
        for c in chunks:
            assert c['tokens'] == tokens.ravel().tolist()
        # One prediction per k policy periods.
        gaps = {b['t_ns'] - a['t_ns'] for a, b in zip(chunks, chunks[1:])}
        assert gaps == {k * POLICY_NS}, gaps
        # Each chunk's k steps leave the detokenizer a policy period apart from its arrival,
        # stamped frame + j periods, with that step's values.
        for c in chunks[:-1]:
            for j in range(k):
                stamp = c['stamp_ns'] + j * POLICY_NS
                sent = [t for t in records.targets if t['stamp_ns'] == stamp]
                assert len(sent) == 1, (j, [t['stamp_ns'] for t in records.targets])
                late = sent[0]['t_ns'] - (c['t_ns'] + j * POLICY_NS)
                assert 0 <= late <= TICK_NS, (j, late)  # one tick of slip under load
                np.testing.assert_allclose(sent[0]['base'], values[j, 7:10], atol=1e-6)
                np.testing.assert_allclose(sent[0]['arm'], values[j, :7], atol=1e-6)
        # ... and the base turns as the later steps say (step 0's turn rate is zero).
        assert values[0, 9] == 0.0 and values[1, 9] != 0.0
        assert max(abs(float(e['values'][2])) for e in records.base) > 0.0
        _, diag = rig.report('inference_node')
        assert diag.get('chunk_steps_published') == str(k), diag
        assert rig.step.group.failed() is None
    finally:
        rig.close()


def test_detokenizer_runs_steps_a_period_apart_replaces_chunks_and_refuses_old_ones(
        ros, joint_params_file, joint_action_space):
    """detokenizer_node alone, joint-delta space: steps chain on the step before them."""
    space = joint_action_space
    tok = ActionTokenizer(space)
    rig = LockstepRig(joint_params_file, {}, nodes=('detokenizer_node',))
    rng = np.random.default_rng(3)
    chunk = rng.integers(118, 139, size=(4, 11)).astype(np.uint8)
    chunk[:, 10] = 255
    deltas = np.array([tok.detokenize(t) for t in chunk])[:, :7]
    rig.joint_positions = [0.0] * 7 + [0.0]
    try:
        rig.start(START_NS, inputs=[('vla/action_tokens', ActionTokens, COMMAND_QOS),
                                    ('joint_states', JointState, SENSOR_QOS),
                                    ('vla/motion_enabled', Bool, LATCHED_QOS)])
        # joint_states before the first chunk (relative tokens need a measured arm): a tick
        # publishes them and the tokens would race them into the node without the settle.
        for _ in range(2):
            rig.tick()
            rig.step.settle(2)
        targets = rig.records.targets

        def send(source_ns):
            rig.step.publish('vla/action_tokens',
                             tokens_to_msg(chunk.ravel(), source_ns, space.identity, 'camera'))
            rig.step.settle(2)
        # On time: the four steps, one per policy period, each on the one before.
        t0 = rig.step.now_ns
        send(t0)
        rig.run_until(lambda: len(targets) >= 4, 4 * 4 + 2)
        assert [t['stamp_ns'] - t0 for t in targets] == [j * POLICY_NS for j in range(4)]
        arms = np.array([t['arm'] for t in targets])
        np.testing.assert_allclose(arms[0], deltas[0], atol=1e-9)
        np.testing.assert_allclose(np.diff(arms, axis=0), deltas[1:], atol=1e-9)
        # A chunk that comes 0.45 s after its frame: its steps still run a period apart
        # from its arrival, stamped frame + j periods (their age is the interpolator's to
        # judge), each on the step before.
        for _ in range(4):
            rig.tick()
        now = rig.step.now_ns
        n = len(targets)
        send(now - 450_000_000)
        rig.run_until(lambda: len(targets) >= n + 2, 4 + 2)
        assert [t['stamp_ns'] - (now - 450_000_000) for t in targets[n:]] == [0, POLICY_NS]
        # (A release may slip by one control tick when the lock-step clock reaches the
        # node late under load; the steps and their stamps may not.)
        sent_at = [t['t_ns'] - now for t in targets[n:]]
        assert sent_at[0] == 0 and POLICY_NS <= sent_at[1] <= POLICY_NS + TICK_NS, sent_at
        np.testing.assert_allclose(np.array(targets[-1]['arm']) - arms[-1],
                                   deltas[0] + deltas[1], atol=1e-9)
        now = rig.step.now_ns
        # A newer chunk while two steps are left: they never run.
        send(now - 40_000_000)
        assert targets[-1]['stamp_ns'] == now - 40_000_000
        # An older chunk is refused, nothing published.
        n = len(targets)
        send(now - 300_000_000)
        assert len(targets) == n
        rig.run_until(lambda: len(targets) >= n + 3, 4 * 4 + 2)
        assert [t['stamp_ns'] - (now - 40_000_000) for t in targets[n:]] == [
            j * POLICY_NS for j in (1, 2, 3)]
        # The motion gate changes one step into a chunk: the three steps left never run (a
        # chunk planned before an episode's reset, or on an arm that was held).
        now = rig.step.now_ns
        n = len(targets)
        send(now - 40_000_000)
        assert len(targets) == n + 1
        rig.step.publish('vla/motion_enabled', Bool(data=False))
        rig.step.settle(2)
        for _ in range(4 * 4 + 2):
            rig.tick()
        assert len(targets) == n + 1
        _, diag = rig.report('detokenizer_node', ticking=False)
        assert diag.get('chunk_steps_dropped_at_gate') == '3', diag
        assert diag.get('chunk_steps_replaced') == '2', diag
        assert diag.get('chunks_out_of_order') == '1', diag
        assert diag.get('chunks') == '4', diag
    finally:
        codes = rig.close()
    assert codes.get('detokenizer_node') == 0, codes
