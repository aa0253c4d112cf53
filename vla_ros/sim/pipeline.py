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

from vla_ros.core.action_space import ActionTokenizer
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
                    extra_time: float = 0.0) -> Dict:
        """
        Run until success (plus ``extra_time`` s) or the time limit.

        ``decide(observation)`` returns the 11 uint8 tokens at the policy rate, as
        inference_node would publish them; they go through the detokenizer's compose rule
        and the interpolation node's control loop to the simulated controllers.
        """
        env = self.env
        self.start()
        tick = 0
        tokens = None
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
            if tick % self.ticks_per_target == 0:
                obs = self.observe(render)
                tokens = np.asarray(decide(obs), dtype=np.uint8)
                target = self.composer.compose(self.tokenizer.detokenize(tokens), now, arm, grip)
                self.loop.on_target(target[:7], target[7:10], target[10], now)
                if on_decision is not None:
                    on_decision(obs, tokens)
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
