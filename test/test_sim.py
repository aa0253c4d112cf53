"""Simulation basics: seeded resets, determinism, period checks, camera, controller emulation."""

import numpy as np
import pytest

pytest.importorskip('mujoco')

from vla_ros.core.action_space import ActionTokenizer  # noqa: E402
from vla_ros.sim.expert import ExpertDecider  # noqa: E402
from vla_ros.sim.pipeline import control_config, Pipeline  # noqa: E402
from vla_ros.sim.robot import ArmTrajectory, RealTimePacer, Robot  # noqa: E402
from vla_ros.sim.tasks import TASK_NAMES, TaskEnv  # noqa: E402


@pytest.fixture(scope='module')
def env():
    """One robot + task environment shared by the module (loading MJCF costs ~50 ms)."""
    environment = TaskEnv(Robot())
    yield environment
    environment.robot.close()


def _scene(env):
    return env.robot.data.qpos.copy(), env.robot.data.mocap_pos.copy()


def test_at_least_five_tasks():
    assert len(TASK_NAMES) >= 5


@pytest.mark.parametrize('task', TASK_NAMES)
def test_reset_is_seeded(env, task):
    first = env.reset(task, 7)
    qpos, mocap = _scene(env)
    again = env.reset(task, 7)
    assert again.instruction == first.instruction
    assert again.params == first.params
    np.testing.assert_array_equal(_scene(env)[0], qpos)
    np.testing.assert_array_equal(_scene(env)[1], mocap)
    layouts = set()
    for seed in range(6):
        env.reset(task, seed)
        layouts.add(env.robot.data.qpos.tobytes() + env.robot.data.mocap_pos.tobytes())
    assert len(layouts) == 6, 'different seeds must give different scenes'


def _rollout(env, action_space, task, seed, ticks=40):
    tokenizer = ActionTokenizer(action_space)
    pipeline = Pipeline(env, tokenizer, control_config(None))
    expert = ExpertDecider(env.robot, tokenizer)
    episode = env.reset(task, seed)
    expert.reset(episode)
    trace = []

    def record(_tick, _tokens):
        trace.append(env.robot.data.qpos.copy())
        if len(trace) >= ticks:
            env.episode.time_limit = 0.0  # stop the episode here
    pipeline.run_episode(expert, record)
    return np.array(trace)


def test_same_seed_same_trajectory(env, action_space):
    a = _rollout(env, action_space, 'place_in_bowl', 3)
    b = _rollout(env, action_space, 'place_in_bowl', 3)
    c = _rollout(env, action_space, 'place_in_bowl', 4)
    assert a.shape == b.shape and len(a) >= 40
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c[:len(a)])


def test_control_period_is_whole_multiple_of_physics_step(env):
    robot = env.robot
    assert robot.timestep == pytest.approx(0.002)
    assert robot.steps_per(0.05) == 25
    assert robot.steps_per(0.2) == 100
    assert env.steps_per_control == 25
    with pytest.raises(ValueError, match='whole number'):
        robot.steps_per(0.003)
    with pytest.raises(ValueError, match='whole number'):
        TaskEnv(robot, control_period=0.0501)


def test_render_gives_300x300_rgb(env):
    env.reset('pick_block', 0)
    image = env.robot.render()
    assert image.shape == (300, 300, 3)
    assert image.dtype == np.uint8
    # The table (brown) and at least one saturated block colour are in view.
    assert image.std() > 10
    red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
    blue = (image[..., 2] > 150) & (image[..., 0] < 80) & (image[..., 1] < 120)
    assert red.sum() > 5 and blue.sum() > 5


def test_unknown_task_and_bad_seed_are_refused(env):
    with pytest.raises(ValueError, match='unknown task'):
        env.reset('fly_away', 0)
    with pytest.raises(ValueError, match='seed'):
        env.reset('pick_block', -1)


def test_base_twist_is_in_the_base_frame():
    robot = Robot()
    robot.reset(base=(0.0, 0.0, np.pi / 2))
    robot.set_base_twist((0.2, 0.0, 0.0))
    robot.step(500)
    odom = robot.odometry()
    # Facing +y, "forward" moves along world +y.
    assert odom.y == pytest.approx(0.2, abs=0.01)
    assert abs(odom.x) < 0.01
    assert odom.vx == pytest.approx(0.2, abs=0.01)


def test_gripper_command_and_measured_closure():
    robot = Robot()
    robot.set_gripper(1.0)
    robot.step(500)
    assert robot.gripper_closure() > 0.95
    robot.set_gripper(0.0)
    robot.step(500)
    assert robot.gripper_closure() < 0.05


def test_pacer_tracks_real_time_and_resyncs():
    pacer = RealTimePacer(chunk=0.004, real_time_factor=2.0, max_lag=0.1)
    pacer.start(wall=10.0, sim=0.0)
    assert pacer.due(10.0, 0.0) == 0
    assert pacer.due(10.01, 0.0) == 5          # 0.02 s of sim time due at 2x
    assert pacer.due(10.01, 0.02) == 0
    assert pacer.due(20.0, 0.02) == 1 and pacer.resyncs == 1


def test_arm_trajectory_interpolates_like_a_trajectory_controller():
    start = np.zeros(7)
    traj = ArmTrajectory(1.0, start, [2.0, 3.0], [np.ones(7), 3 * np.ones(7)])
    np.testing.assert_allclose(traj.sample(1.0), 0.0)
    np.testing.assert_allclose(traj.sample(1.5), 0.5)
    np.testing.assert_allclose(traj.sample(2.5), 2.0)
    np.testing.assert_allclose(traj.sample(9.0), 3.0)
    with pytest.raises(ValueError):
        ArmTrajectory(0.0, start, [1.0, 1.0], [np.ones(7), np.ones(7)])


@pytest.mark.parametrize('task', TASK_NAMES)
def test_goal_is_in_view_at_the_start(env, task):
    """Observability: a memoryless image policy sees what the instruction names."""
    for seed in range(100000, 100012):
        episode = env.reset(task, seed)
        colour = episode.params.get('colour')
        if task == 'drive_to_marker':
            body, least = f'marker_{colour}', 200
        elif task == 'gripper':
            body, least = 'hand', 20  # the fingers' state is also in the state input
        else:
            body, least = f'block_{colour}', 20
        pixels = env.robot.visible_pixels(body)
        assert pixels >= least, (task, seed, body, pixels)
        if task == 'place_in_bowl':
            assert env.robot.visible_pixels('bowl') >= 200, (seed, 'bowl')
