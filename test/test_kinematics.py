"""Tool-delta arm actions: URDF kinematics, IK refusals, composition and relabelling."""

import math
import os

import numpy as np
import pytest

os.environ.setdefault('MUJOCO_GL', 'egl')

from vla_ros.core.action_space import (ActionSpace, ActionTokenizer,  # noqa: E402
                                       DEFAULT_ARM_JOINTS)
from vla_ros.core.kinematics import (ArmKinematics, default_kinematics,  # noqa: E402
                                     rotation_from_vector, rotation_vector)
from vla_ros.core.targets import TargetComposer  # noqa: E402
from vla_ros.paths import share_file  # noqa: E402

TOOL_SPACE = share_file('config', 'action_space.yaml')


@pytest.fixture(scope='module')
def kin():
    return default_kinematics()


def test_forward_kinematics_from_the_urdf_match_the_simulator(kin):
    """The URDF chain puts the tool where MuJoCo's tcp site is, in the base frame."""
    from vla_ros.sim.robot import Robot
    robot = Robot()
    rng = np.random.default_rng(3)
    try:
        for _ in range(5):
            q = rng.uniform(kin.lower, kin.upper)
            base = rng.uniform([-1.0, -1.0, -math.pi], [1.0, 1.0, math.pi])
            robot.data.qpos[robot.arm_qpos] = q
            robot.data.qpos[robot.base_qpos] = base
            robot.mujoco.mj_forward(robot.model, robot.data)
            p_world, r_world = robot.tcp_pose()
            c, s = math.cos(base[2]), math.sin(base[2])
            yaw = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            p, r = kin.forward(q)
            np.testing.assert_allclose(yaw.T @ (p_world - [base[0], base[1], 0.0]), p,
                                       atol=1e-6)
            np.testing.assert_allclose(yaw.T @ r_world, r, atol=1e-6)
    finally:
        robot.close()


def test_rotation_vector_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=3)
        v *= rng.uniform(0.0, 3.1) / np.linalg.norm(v)
        np.testing.assert_allclose(rotation_vector(rotation_from_vector(v)), v, atol=1e-6)


def test_ik_reaches_small_deltas_holds_limits_and_refuses_the_unreachable(kin):
    from vla_ros.sim.robot import READY_ARM
    q = np.asarray(READY_ARM, dtype=float)
    rng = np.random.default_rng(1)
    for _ in range(20):
        delta = np.concatenate([rng.uniform(-0.05, 0.05, 3), rng.uniform(-0.1, 0.1, 3)])
        sol = kin.apply_delta(q, delta)
        assert sol.ok, sol.reason
        assert np.all(sol.q >= kin.lower) and np.all(sol.q <= kin.upper)
        np.testing.assert_allclose(kin.delta_between(q, sol.q), delta, atol=2e-3)
    far = kin.apply_delta(q, [2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert not far.ok and 'unreachable' in far.reason
    assert np.all(far.q >= kin.lower) and np.all(far.q <= kin.upper)
    # At a joint limit the solver never leaves the range.
    at_limit = q.copy()
    at_limit[3] = kin.upper[3]
    sol = kin.apply_delta(at_limit, [0.0, 0.0, -0.05, 0.0, 0.0, 0.0])
    assert np.all(sol.q <= kin.upper + 1e-12) and np.all(sol.q >= kin.lower - 1e-12)


def test_a_chain_that_does_not_match_the_arm_is_refused(tmp_path):
    from vla_ros.core.kinematics import KinematicsError
    urdf = share_file('description', 'urdf', 'vla_robot.urdf')
    with pytest.raises(KinematicsError, match='moves joints'):
        ArmKinematics.from_urdf(urdf, DEFAULT_ARM_JOINTS[:6])
    with pytest.raises(KinematicsError, match='no joint chain'):
        ArmKinematics.from_urdf(urdf, DEFAULT_ARM_JOINTS, tip='no_such_link')


def test_tool_tokens_compose_to_joint_targets_and_an_unreachable_pose_holds_the_arm(kin):
    from vla_ros.sim.robot import READY_ARM
    space = ActionSpace.from_yaml(TOOL_SPACE)
    assert space.tool_arm and space.relative_arm
    tokenizer = ActionTokenizer(space)
    composer = TargetComposer(space)
    arm = np.asarray(READY_ARM, dtype=float)
    composer.observe(np.concatenate([arm, [0.0, 0.0, 0.0, 0.0]]), 0.0)
    wanted = np.array([0.03, -0.02, 0.01, 0.0, 0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 1.0])
    values = tokenizer.detokenize(tokenizer.tokenize(wanted))
    target = composer.compose(values, 0.2, arm, 0.0)
    np.testing.assert_allclose(kin.delta_between(arm, target[:7]), values[:6], atol=2e-3)
    assert target[7] == pytest.approx(values[7]) and target[10] == 1.0
    # The labels of that target are the tokens again (the expert's side of the rule).
    labels = composer.labels(target, 0.2, target[:7], 1.0)
    composer.observe(target, 0.2)
    assert composer.unreachable == 0
    # Pushing the tool 10 cm per step away from the robot (the arm following exactly):
    # every step moves no joint more than the IK's cap, and once out of reach the arm
    # holds its previous target while the base and the gripper still follow.
    push = tokenizer.detokenize(tokenizer.tokenize(
        np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0])))
    arm, t = target[:7].copy(), 0.2
    for _ in range(30):
        t += 0.2
        before = composer.previous(t, arm, 0.0)
        composed = composer.compose(push, t, arm, 0.0)
        assert np.max(np.abs(composed[:7] - before[:7])) <= kin.max_joint_step + 1e-9
        assert composed[9] == pytest.approx(push[9]) and composed[10] == 0.0
        arm = composed[:7]
    assert composer.unreachable > 0 and 'unreachable' in composer.unreachable_reason
    held = composer.previous(t + 0.2, arm, 0.0)
    again = composer.compose(push, t + 0.2, arm, 0.0)
    np.testing.assert_array_equal(again[:7], held[:7])
    assert labels.shape == (11,)


def test_joint_delta_datasets_relabel_to_tool_deltas_that_reproduce_the_tool_path(tmp_path):
    """Training's relabelling: the composed tool-delta targets put the tool where it was."""
    from vla_ros.learning import collect, train_data
    root = str(tmp_path / 'joints')
    collect.collect(root, {'pick_block': 2, 'push_block': 1}, seed_start=21, quiet=True,
                    action_space_file=share_file('config', 'action_space_joint.yaml'))
    data, _, space = train_data.load_data([root], 3, quiet=True)
    joint = ActionTokenizer(ActionSpace.from_dict(space))
    targets = joint.detokenize(data.tokens)[:, :7] + data.state[:, :7]
    tool_space = train_data.relabel(data, space, TOOL_SPACE)
    tool = ActionTokenizer(ActionSpace.from_dict(tool_space))
    kin = default_kinematics()
    values = tool.detokenize(data.tokens)
    errors = []
    for i in range(len(values)):
        sol = kin.apply_delta(data.state[i, :7], values[i, :6])
        assert sol.ok, (i, sol.reason)
        errors.append(np.linalg.norm(kin.forward(sol.q)[0] - kin.forward(targets[i])[0]))
    # Within the bins (0.78 mm per axis) unless the label was clipped at the bounds.
    assert np.median(errors) < 1.5e-3, np.percentile(errors, [50, 90, 99])


def test_the_scripted_expert_picks_through_tool_tokens():
    """The whole in-process chain in tool deltas: expert labels -> tokens -> IK -> MuJoCo."""
    from vla_ros.sim.expert import ExpertDecider
    from vla_ros.sim.pipeline import Pipeline
    tokenizer = ActionTokenizer(ActionSpace.from_yaml(TOOL_SPACE))
    pipeline = Pipeline.from_params(tokenizer)
    try:
        expert = ExpertDecider(pipeline.env.robot, tokenizer, pipeline.config.inference_period)
        for task, seed in (('pick_block', 200), ('push_block', 201)):
            expert.reset(pipeline.env.reset(task, seed))
            status = pipeline.run_episode(expert)
            assert status['success'], (task, seed, status)
        assert pipeline.composer.unreachable == 0
    finally:
        pipeline.env.robot.close()


def test_detokenizer_node_turns_tool_tokens_into_joint_targets_and_holds_when_unreachable():
    """A real detokenizer_node process on the tool-delta space, over DDS."""
    import subprocess
    import sys
    import threading
    import time
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState
    from vla_ros.conversions import msg_to_target, tokens_to_msg
    from vla_ros.nodes.common import COMMAND_QOS, SENSOR_QOS
    from vla_ros.sim.robot import READY_ARM
    from vla_ros.testing.probe import Probe, wait_for
    from vla_ros.processes import child_env, interrupt
    from vla_ros_interfaces.msg import ActionTarget, ActionTokens
    space = ActionSpace.from_yaml(TOOL_SPACE)
    tokenizer = ActionTokenizer(space)
    kin = default_kinematics()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_ros.nodes.detokenizer_node', '--ros-args', '-p',
         f'action_space_file:={TOOL_SPACE}'], env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    probe = Probe('tool_probe')
    targets = []
    lock = threading.Lock()

    def on_target(msg):
        with lock:
            targets.append(msg_to_target(msg, DEFAULT_ARM_JOINTS, space.identity)[0])
    target_sub = probe.node.create_subscription(
        ActionTarget, 'vla/target', on_target,
        QoSProfile(depth=50, reliability=COMMAND_QOS.reliability))
    tokens_pub = probe.node.create_publisher(ActionTokens, 'vla/action_tokens', COMMAND_QOS)
    joints_pub = probe.node.create_publisher(JointState, 'joint_states', SENSOR_QOS)
    probe.start()
    arm = np.asarray(READY_ARM, dtype=float)

    def send(values, measured):
        js = JointState()
        js.header.stamp = probe.node.get_clock().now().to_msg()
        js.name = list(DEFAULT_ARM_JOINTS)
        js.position = [float(v) for v in measured]
        joints_pub.publish(js)
        tokens_pub.publish(tokens_to_msg(tokenizer.tokenize(values),
                                         int(time.time() * 1e9), space.identity))
    try:
        # All three directions matched before the first step: a target published before the
        # probe's subscription matched is lost, and the probe would see the second
        # composition (chained on the lost one) as its first (a CI run did: twice the step).
        assert wait_for(lambda: tokens_pub.get_subscription_count() and
                        joints_pub.get_subscription_count() and
                        target_sub.get_publisher_count(), 30.0), proc.stdout
        step = np.array([0.02, 0.0, -0.01, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0, 1.0])
        assert wait_for(lambda: (send(step, arm), len(targets))[1] > 0, 30.0)
        with lock:
            # The first target: composed on the measured arm. (The node may have had a
            # second copy of the step before the probe saw the first target, and composed
            # it on the first: that one is targets[1].)
            first = targets[0]
        moved = kin.delta_between(arm, first[:7])
        np.testing.assert_allclose(moved, tokenizer.detokenize(tokenizer.tokenize(step))[:6],
                                   atol=2e-3)
        assert first[10] == 1.0
        # Far out of reach: the arm stops moving, the refusals are counted in /diagnostics.
        current = first[:7]
        push = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        for _ in range(40):
            n = len(targets)
            send(push, current)
            wait_for(lambda: len(targets) > n, 5.0)
            with lock:
                current = targets[-1][:7]
        with lock:
            last = [t[:7] for t in targets[-3:]]
        np.testing.assert_array_equal(last[0], last[-1])
        assert wait_for(lambda: int(probe.diagnostic_values('detokenizer_node').get(
            'tool_target_unreachable', 0)) > 0, 10.0), probe.diagnostic_values(
            'detokenizer_node')
        assert proc.poll() is None
    finally:
        probe.close()
        code = interrupt(proc)
        out = proc.stdout.read()
    assert code == 0, out
    assert 'arm held' in out
