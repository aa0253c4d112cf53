"""
The in-process pipeline: the chain the ROS graph runs, stepped in lock step in one process.

    decider's tokens (what inference_node publishes) → ActionTokenizer.detokenize
    (detokenizer_node) → TargetComposer (core/targets.py) → ControlLoop at the control rate
    (interpolation_node, parameters from config/vla_ros.yaml) → simulated controllers.

A decider is any callable ``Observation -> 11 uint8 tokens``: the scripted expert
(``sim/expert.ExpertDecider``) or an exported policy (``learning/learner.LearnerDecider``).
Used by ``python -m vla_ros.sim.evaluate``, ``vla-ros collect``, ``eval`` and ``oracle``.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from vla_ros.core.action_space import ActionTokenizer, NUM_DIMENSIONS
from vla_ros.core.control import ControlConfig, ControlLoop
from vla_ros.core.targets import ComposerConfig, TargetComposer
from vla_ros.graph import node_params
from vla_ros.sim.robot import Robot
from vla_ros.sim.tasks import TaskEnv


def control_config(params_file: Optional[str] = None) -> ControlConfig:
    """Build the interpolation node's ControlConfig from its section of the params file."""
    return ControlConfig.from_params(node_params(params_file, 'interpolation_node'))


@dataclass
class Observation:
    """What the policy gets at one policy tick (and what a dataset frame records)."""

    now: float
    instruction: str
    state: np.ndarray            # previous commanded 11-D target (core/targets.py)
    joint_state: np.ndarray      # measured arm joints (7) + gripper closure
    image: Optional[np.ndarray]  # uint8 [300, 300, 3] when rendering, else None


class Pipeline:
    """Tokens → detokenize → compose → control loop → simulator, stepped in lockstep."""

    def __init__(self, env: TaskEnv, tokenizer: ActionTokenizer, config: ControlConfig,
                 composer: Optional[ComposerConfig] = None):
        if abs(config.control_period - env.control_period) > 1e-12:
            raise ValueError(f'control period {config.control_period} s of the control loop '
                             f'differs from the simulator period {env.control_period} s')
        self.env = env
        self.tokenizer = tokenizer
        self.config = config
        self.ticks_per_target = int(round(config.control_frequency
                                          / config.inference_frequency))
        self.composer = TargetComposer(tokenizer.space, composer)
        self.loop: Optional[ControlLoop] = None

    @classmethod
    def from_params(cls, tokenizer: ActionTokenizer, params_file: Optional[str] = None,
                    robot: Optional[Robot] = None) -> 'Pipeline':
        """
        Build the pipeline on a (new) robot at the rates of the parameters file.

        The simulator steps at the control loop's period and deciders run at
        ``config.inference_period``, both from interpolation_node's section.
        """
        config = control_config(params_file)
        env = TaskEnv(robot if robot is not None else Robot(), config.control_period)
        return cls(env, tokenizer, config)

    def start(self):
        """Fresh control loop that takes the measured state, as the node does at start-up."""
        robot = self.env.robot
        self.loop = ControlLoop(self.config)
        now = robot.time
        arm = robot.arm_positions()
        self.loop.start(arm, now, robot.gripper_closure())
        self.loop.set_enabled(True, arm, now)
        self.composer.reset()

    def observe(self, render: bool = False) -> Observation:
        """Return the policy's inputs now (the composer's previous target is the state)."""
        robot = self.env.robot
        now = robot.time
        arm, grip = robot.arm_positions(), robot.gripper_closure()
        return Observation(now=now, instruction=self.env.episode.instruction,
                           state=self.composer.previous(now, arm, grip),
                           joint_state=np.append(arm, grip),
                           image=robot.render() if render else None)

    def run_episode(self, decide: Callable[[Observation], np.ndarray],
                    on_tick: Optional[Callable[[int, np.ndarray], None]] = None,
                    render: bool = False,
                    on_decision: Optional[Callable[[Observation, np.ndarray], None]] = None,
                    extra_time: float = 0.0, latency_ticks: int = 0,
                    frame_age_ticks: int = 0, max_in_flight: int = 0,
                    whole_chunks: bool = False) -> Dict:
        """
        Run until success (plus ``extra_time`` s) or the time limit.

        ``decide(observation)`` returns the 11 uint8 tokens at the policy rate, as
        inference_node would publish them; they go through the detokenizer's compose rule
        and the interpolation node's control loop to the simulated controllers.

        ``latency_ticks`` > 0: the tokens decided on a frame reach the detokenizer that many
        control ticks later (composed then, on the arm measured then), as in the ROS graph,
        where a frame is 40-160 ms old when its tokens arrive, or with a remote policy.
        ``frame_age_ticks`` > 0: the policy sees the image rendered that many ticks before
        its decision (the state input is current), as inference_node sees the newest camera
        frame, taken before its own tick. ``max_in_flight`` > 0: no decision while that many
        are on their way (the policy tick is skipped), as the remote backend's limit does.

        ``whole_chunks``: ``decide`` returns a whole chunk (k x 11 tokens) that travels as
        one message, as a served chunked model's reply does: on arrival its steps run one per
        policy period, and the next decision waits for k more policy ticks (inference_node's
        remote backend, which publishes a reply between two ticks).
        """
        if latency_ticks < 0 or frame_age_ticks < 0:
            raise ValueError(f'latency_ticks and frame_age_ticks must be >= 0, got '
                             f'{latency_ticks} and {frame_age_ticks}')
        frames = {}  # decision tick → the image taken frame_age_ticks before it
        env = self.env
        self.start()
        tick = 0
        tokens = None
        in_flight = []  # (tick due, tokens): decided, not yet at the detokenizer
        steps = []      # (tick due, tokens) arrived, to compose when due
        wait = 0        # whole_chunks: policy ticks still to let pass
        success_at = None
        while True:
            if env.episode.success and success_at is None:
                success_at = env.robot.time
            if (env.elapsed >= env.episode.time_limit - 1e-9 or (
                    success_at is not None and env.robot.time - success_at >= extra_time - 1e-9)):
                break
            robot = env.robot
            now = robot.time
            arm, grip = robot.arm_positions(), robot.gripper_closure()
            self.loop.on_measured(arm, now)  # as joint_states does
            due = tick + frame_age_ticks
            if render and frame_age_ticks and due % self.ticks_per_target == 0:
                frames[due] = env.robot.render()
            policy_tick = tick % self.ticks_per_target == 0
            if policy_tick and wait > 0:
                wait -= 1
                frames.pop(tick, None)  # skipped: the chunk's steps are running
            elif policy_tick and max_in_flight and len(in_flight) >= max_in_flight:
                frames.pop(tick, None)  # skipped: the remote backend waits for its reply
            elif policy_tick:
                obs = self.observe(render and tick not in frames)
                if tick in frames:
                    obs.image = frames.pop(tick)
                tokens = np.asarray(decide(obs), dtype=np.uint8)
                in_flight.append((tick + latency_ticks, tokens))
                if on_decision is not None:
                    on_decision(obs, tokens)
            while in_flight and in_flight[0][0] <= tick:
                arrived = in_flight.pop(0)[1]
                if whole_chunks:  # a newer chunk replaces the steps left
                    chunk = arrived.reshape(-1, NUM_DIMENSIONS)
                    steps = [(tick + j * self.ticks_per_target, s) for j, s in enumerate(chunk)]
                    wait = len(chunk) if len(chunk) > 1 else 0
                else:
                    steps.append((tick, arrived))
            while steps and steps[0][0] <= tick:
                target = self.composer.compose(self.tokenizer.detokenize(steps.pop(0)[1]), now,
                                               arm, grip)
                self.loop.on_target(target[:7], target[7:10], target[10], now)
            cmd = self.loop.tick(now)
            env.apply(cmd.arm_positions, cmd.base_velocity, cmd.gripper)
            if on_tick is not None:
                on_tick(tick, tokens)
            env.control_step()
            tick += 1
        status = env.status()
        status['sim_time'] = round(env.elapsed if success_at is None
                                   else success_at - env.episode.start_time, 3)
        return status
