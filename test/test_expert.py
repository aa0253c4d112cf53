"""
The scripted expert solves every task through tokenize → detokenize → ControlLoop → sim.

``python -m vla_ros.sim.evaluate --episodes 20`` is the full figure; this keeps to a few
seeds per task so the suite stays fast.
"""

import numpy as np
import pytest

pytest.importorskip('mujoco')

from vla_ros.core.action_space import ActionTokenizer  # noqa: E402
from vla_ros.sim.evaluate import evaluate  # noqa: E402
from vla_ros.sim.expert import ExpertDecider, ScriptedExpert, SLOW  # noqa: E402
from vla_ros.sim.pipeline import control_config, Pipeline  # noqa: E402
from vla_ros.sim.robot import Robot  # noqa: E402
from vla_ros.sim.tasks import TASK_NAMES, TaskEnv  # noqa: E402

SEEDS = (0, 1, 2)


@pytest.fixture(scope='module')
def setup(expert_setup):
    """Robot, pipeline (with the deployed interpolation parameters) and expert."""
    return expert_setup


@pytest.mark.parametrize('task', TASK_NAMES)
@pytest.mark.parametrize('seed', SEEDS)
def test_expert_succeeds_through_the_token_path(setup, task, seed):
    env, pipeline, expert, tokenizer = setup
    episode = env.reset(task, seed)
    expert.reset(episode)
    seen = []
    status = pipeline.run_episode(expert, lambda tick, tokens: seen.append(tokens))
    assert status['success'], f'{episode.instruction!r} (seed {seed}) failed: {status}'
    assert status['sim_time'] < episode.time_limit
    # What reached the controllers came from uint8 tokens, not from the expert directly.
    assert all(t.dtype == np.uint8 and t.shape == (11,) for t in seen)


def test_expert_joint_targets_are_representable(setup, action_space):
    env, _, _, tokenizer = setup
    expert = ScriptedExpert(env.robot, tokenizer)
    expert.reset(env.reset('pick_block', 5))
    for _ in range(5):
        action = expert.act()
        roundtrip = tokenizer.detokenize(tokenizer.tokenize(action))
        np.testing.assert_allclose(roundtrip[:7], action[:7], atol=1e-12)


def test_evaluate_reports_per_task(params_file):
    results = evaluate(['gripper', 'drive_to_marker'], episodes=2, params_file=params_file)
    assert set(results) == {'gripper', 'drive_to_marker'}
    for r in results.values():
        assert r['episodes'] == 2 and r['success_rate'] == 1.0


@pytest.mark.parametrize('task', TASK_NAMES)
def test_expert_succeeds_in_the_shipped_relative_space(params_file, shipped_action_space, task):
    """The expert's labels as joint deltas on the previous commanded target (shipped)."""
    robot = Robot()
    try:
        env = TaskEnv(robot)
        tokenizer = ActionTokenizer(shipped_action_space)
        pipeline = Pipeline(env, tokenizer, control_config(params_file))
        expert = ExpertDecider(robot, tokenizer)
        for seed in (100000, 100001):
            expert.reset(env.reset(task, seed))
            status = pipeline.run_episode(expert)
            assert status['success'], (task, seed, status)
    finally:
        robot.close()


@pytest.mark.parametrize('task', ['pick_block', 'place_in_bowl'])
def test_expert_grasps_again_when_the_block_leaves_its_fingers(setup, task):
    """
    A block taken from the closed fingers while lifting: the expert opens and grasps again.

    What a DAgger label needs when the learner closed the gripper beside the block: never
    lift or carry an empty gripper.
    """
    env, pipeline, expert, _ = setup
    episode = env.reset(task, 3)
    expert.reset(episode)
    robot = env.robot
    colour = episode.params['colour']
    start = np.array(episode.params['block_start'])
    phases, taken = [], []

    def on_tick(tick, tokens):
        phase = expert.expert.phase
        if not phases or phases[-1] != phase:
            phases.append(phase)
        lifted = robot.body_position(f'block_{colour}')[2] > start[2] + 0.03
        if phase == 'lift' and lifted and not taken:
            joint = robot.model.joint(f'block_{colour}')
            adr = joint.qposadr[0]  # back on the table, upright, 5 cm aside
            robot.data.qpos[adr:adr + 7] = np.concatenate([start + (0.0, 0.05, 0.0),
                                                           (1.0, 0.0, 0.0, 0.0)])
            robot.data.qvel[joint.dofadr[0]:joint.dofadr[0] + 6] = 0.0
            robot.mujoco.mj_forward(robot.model, robot.data)
            taken.append(tick)

    status = pipeline.run_episode(expert, on_tick)
    assert taken, phases
    assert status['success'], (' '.join(phases), str(status))
    # After the block was taken: back to the approach with the gripper open, then a grasp.
    after = phases[phases.index('lift') + 1:]
    assert after[:2] == ['start', 'pregrasp'] or after[:1] == ['pregrasp'], phases
    assert 'close' in after, phases


def test_expert_labels_carry_on_from_a_grasp_the_learner_made(setup):
    """
    DAgger: the learner grasped and lifted while the labelling expert was still approaching.

    The labels keep the gripper closed and lift; they never say "open and descend" to a
    policy that holds the block.
    """
    env, pipeline, _, tokenizer = setup
    episode = env.reset('pick_block', 3)
    robot = env.robot
    learner = ExpertDecider(robot, tokenizer)   # drives: grasps and lifts
    labeller = ExpertDecider(robot, tokenizer)  # starts late, as a lagging phase machine
    learner.reset(episode)
    start = np.array(episode.params['block_start'])
    colour = episode.params['colour']
    labels = []

    def decide(obs):
        tokens = learner(obs)
        lifted = robot.body_position(f'block_{colour}')[2] > start[2] + 0.02
        if lifted and not labels:
            labeller.reset(episode)  # phase 'start' with the block already in the fingers
        if labels or lifted:
            labeller.expert.anchor(obs.state[:7])
            labeller(obs)
            labels.append((labeller.expert.phase, labeller.last_values.copy()))
        return tokens

    pipeline.run_episode(decide)
    assert len(labels) >= 3, labels
    assert [phase for phase, _ in labels[:3]] == ['lift'] * 3, labels[:3]
    assert all(values[10] == 1.0 for _, values in labels), [v[10] for _, v in labels]
    assert all(values[2] >= 0.0 for _, values in labels[:3])  # up, not down to the table


@pytest.mark.parametrize('task', ['place_in_bowl', 'push_block'])
def test_expert_without_settling_never_holds_still_before_a_descent(setup, task):
    """
    settle=False: place's carry and push's approach flow into their descents.

    The settling expert holds the arm still (zero labels) over the bowl or beside the block
    until the arm catches up; without settling it succeeds as well, sooner, and its tool
    never stands still between the lift and the release (place) or before the push.
    """
    env, pipeline, _, tokenizer = setup
    waits = {}
    for settle in (True, False):
        expert = ExpertDecider(env.robot, tokenizer, pipeline.config.inference_period,
                               settle=settle)
        episode = env.reset(task, 4)
        expert.reset(episode)
        still, previous = [], [None]

        def decide(obs):
            tokens = expert(obs)
            target = expert.expert.q_target.copy()
            moving = previous[0] is None or np.abs(target - previous[0]).max() > 1e-6
            previous[0] = target
            # (phase_steps 0: the grasp's last tick, which named the next phase)
            if expert.expert.phase in ('lift', 'carry', 'above') and not moving \
                    and expert.expert.phase_steps > 0:
                still.append(expert.expert.phase)
            return tokens

        status = pipeline.run_episode(decide)
        assert status['success'], (settle, status)
        waits[settle] = still
    assert waits[True], 'the settling expert waits before its descent'
    assert waits[False] == [], waits[False]


def _composed_at(env, pipeline, decide, **kwargs):
    """Run an episode; return the sim times at which the detokenizer's rule composed."""
    times = []
    loop_target = pipeline.composer.compose

    def compose(*args, **kw):
        times.append(env.robot.time)
        return loop_target(*args, **kw)
    pipeline.composer.compose = compose
    try:
        pipeline.run_episode(decide, **kwargs)
    finally:
        del pipeline.composer.compose
    return times


def test_latency_delays_targets_and_max_in_flight_skips_decisions(setup):
    """The in-process latency model (``vla-ros eval --latency-ms/--max-in-flight``)."""
    env, pipeline, expert, _ = setup
    ticks = pipeline.ticks_per_target
    for latency, in_flight in ((0, 0), (ticks + 2, 0), (ticks + 2, 1)):
        episode = env.reset('drive_to_marker', 3)
        expert.reset(episode)
        decided = []
        targets = _composed_at(env, pipeline, expert, on_decision=lambda obs, tokens:
                               decided.append(obs.now), latency_ticks=latency,
                               max_in_flight=in_flight)
        period = pipeline.config.control_period
        # Each target is composed `latency` ticks after the frame it was decided on.
        assert len(targets) > 3 and len(decided) - len(targets) <= latency // ticks + 1, (
            targets, decided)
        gaps = np.subtract(targets, decided[:len(targets)])
        np.testing.assert_allclose(gaps, latency * period, atol=1e-6)
        steps = np.round(np.diff(decided) / period).astype(int)
        if in_flight:  # a decision waits for the one before: every second policy tick
            assert set(steps) == {2 * ticks}, steps
        else:
            assert set(steps) == {ticks}, steps


def test_whole_chunks_travel_as_one_and_their_steps_run_a_period_apart(setup):
    """``vla-ros eval --served-chunks``: a chunk's round trip once, its steps one per period."""
    env, pipeline, expert, _ = setup
    ticks = pipeline.ticks_per_target
    period = pipeline.config.control_period
    latency, k = ticks + 2, 3
    episode = env.reset('drive_to_marker', 3)
    expert.reset(episode)
    decided = []

    def chunk(obs):  # the expert's tokens now, repeated: a k-step chunk
        decided.append(obs.now)
        return np.tile(expert(obs), k)

    composed = _composed_at(env, pipeline, chunk, latency_ticks=latency, max_in_flight=1,
                            whole_chunks=True)
    assert len(decided) >= 3
    # Step j of a chunk is composed latency + j policy periods after its frame.
    for i, t in enumerate(decided[:-1]):
        mine = [c for c in composed if t < c + 1e-9 and c < decided[i + 1] + 1e-9]
        np.testing.assert_allclose(np.subtract(mine, t),
                                   [(latency + j * ticks) * period for j in range(k)],
                                   atol=1e-6)
    # The next frame goes out k policy ticks after the reply's tick (its steps, then one).
    frame = np.array(decided) - decided[0]  # on the policy tick grid
    arrival = frame[:-1] + latency * period
    first_tick_after = np.ceil(arrival / (ticks * period) - 1e-9) * ticks * period
    np.testing.assert_allclose(frame[1:] - first_tick_after, k * ticks * period, atol=1e-6)


@pytest.mark.parametrize('task', ['pick_block', 'place_in_bowl', 'push_block'])
def test_reactive_expert_solves_the_arm_tasks(setup, task):
    env, pipeline, _, tokenizer = setup
    expert = ExpertDecider(env.robot, tokenizer, pipeline.config.inference_period,
                           kind='reactive')
    for seed in (0, 1, 100000):
        episode = env.reset(task, seed)
        expert.reset(episode)
        status = pipeline.run_episode(expert)
        assert status['success'], (task, seed, status)


@pytest.mark.parametrize('task', ['pick_block', 'place_in_bowl', 'push_block'])
def test_reactive_expert_labels_depend_on_the_state_only(setup, task):
    """
    An expert that joins mid-episode labels every tick as the one that ran from the start.

    What DAgger needs of its labeller: the label is a function of what the state shows
    (the commanded target, the gripper, the objects), not of the expert's own history. The
    phase machine fails this (it waits, times out and remembers its phase).
    """
    env, pipeline, _, tokenizer = setup
    period = pipeline.config.inference_period
    driver = ExpertDecider(env.robot, tokenizer, period, kind='reactive')
    episode = env.reset(task, 2)
    driver.reset(episode)
    compared = []

    def decide(obs):
        tokens = driver(obs)
        newcomer = ExpertDecider(env.robot, tokenizer, period, kind='reactive')
        newcomer.reset(episode)
        compared.append((driver.expert.phase, tokens, newcomer(obs)))
        return tokens

    status = pipeline.run_episode(decide)
    assert status['success'], status
    phases = {phase for phase, _, _ in compared}
    assert {'pregrasp', 'push'} & phases and len(phases) >= 3, phases
    for tick, (phase, ours, theirs) in enumerate(compared):
        np.testing.assert_array_equal(ours, theirs, err_msg=f'tick {tick} ({phase})')


def test_expert_kind_is_checked(setup):
    env, _, _, tokenizer = setup
    with pytest.raises(ValueError, match='expert kind'):
        ExpertDecider(env.robot, tokenizer, kind='psychic')


@pytest.mark.parametrize('offset', [(0.03, 0.0, 0.0), (0.0, 0.0, 0.035)])
def test_reactive_expert_keeps_a_lifted_block_held_off_centre(setup, offset):
    """
    A lifted block off the tool's axis or deep in the fingers is still held.

    The label keeps the fingers closed; the centred test would call the gripper empty and
    label "open" in mid-air.
    """
    env, pipeline, _, tokenizer = setup
    driver = ExpertDecider(env.robot, tokenizer, pipeline.config.inference_period,
                           kind='reactive')
    episode = env.reset('place_in_bowl', 1)
    driver.reset(episode)
    robot = env.robot
    colour = episode.params['colour']
    checked = []

    def decide(obs):
        if not checked and driver.expert.phase == 'carry':
            joint = robot.model.joint(f'block_{colour}')
            adr = joint.qposadr[0]
            robot.data.qpos[adr:adr + 3] += offset  # the learner's grasp, between the fingers
            robot.mujoco.mj_forward(robot.model, robot.data)
            tokens = driver(obs)
            checked.append((ScriptedExpert._holding(driver.expert), driver.expert._holding(),
                            int(tokens[10]), driver.expert.phase))
            return tokens
        return driver(obs)

    pipeline.run_episode(decide)
    assert checked, 'the episode never reached the carry'
    centred, held, gripper_token, phase = checked[0]
    assert not centred and held, checked
    assert gripper_token >= tokenizer.space.gripper_threshold, checked
    assert phase in ('carry', 'lift', 'lower'), checked


def test_reactive_expert_release_zone_lets_an_offset_learner_lower(setup):
    """
    A learner that carries 2 cm off the aim is told to lower only by a wide release zone.

    The "learner" executes the expert's carry with 2 cm added along x (the DAgger state a
    policy that cannot aim within 8 mm reaches): with the default zone every label says
    "carry" and the block is never lowered; with ``release_xy`` 3 cm the label lowers (and
    re-aims while lowering) and the block lands in the bowl. Other experts and zones that
    would drop the block outside the bowl are refused.
    """
    env, pipeline, _, tokenizer = setup
    robot = env.robot
    bias = int(round(0.02 / tokenizer.space.bin_width[0]))
    phases = {}
    for zone in (None, 0.03):
        driver = ExpertDecider(robot, tokenizer, pipeline.config.inference_period,
                               kind='reactive', release_xy=zone)
        episode = env.reset('place_in_bowl', 2)
        driver.reset(episode)
        seen = []

        def decide(obs):
            tokens = driver(obs).copy()
            seen.append(driver.expert.phase)
            if driver.expert.phase == 'carry':
                tokens[0] = min(255, int(tokens[0]) + bias)
            return tokens

        status = pipeline.run_episode(decide)
        phases[zone] = (status['success'], seen.count('carry'), 'release' in seen)
    assert phases[None][:1] == (False,) and not phases[None][2], phases
    assert phases[0.03][0] and phases[0.03][2], phases
    assert phases[0.03][1] < phases[None][1], phases
    with pytest.raises(ValueError, match='reactive'):
        ExpertDecider(robot, tokenizer, kind='phases', release_xy=0.02)
    with pytest.raises(ValueError, match='bowl'):
        ExpertDecider(robot, tokenizer, kind='reactive', release_xy=0.07)


def test_reactive_expert_low_carry_places_without_lowering(setup):
    """
    ``place_carry`` 'low': the block travels at the release height and is let go over the bowl.

    Every place seed tried lands in the bowl, sooner than with the high carry; while the
    block is held above the table the commanded tool never rises more than 3 cm over the
    release height (the high carry lifts it 8 cm over), and no tick is a lowering; within
    8 cm of the bowl the carry moves at the slow speed.
    """
    env, pipeline, _, tokenizer = setup
    robot = env.robot
    times = {}
    for carry in ('high', 'low'):
        driver = ExpertDecider(robot, tokenizer, pipeline.config.inference_period,
                               kind='reactive', place_carry=carry, release_xy=0.03)
        times[carry] = []
        for seed in (2, 3, 4):
            episode = env.reset('place_in_bowl', seed)
            driver.reset(episode)
            bowl_z = robot.body_position('bowl')[2]
            seen, heights, near_steps = [], [], []

            def decide(obs):
                before = driver.expert.waypoint
                before = None if before is None else before.copy()
                tokens = driver(obs)
                seen.append(driver.expert.phase)
                if driver.expert.phase in ('carry', 'release'):
                    heights.append(driver.expert.waypoint[2] - bowl_z)
                    to_bowl = np.linalg.norm(before[:2] - robot.body_position('bowl')[:2])
                    if to_bowl < 0.08:
                        near_steps.append(np.linalg.norm(driver.expert.waypoint - before))
                return tokens

            status = pipeline.run_episode(decide)
            assert status['success'], (carry, seed, seen)
            times[carry].append(status['sim_time'])
            if carry == 'low':
                assert 'lower' not in seen and 'release' in seen, seen
                assert max(heights) < 0.10 + 0.03, max(heights)
                # Near the bowl the carry is SLOW: 2.4 cm of tool travel a decision (plus
                # the tool-delta bins' rounding), not FAST's 6 cm.
                slow_step = SLOW * pipeline.config.inference_period
                assert near_steps and max(near_steps) <= slow_step + 0.004, near_steps
            else:
                assert 'lower' in seen and max(heights) > 0.10 + 0.07, max(heights)
    assert sum(times['low']) < sum(times['high']), times
    with pytest.raises(ValueError, match='reactive'):
        ExpertDecider(robot, tokenizer, kind='phases', place_carry='low')
    with pytest.raises(ValueError, match='place_carry'):
        ExpertDecider(robot, tokenizer, kind='reactive', place_carry='middle')


def test_reactive_expert_axes_carry_limits_each_axis_and_places(setup):
    """
    ``place_carry`` 'axes': each carry step moves x and y by up to FAST a decision each.

    Every place seed tried lands in the bowl; no carry step moves an axis by more than
    FAST's 6 cm (the bins' rounding aside), and where both axes have far to go the step is
    diagonal, longer than the straight-line carry's 6 cm.
    """
    from vla_ros.sim.expert import FAST
    env, pipeline, _, tokenizer = setup
    robot = env.robot
    driver = ExpertDecider(robot, tokenizer, pipeline.config.inference_period,
                           kind='reactive', place_carry='axes')
    limit = FAST * pipeline.config.inference_period
    steps = []
    for seed in (2, 3, 4, 5):
        episode = env.reset('place_in_bowl', seed)
        driver.reset(episode)

        def decide(obs):
            tokens = driver(obs)  # observes (the waypoint is the commanded tool), then acts
            if driver.expert.phase == 'carry':
                here, _ = driver.expert.ik.forward(np.asarray(obs.state[:7], dtype=float))
                steps.append(driver.expert.waypoint[:2] - here[:2])
            return tokens

        status = pipeline.run_episode(decide)
        assert status['success'], seed
    steps = np.abs(np.array(steps))
    assert len(steps) and steps.max() <= limit + 1e-9, steps.max()
    assert np.linalg.norm(steps, axis=1).max() > limit + 0.01, steps


@pytest.mark.parametrize('roll', [(0.0, 0.0), (np.pi / 2, 0.0), (0.0, np.pi / 2)])
def test_block_yaw_is_a_horizontal_face_normal_whatever_face_it_rests_on(setup, roll):
    """A block that fell onto its side is grasped across two faces, not across corners."""
    env, _, _, _ = setup
    expert = ScriptedExpert(env.robot)
    episode = env.reset('pick_block', 0)
    expert.reset(episode)
    robot = env.robot
    adr = robot.model.joint(f'block_{episode.params["colour"]}').qposadr[0]
    yaw = 0.3

    mj = robot.mujoco

    def quat(axis, angle):
        q = np.zeros(4)
        mj.mju_axisAngle2Quat(q, np.asarray(axis, dtype=np.float64), angle)
        return q

    def mul(a, b):
        q = np.zeros(4)
        mj.mju_mulQuat(q, a, b)
        return q

    # Yaw about the world's vertical after a roll about the block's x or y axis.
    q = mul(quat((0, 0, 1), yaw), mul(quat((1, 0, 0), roll[0]), quat((0, 1, 0), roll[1])))
    robot.data.qpos[adr + 3:adr + 7] = q
    robot.mujoco.mj_forward(robot.model, robot.data)
    found = expert._block_yaw()
    # The grasp yaw has a quarter-turn symmetry.
    assert abs(np.angle(np.exp(4j * (found - yaw)))) < 1e-6, (roll, found)
