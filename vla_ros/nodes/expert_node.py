"""
expert_node: the scripted expert as a token source, in place of inference_node (simulation).

It reads ``sim/state`` (vla_ros_interfaces/SimState: the episode, every robot joint, the
placed bodies; sim_node publishes it with ``publish_sim_state``), rebuilds that world on its
own copy of the MuJoCo model (kinematics only, no physics step), runs the scripted expert
(``sim/expert.py``) and publishes ``vla/action_tokens`` stamped with the state's time: what
inference_node publishes, so the detokenizer, interpolator and controllers downstream are
the same as with the policy.

One decision per state message (sim_node publishes them at ``inference_frequency`` on the
policy's time grid), never two within half a period. A state naming another episode (task,
seed, start) restarts the expert: it draws the same episode from (task, seed) as sim_node
did. Arm labels are relative to the previous commanded target with the detokenizer's rule
(``core/targets.py``): the target the detokenizer published on ``vla/target`` (as
inference_node's state input), else the expert's own last one, else the measured arm. Without
the published one, the first decision of an episode could be labelled against the measured
arm while the detokenizer added it to the last episode's target, an offset that no later
step removed. Each arm target stays within
``max_target_deviation - LEAD_MARGIN`` of the measured joint: the detokenizer judges its
fall-back to the measured arm on joint_states a few milliseconds newer than the state, and
near the threshold the two sides disagreed (the labels were then added to another base; the
expert inside sim_node had seen the same joint_states as the detokenizer). A malformed state
(unknown joint or body, non-finite values, unknown task) is counted and warned about, and
nothing is published: the interpolator holds, as it does when inference stops.
"""

from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from vla_ros_interfaces.msg import ActionTarget, ActionTokens, SimState

from .common import (COMMAND_QOS, ConfigError, declare_all, Diagnostics, exit_with, run)
from ..conversions import msg_to_sim_state, msg_to_target, tokens_to_msg
from ..core.action_space import ActionSpace, ActionSpaceError, ActionTokenizer
from ..core.params import default_period
from ..core.targets import ComposerConfig, TargetComposer
from ..paths import default_action_space_file
from ..sim.expert import ExpertDecider
from ..sim.pipeline import Observation
from ..sim.robot import ARM_JOINTS, DEFAULT_MODEL, Robot
from ..sim.tasks import TASK_NAMES, TaskEnv

# How far (rad) inside max_target_deviation the expert's arm targets stay.
LEAD_MARGIN = 0.1


@dataclass(frozen=True)
class ExpertParams:
    """Validated parameters of expert_node."""

    model_file_path: str
    expert: str
    action_space_file: str
    inference_frequency: float
    target_timeout: float
    max_target_deviation: float


class ExpertNode(Node):
    """Decides the scripted expert's tokens from the simulator's ground truth."""

    def __init__(self):
        super().__init__('expert_node')
        p = self.params = ExpertParams(**declare_all(self, 'expert_node'))
        try:
            space = ActionSpace.from_yaml(p.action_space_file or default_action_space_file())
            self.composer = TargetComposer(space, ComposerConfig(p.target_timeout,
                                                                 p.max_target_deviation))
        except (ActionSpaceError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        try:
            self.robot = Robot(p.model_file_path or DEFAULT_MODEL)
        except Exception as exc:  # OSError, ValueError, mujoco.FatalError
            raise ConfigError(f'cannot load model {p.model_file_path!r}: {exc}') from exc
        self.tokenizer = ActionTokenizer(space)
        self.period = 1.0 / p.inference_frequency
        tuned = default_period('expert_node', 'inference_frequency')
        if abs(self.period - tuned) > 1e-9:
            self.get_logger().warn(f'the expert is tuned for {1 / tuned:g} Hz; '
                                   f'inference_frequency is {p.inference_frequency:g} Hz')
        self.env = TaskEnv(self.robot)
        try:
            self.expert = ExpertDecider(
                self.robot, self.tokenizer, self.period, kind=p.expert,
                lead_limit=max(0.05, p.max_target_deviation - LEAD_MARGIN))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._episode_key = None
        self._last_ns = None
        self.diag = Diagnostics(self)
        self._pub = self.create_publisher(ActionTokens, 'vla/action_tokens', COMMAND_QOS)
        self.create_subscription(SimState, 'sim/state', self._on_state, COMMAND_QOS)
        self.create_subscription(ActionTarget, 'vla/target', self._on_target, COMMAND_QOS)
        self.get_logger().info('scripted expert: sim/state → vla/action_tokens')

    def _reject(self, why: str):
        n = self.diag.count('states_rejected')
        self.get_logger().warn(f'rejecting sim/state ({n} so far): {why}',
                               throttle_duration_sec=2.0)

    def _on_target(self, msg: ActionTarget):
        try:
            target, stamp_ns = msg_to_target(msg, ARM_JOINTS, self.tokenizer.space.identity)
            # Timed by its source stamp, the sim time of the state it was decided on.
            self.composer.observe(target, (stamp_ns or 0) * 1e-9)
            self.diag.count('targets_observed')
        except ValueError as exc:
            n = self.diag.count('targets_rejected')
            self.get_logger().warn(f'ignoring vla/target ({n} so far): {exc}',
                                   throttle_duration_sec=2.0)

    def _on_state(self, msg: SimState):
        try:
            world = msg_to_sim_state(msg)
            if world.task not in TASK_NAMES:
                raise ValueError(f'unknown task {world.task!r} (known: {TASK_NAMES})')
            key = (world.task, world.seed, world.episode_start_ns)
            if key != self._episode_key or world.stamp_ns < (self._last_ns or 0):
                # The episode as sim_node drew it, then the expert starts on it from the
                # episode's initial state, as it would inside the simulator. The previous
                # target is kept: the detokenizer keeps it too, and the rule decides.
                self.expert.reset(self.env.reset(world.task, world.seed))
                self._episode_key, self._last_ns = key, None
            elif world.stamp_ns - self._last_ns < 0.5e9 * self.period:
                self.diag.count('states_skipped')  # faster than the policy rate
                return
            self.robot.restore(world.joints, world.bodies)
        except ValueError as exc:
            # Whatever the mirror holds now, the next good state overwrites it entirely.
            self._episode_key = None
            return self._reject(str(exc))
        self._last_ns = world.stamp_ns
        self._publish(world.stamp_ns, msg.header.frame_id)

    def _publish(self, stamp_ns: int, frame_id: str):
        now = stamp_ns * 1e-9
        robot = self.robot
        arm, grip = robot.arm_positions(), robot.gripper_closure()
        state = self.composer.previous(now, arm, grip)
        tokens = self.expert(Observation(now, self.env.episode.instruction, state,
                                         np.append(arm, grip), None))
        self.composer.compose(self.tokenizer.detokenize(tokens), now, arm, grip)
        self._pub.publish(tokens_to_msg(tokens, stamp_ns, self.tokenizer.space.identity,
                                        frame_id))
        self.diag.count('published')


def main(args=None):
    """Run expert_node."""
    exit_with(run(ExpertNode, args))


if __name__ == '__main__':
    main()
