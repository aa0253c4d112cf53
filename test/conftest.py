"""Shared test set-up: private DDS domain on loopback, paths, the known test model."""

import os
import random

import pytest

# Before any rclpy import: discovery stays on this host and this run gets its own domain
# so parallel runs (or a developer's graph) never cross-talk.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# 1..101 keeps DDS ports below Linux's ephemeral range (domain IDs above 101 can collide).
# Under pytest-xdist (`make test` runs two workers) the first process to load this file (the
# controller) picks the domain, and each worker takes that domain plus its index, so the
# workers never share one.
if not os.environ.get('ROS_DOMAIN_ID', '').strip().isdigit():  # unset or empty: pick one
    os.environ['ROS_DOMAIN_ID'] = str(random.Random(os.getpid()).randint(20, 101))
os.environ.setdefault('VLA_TEST_DOMAIN', os.environ['ROS_DOMAIN_ID'])
_worker = os.environ.get('PYTEST_XDIST_WORKER', '')
if _worker.startswith('gw'):
    os.environ['ROS_DOMAIN_ID'] = str(
        20 + (int(os.environ['VLA_TEST_DOMAIN']) - 20 + int(_worker[2:])) % 82)
os.environ.setdefault('MUJOCO_GL', 'egl')

from vla_ros.core.action_space import ActionSpace  # noqa: E402
from vla_ros.paths import default_action_space_file, default_params_file, share_file  # noqa: E402,E501
import yaml  # noqa: E402,I100


def absolute_action_space_file() -> str:
    """config/action_space_absolute.yaml: the chapter's absolute joint space."""
    return share_file('config', 'action_space_absolute.yaml')


@pytest.fixture(scope='session')
def shipped_action_space() -> ActionSpace:
    """Load the shipped action space (config/action_space.yaml: tool deltas)."""
    return ActionSpace.from_yaml(default_action_space_file())


def joint_action_space_file() -> str:
    """config/action_space_joint.yaml: joint deltas on the previous commanded target."""
    return share_file('config', 'action_space_joint.yaml')


@pytest.fixture(scope='session')
def joint_action_space() -> ActionSpace:
    """Load the joint-delta action space (relative arm without IK: exact arithmetic)."""
    return ActionSpace.from_yaml(joint_action_space_file())


@pytest.fixture(scope='session')
def joint_params_file(tmp_path_factory) -> str:
    """Write the shipped parameters with the joint-delta action space."""
    return _params_with_space(tmp_path_factory, joint_action_space_file(), 'vla_ros_joint.yaml')


def _params_with_space(tmp_path_factory, space_file: str, name: str) -> str:
    with open(default_params_file(), encoding='utf-8') as stream:
        params = yaml.safe_load(stream)
    for node in ('inference_node', 'detokenizer_node', 'expert_node'):
        section = params.setdefault(f'/**/{node}', {}).setdefault('ros__parameters', {})
        section['action_space_file'] = space_file
    path = tmp_path_factory.mktemp('params') / name
    path.write_text(yaml.safe_dump(params), encoding='utf-8')
    return str(path)


@pytest.fixture(scope='session')
def action_space() -> ActionSpace:
    """Load the chapter's absolute action space (the known-function test model's)."""
    return ActionSpace.from_yaml(absolute_action_space_file())


@pytest.fixture(scope='session')
def shipped_params_file() -> str:
    """Return the shipped parameters file."""
    return default_params_file()


@pytest.fixture(scope='session')
def params_file(tmp_path_factory) -> str:
    """Write the shipped parameters with the absolute action space (for the test model)."""
    return _params_with_space(tmp_path_factory, absolute_action_space_file(),
                              'vla_ros_absolute.yaml')


@pytest.fixture(scope='session')
def test_model_dir(tmp_path_factory, action_space) -> str:
    """A freshly written known-function test model directory."""
    from vla_ros.testing import known_model
    return known_model.write(str(tmp_path_factory.mktemp('test_model')), action_space)


@pytest.fixture(scope='module')
def ros():
    """Initialise rclpy for one test module (its nodes live until the module ends)."""
    import rclpy
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def interp(ros, params_file):
    """
    interpolation_node alone in lock step (graph_harness.LockstepRig), enabled.

    The test plays robot, detokenizer and clock; clock_timeout is long because sim time
    moves only while the test ticks.
    """
    from graph_harness import LockstepRig
    rig = LockstepRig(params_file, {'interpolation_node': {
        'start_enabled': True, 'command_timeout': 0.5, 'clock_timeout': 10.0}},
        nodes=('interpolation_node',))
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture(scope='module')
def expert_setup(action_space, params_file):
    """Return the robot, the in-process pipeline (deployed parameters) and the expert."""
    pytest.importorskip('mujoco')
    from vla_ros.core.action_space import ActionTokenizer
    from vla_ros.sim.expert import ExpertDecider
    from vla_ros.sim.pipeline import control_config, Pipeline
    from vla_ros.sim.robot import Robot
    from vla_ros.sim.tasks import TaskEnv
    robot = Robot()
    env = TaskEnv(robot)
    tokenizer = ActionTokenizer(action_space)
    pipeline = Pipeline(env, tokenizer, control_config(params_file))
    yield env, pipeline, ExpertDecider(robot, tokenizer), tokenizer
    robot.close()


@pytest.fixture(scope='session')
def colcon_ws(tmp_path_factory):
    """Build both packages with the README's `colcon build` in a fresh workspace, once."""
    from ros2_support import build_workspace
    return build_workspace(str(tmp_path_factory.mktemp('colcon')))
