"""
The scripted expert as its own node: sim/state ground truth in, vla/action_tokens out.

First the mirror the node relies on: a snapshot restored on a second MuJoCo model gives the
same kinematics, and the expert deciding from that mirror decides exactly as it does inside
the simulator. Then expert_node as a process: fed the states of an in-process episode, it
publishes the very tokens the in-process expert chose, stamped with each state's time; bad
states are counted and publish nothing.
"""

import math

import numpy as np
import pytest

pytest.importorskip('mujoco')

from vla_ros.conversions import (msg_to_sim_state, sim_state_msg, target_to_msg,  # noqa: E402
                                 time_to_ns)
from vla_ros.nodes.common import COMMAND_QOS  # noqa: E402
from vla_ros.nodes.expert_node import LEAD_MARGIN  # noqa: E402
from vla_ros.sim.expert import ExpertDecider  # noqa: E402
from vla_ros.sim.robot import Robot  # noqa: E402
from vla_ros.sim.tasks import TaskEnv  # noqa: E402
from vla_ros.testing.probe import Probe  # noqa: E402
from vla_ros_interfaces.msg import ActionTarget, ActionTokens, SimState  # noqa: E402

START_NS = 1000 * 10**9  # sim time of the episode's start on the wire


@pytest.fixture(scope='module')
def episode_record(expert_setup):
    """Run the expert in process (pick_block seed 3); keep (time, snapshot, tokens) each tick."""
    env, pipeline, _, tokenizer = expert_setup
    return _record(env, pipeline, tokenizer)


def _record(env, pipeline, tokenizer):
    robot = env.robot
    # As expert_node decides: arm targets kept inside the composer's trust region.
    expert = ExpertDecider(robot, tokenizer, lead_limit=0.35 - LEAD_MARGIN)
    expert.reset(env.reset('pick_block', 3))
    record = []

    def decide(obs):
        # After mj_step, MuJoCo's derived positions (tool, bodies) are those from before
        # the step's integration; the node's mirror computes them from the state itself.
        robot.mujoco.mj_forward(robot.model, robot.data)
        return expert(obs)
    status = pipeline.run_episode(decide, on_decision=lambda obs, tokens: record.append(
        (obs.now, robot.snapshot(), tokens.copy())))
    assert status['success'], status
    return record


def _state_msg(t, snapshot, task='pick_block', seed=3):
    return sim_state_msg(START_NS + int(round(t * 1e9)), task, seed, START_NS, *snapshot,
                         'world')


def test_a_restored_snapshot_reproduces_the_world():
    source, mirror = Robot(), Robot()
    env = TaskEnv(source)
    env.reset('place_in_bowl', 7)
    source.set_base_twist((0.2, 0.1, 0.3))
    source.step(200)
    source.mujoco.mj_forward(source.model, source.data)  # positions of the state after step
    joints, bodies = source.snapshot()
    # Through the message and back, as expert_node receives it.
    world = msg_to_sim_state(sim_state_msg(5, 'place_in_bowl', 7, 0, joints, bodies))
    assert world.joints == joints and set(world.bodies) == set(bodies)
    mirror.restore(world.joints, world.bodies)
    np.testing.assert_allclose(mirror.tcp_pose()[0], source.tcp_pose()[0], atol=1e-12)
    np.testing.assert_allclose(mirror.arm_positions(), source.arm_positions(), atol=0)
    m, o = mirror.odometry(), source.odometry()
    assert (m.x, m.y, m.yaw) == pytest.approx((o.x, o.y, o.yaw), abs=1e-12)
    for name in ('block_red', 'block_green', 'block_blue', 'bowl', 'marker_cyan',
                 'arm_link_1'):
        np.testing.assert_allclose(mirror.body_position(name), source.body_position(name),
                                   atol=1e-12)
    # Bad snapshots are refused whole: the mirror keeps its state.
    before = mirror.data.qpos.copy()
    for bad_joints, bad_bodies in (({'arm_joint_1': 0.3, 'elbow': 1.0}, {}),
                                   ({'arm_joint_1': math.nan}, {}),
                                   ({'arm_joint_1': 0.3}, {'table': (np.zeros(3), [1, 0, 0, 0])}),
                                   ({}, {'block_red': (np.zeros(3), np.zeros(4))})):
        with pytest.raises(ValueError):
            mirror.restore(bad_joints, bad_bodies)
    np.testing.assert_array_equal(mirror.data.qpos, before)
    source.close()
    mirror.close()


class TokenProbe(Probe):
    """Publishes sim/state (and vla/target), records (stamp ns, tokens) of vla/action_tokens."""

    def __init__(self):
        super().__init__('expert_node_probe')
        self.tokens = []
        self.state_pub = self.node.create_publisher(SimState, 'sim/state', COMMAND_QOS)
        self.target_pub = self.node.create_publisher(ActionTarget, 'vla/target', COMMAND_QOS)
        self.node.create_subscription(ActionTokens, 'vla/action_tokens', self._on_tokens,
                                      COMMAND_QOS)
        self.start()

    def _on_tokens(self, msg):
        with self.lock:
            self.tokens.append((time_to_ns(msg.header.stamp), bytes(msg.tokens),
                                msg.action_space))

    def received(self):
        with self.lock:
            return list(self.tokens)


def _expert_node(params_file):
    from graph_harness import print_logs
    from vla_ros.graph import NodeSpec
    from vla_ros.processes import ProcessGroup
    group = ProcessGroup(params_file, quiet=True)
    group.start_all([NodeSpec('expert_node', 'expert_node')])
    probe = TokenProbe()
    try:
        yield probe, group
    finally:
        probe.close()
        group.stop()
        print_logs(group)


@pytest.fixture
def expert_node(ros, params_file):
    """expert_node in the test model's absolute action space."""
    yield from _expert_node(params_file)


@pytest.fixture
def joint_expert_node(ros, joint_params_file):
    """expert_node in the joint-delta (relative arm) action space."""
    yield from _expert_node(joint_params_file)


def _first_answer(probe, group, msg):
    """Publish the episode's first state until answered (the node's reader may match late)."""
    assert probe.wait_for(lambda: probe.state_pub.get_subscription_count() > 0, 30.0), \
        group.failed()
    for _ in range(20):
        # A repeat of a state already decided on is skipped (within half a period).
        probe.state_pub.publish(msg)
        if probe.wait_for(lambda: len(probe.received()) > 0, 1.0):
            return
    raise AssertionError(f'no tokens from expert_node: {group.failed()}')


def test_expert_node_publishes_the_in_process_experts_tokens(expert_node, episode_record,
                                                             action_space):
    probe, group = expert_node
    decisions = episode_record[:25]
    _first_answer(probe, group, _state_msg(*decisions[0][:2]))
    for t, snapshot, _ in decisions[1:]:
        n = len(probe.received())
        probe.state_pub.publish(_state_msg(t, snapshot))
        # One state at a time: the node's answer arrives before the next state goes out.
        assert probe.wait_for(lambda: len(probe.received()) > n, 10.0), group.failed()
    received = probe.received()
    assert [stamp for stamp, _, _ in received] == \
        [START_NS + int(round(t * 1e9)) for t, _, _ in decisions]
    assert [tokens for _, tokens, _ in received] == \
        [bytes(tokens) for _, _, tokens in decisions]
    assert {space for _, _, space in received} == {action_space.identity}
    assert group.failed() is None


def test_expert_node_counts_bad_states_and_publishes_nothing(expert_node, episode_record):
    probe, group = expert_node
    _first_answer(probe, group, _state_msg(*episode_record[0][:2]))
    t, (joints, bodies), _ = episode_record[1]
    bad = [
        _state_msg(t, ({**joints, 'elbow': 0.1}, bodies)),              # unknown joint
        _state_msg(t, ({**joints, 'arm_joint_2': math.inf}, bodies)),   # not finite
        _state_msg(t, (joints, bodies), task='juggle'),                 # unknown task
    ]
    unpaired = _state_msg(t, (joints, bodies))
    unpaired.joint_positions = unpaired.joint_positions[:-1]             # names ≠ values
    for n, msg in enumerate(bad + [unpaired], 1):
        # One at a time: the state topic keeps only the latest message (depth 1).
        probe.state_pub.publish(msg)
        assert probe.wait_for(lambda: int(probe.diagnostic_values('expert_node').get(
            'states_rejected', 0)) >= n, 10.0), probe.diagnostic_values('expert_node')
    assert len(probe.received()) == 1
    # A good state afterwards is decided on (as a new episode: a bad state leaves the
    # mirror untrusted): the node kept running. Tokens keep their order on the reliable
    # topic, so a token from any bad state would arrive before this one: no sleeping.
    probe.state_pub.publish(_state_msg(t, (joints, bodies)))
    assert probe.wait_for(lambda: len(probe.received()) == 2, 10.0), group.failed()
    assert probe.received()[1][0] == START_NS + int(round(t * 1e9))
    assert group.failed() is None


def test_expert_node_labels_against_the_target_the_detokenizer_published(
        joint_expert_node, params_file, joint_action_space):
    """The previous target is the one published on vla/target, not the node's own guess."""
    from vla_ros.core.action_space import ActionTokenizer
    from vla_ros.sim.pipeline import control_config, Pipeline
    probe, group = joint_expert_node
    action_space = joint_action_space
    tokenizer = ActionTokenizer(action_space)
    env = TaskEnv(Robot())
    record = _record(env, Pipeline(env, tokenizer, control_config(params_file)), tokenizer)
    env.robot.close()
    (t0, snap0, tokens0), (t1, snap1, tokens1) = record[:2]
    _first_answer(probe, group, _state_msg(t0, snap0))
    # The expert's own target after decision 0 (composed on the measured arm, as the
    # in-process pipeline did), and another one the detokenizer published instead (it kept
    # the previous episode's target, say): 0.1 rad off on every joint.
    arm0 = np.array([snap0[0][f'arm_joint_{i}'] for i in range(1, 8)])
    own = arm0 + tokenizer.detokenize(tokens0)[:7]
    published = own + 0.1
    probe.target_pub.publish(target_to_msg(list(published) + [0.0, 0.0, 0.0, 0.0],
                                           START_NS + int(round(t0 * 1e9)),
                                           [f'arm_joint_{i}' for i in range(1, 8)],
                                           action_space.identity))
    assert probe.wait_for(lambda: int(probe.diagnostic_values('expert_node').get(
        'targets_observed', 0)) == 1, 10.0), probe.diagnostic_values('expert_node')
    probe.state_pub.publish(_state_msg(t1, snap1))
    assert probe.wait_for(lambda: len(probe.received()) == 2, 10.0), group.failed()
    labels = tokenizer.detokenize(np.frombuffer(probe.received()[1][1], np.uint8))[:7]
    # Same absolute target, now reached from the published target: labels 0.1 rad lower
    # (within one bin of the quantisation).
    expected = tokenizer.detokenize(tokens1)[:7] - 0.1
    width = action_space.bin_width[:7]
    assert np.all(np.abs(labels - expected) <= width + 1e-9), (labels, expected)
