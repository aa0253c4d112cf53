"""
Closed loop through real processes on sim time.

First expert_node runs the scripted expert from sim_node's ground truth (it publishes
vla/action_tokens in place of inference_node), so a success shows the tokens, the
detokenizer, the 20 Hz loop and the simulated controllers work together. Then the
pipeline goes silent and the robot must stop. Last, the whole graph (camera_node,
inference_node with the shipped trained policy and its state input, detokenizer_node,
interpolation_node) completes tasks on its own.

Every wait is on an event (an episode's status, sim time reached, messages seen), and every
service call (sim_node/set_parameters, sim/reset, vla/enable) is sent again when its answer
is lost (``testing/probe.Probe.call``): under load a response once went missing.
"""

import signal

from graph_harness import sim_graph, wait_for
import numpy as np
import pytest


@pytest.fixture
def loop(params_file):
    yield from sim_graph(params_file, expert=True, without=('camera_node',))


def test_expert_completes_a_task_through_the_nodes(loop):
    rec, group = loop
    assert wait_for(lambda: rec.enable.service_is_ready() and rec.reset.service_is_ready(), 60)
    episode = rec.start_episode('pick_block', 3)
    status = rec.wait_done('pick_block', 3, timeout=60.0)
    assert status.get('success'), (episode, status, group.failed())
    assert group.failed() is None


def test_robot_stops_when_the_pipeline_goes_silent(loop):
    rec, group = loop
    assert wait_for(lambda: rec.enable.service_is_ready() and rec.reset.service_is_ready(), 60)
    rec.start_episode('drive_to_marker', 2)

    def driving():
        with rec.lock:
            return bool(rec.base_meas) and np.hypot(*rec.base_meas[-1][1:3]) > 0.1
    assert wait_for(driving, 60.0), (rec.base_meas[-5:], group.failed())
    group.kill('detokenizer_node', signal.SIGKILL)  # no more targets reach the loop
    with rec.lock:
        t_kill = rec.sim_now
    # command_timeout 0.5 s + the ramp at the deceleration limit (≤ 0.25 s) + the base's
    # response, all in sim time
    assert rec.wait_sim_time(t_kill + 2.0, 60.0)
    with rec.lock:
        after = [(t, np.hypot(vx, vy)) for t, vx, vy, wz in rec.base_meas if t > t_kill + 1.5]
        cmds = [(t, vx, vy, wz) for t, vx, vy, wz in rec.base_cmd if t > t_kill + 1.0]
    assert cmds and all(vx == vy == wz == 0.0 for t, vx, vy, wz in cmds)
    assert after and max(v for t, v in after) < 0.01, after[:5]


@pytest.fixture
def policy_loop(shipped_params_file):
    yield from sim_graph(shipped_params_file)


# The first evaluation seeds (never collected, not chosen by outcome) of the tasks the
# shipped policy is measured to do: docs/model-card.md gives pick_block 48/50 (86-99 %),
# drive_to_marker and gripper 50/50 (93-100 %) in process, and pick 9/10 through the graph.
# At those lower bounds, fewer than 2 successes in 4 episodes has a probability of about 1 %
# (pick) and 0.1 % (drive, gripper); place (35-62 %) and push are not asserted.
EPISODES_PER_TASK = 4
MIN_SUCCESSES = 2


def test_shipped_policy_completes_tasks_through_the_nodes(policy_loop):
    from vla_ros.learning.evaluate import evaluation_seeds
    from vla_ros.sim.tasks import TaskEnv
    env = TaskEnv()
    plan = {task: evaluation_seeds(env, task, EPISODES_PER_TASK)
            for task in ('pick_block', 'drive_to_marker', 'gripper')}
    env.robot.close()
    rec, group = policy_loop
    assert wait_for(lambda: rec.enable.service_is_ready() and rec.reset.service_is_ready(), 60)
    results = {}
    for task, seeds in plan.items():
        for seed in seeds:
            rec.start_episode(task, seed)
            status = rec.wait_done(task, seed, timeout=90.0)
            assert status.get('done'), (task, seed, status, group.failed())  # an answer
            results.setdefault(task, []).append(bool(status.get('success')))
    print(results)
    for task, outcomes in results.items():
        assert sum(outcomes) >= MIN_SUCCESSES, (task, plan[task], outcomes)
    assert group.failed() is None
