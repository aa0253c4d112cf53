"""
detokenizer_node: vla/action_tokens (ActionTokens) → vla/target (ActionTarget).

One message in, one whole 11-D target out (arm positions, base twist, gripper), carrying
the source camera stamp and the action-space identity. Tokens of the wrong length, of
another action space, or unstamped are rejected with a throttled warning and a counter;
nothing is published for them.

With a relative arm (the shipped ``tool_delta`` space: tool-pose deltas turned into joints by
IK; or ``delta_position``: joint deltas) the arm values move the arm target this node
published one policy step earlier; that previous target falls back
to the measured joints (``joint_states``) when it is older than ``target_timeout`` or more
than ``max_target_deviation`` from the measured arm (``core/targets.py``). Without a
recent joint_states message, relative tokens are rejected: nothing moves. While
interpolation_node says motion is off (``vla/motion_enabled`` false: gate closed, e-stop,
inactive) the arm does not follow targets, so every relative action starts from the
measured arm instead of chaining on targets that were never executed; without that topic
(another executor downstream) the node composes as above.

An action chunk (k x 11 tokens from a model that predicts k steps per frame) is executed
one step per policy period (``core/step_queue.py``): step 0 on arrival, step j j periods
later, stamped with the source stamp plus j periods, each composed on the target of the
step before it, so the interpolator judges every step's staleness on its own. Steps that
come due together (the release timer ran late) are all composed and only the newest
target is published, so no relative step's motion is lost; a newer chunk replaces the
steps left of the previous one, and an older chunk is refused; all three are counted.
When ``vla/motion_enabled`` changes, the steps left are dropped (counted): they were
planned on a frame and a state from the other side of the change.
"""

from dataclasses import dataclass
from typing import Tuple

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

from .common import (COMMAND_QOS, ConfigError, declare_all, Diagnostics, exit_with,
                     LATCHED_QOS, now_s, RepeatLog, run, SENSOR_QOS)
from ..conversions import joint_positions, msg_to_tokens, target_to_msg
from ..core.action_space import (ActionSpace, ActionSpaceError, ActionTokenizer,
                                 check_arm_joint_names, NUM_DIMENSIONS)
from ..core.model_contract import MAX_CHUNK_STEPS
from ..core.stats import RateMonitor
from ..core.step_queue import StepQueue
from ..core.targets import ComposerConfig, TargetComposer
from ..paths import default_action_space_file


@dataclass(frozen=True)
class DetokenizerParams:
    """Validated parameters of detokenizer_node."""

    action_space_file: str
    arm_joint_names: Tuple[str, ...]
    base_frame_id: str
    inference_frequency: float
    gripper_joint_name: str
    target_timeout: float
    max_target_deviation: float
    state_timeout: float

    def __post_init__(self):
        try:
            check_arm_joint_names(self.arm_joint_names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


class DetokenizerNode(Node):
    """Turns bins into physical targets with the configured action space."""

    def __init__(self):
        super().__init__('detokenizer_node')
        values = declare_all(self, 'detokenizer_node')
        values['action_space_file'] = values['action_space_file'] or default_action_space_file()
        values['arm_joint_names'] = tuple(values['arm_joint_names'])
        p = self.params = DetokenizerParams(**values)
        try:
            self.tokenizer = ActionTokenizer(ActionSpace.from_yaml(p.action_space_file))
        except ActionSpaceError as exc:
            raise ConfigError(str(exc)) from exc
        space = self.tokenizer.space
        self.get_logger().info(f'action space {p.action_space_file} (scheme {space.scheme}, '
                               f'arm {space.arm_kind})')
        try:
            self.composer = TargetComposer(space, ComposerConfig(p.target_timeout,
                                                                 p.max_target_deviation))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._measured = None
        self._measured_at = -1e18
        # interpolation_node's vla/motion_enabled; None until it speaks (compose as usual).
        self._motion_enabled = None
        self._gripper = 0.0
        self._resync_log = RepeatLog(self.get_logger().info)
        self.diag = Diagnostics(self)
        self._rate = RateMonitor(p.inference_frequency)
        self._space_id = space.identity
        # Chunk steps wait here for their due time; the release timer exists once a chunk
        # of more than one step has come (single-step tokens are released on arrival).
        period = 1.0 / p.inference_frequency
        self._steps = StepQueue(period, tolerance_s=period / 8)
        self._step_timer = None
        self._pub = self.create_publisher(ActionTarget, 'vla/target', COMMAND_QOS)
        self.create_subscription(ActionTokens, 'vla/action_tokens', self._on_tokens,
                                 COMMAND_QOS)
        if space.relative_arm:
            self.create_subscription(JointState, 'joint_states', self._on_joint_states,
                                     SENSOR_QOS)
            self.create_subscription(Bool, 'vla/motion_enabled', self._on_motion_enabled,
                                     LATCHED_QOS)
        self.create_timer(1.0, self._report)

    def _reject(self, why: str):
        n = self.diag.count('rejected')
        self.get_logger().warn(f'rejecting action tokens ({n} so far): {why}',
                               throttle_duration_sec=2.0)

    def _on_joint_states(self, msg: JointState):
        try:
            self._measured = joint_positions(msg, self.params.arm_joint_names)
        except ValueError as exc:
            n = self.diag.count('joint_states_rejected')
            self.get_logger().warn(f'rejecting joint_states ({n} so far): {exc}',
                                   throttle_duration_sec=5.0)
            return
        self._measured_at = now_s(self)
        name = self.params.gripper_joint_name
        if name in msg.name:
            grip = float(msg.position[list(msg.name).index(name)])
            if grip == grip:  # not NaN
                self._gripper = grip

    def _on_motion_enabled(self, msg: Bool):
        enabled = bool(msg.data)
        if enabled != self._motion_enabled:
            self.get_logger().info('motion enabled: relative actions chain on the targets'
                                   if enabled else 'motion off: relative actions start from '
                                   'the measured arm')
            # The target composed while the arm was held was never executed: the first one
            # after the gate opens starts from the measured arm too.
            self.composer.reset()
            # Nor is a chunk planned on the other side of the change a plan for the robot
            # now (a frame from before an episode reset, an arm that was held): its steps
            # left are dropped, and inference_node predicts afresh at its next tick.
            if self._steps.pending:
                n = self.diag.count('chunk_steps_dropped_at_gate', len(self._steps.pending))
                self.get_logger().info(f'motion gate changed: {len(self._steps.pending)} '
                                       f'chunk step(s) left dropped ({n} so far)')
                self._steps.reset()
        self._motion_enabled = enabled
        self.diag.set('motion_enabled', enabled)

    def _on_tokens(self, msg: ActionTokens):
        now = now_s(self)
        self._rate.tick(now)
        try:
            tokens, stamp_ns = msg_to_tokens(msg, NUM_DIMENSIONS, self._space_id,
                                             max_steps=MAX_CHUNK_STEPS)
            steps = [self.tokenizer.detokenize(t) for t in tokens.reshape(-1, NUM_DIMENSIONS)]
        except ValueError as exc:
            return self._reject(str(exc))
        if stamp_ns is None:
            return self._reject('unstamped tokens (header.stamp 0): the source camera stamp '
                                'is what the interpolator judges staleness by')
        replaced = self._steps.replaced
        try:
            self._steps.put(steps, stamp_ns, int(round(now * 1e9)))
        except ValueError as exc:
            self.diag.count('chunks_out_of_order')
            return self._reject(str(exc))
        if self._steps.replaced != replaced:
            self.diag.set('chunk_steps_replaced', self._steps.replaced)
        if len(steps) > 1:
            self.diag.count('chunks')
            if self._step_timer is None:
                period = 1.0 / self.params.inference_frequency
                self._step_timer = self.create_timer(period / 4, self._release_due)
        self._release_due()

    def _release_due(self):
        """Execute the chunk steps whose time has come: all composed, the newest published."""
        now = now_s(self)
        late = self._steps.late
        steps = self._steps.release(int(round(now * 1e9)))
        if self._steps.late != late:
            n = self._steps.late
            self.diag.set('chunk_steps_late', n)
            self.get_logger().warn(f'chunk steps came due together ({n} merged so far): each '
                                   'is composed, only the newest target is published',
                                   throttle_duration_sec=2.0)
        for i, step in enumerate(steps):
            self._execute(step.values, step.stamp_ns, now, publish=i == len(steps) - 1)

    def _execute(self, values, stamp_ns: int, now: float, publish: bool = True):
        """Compose one step's values into a target and publish it stamped ``stamp_ns``."""
        if self.tokenizer.space.relative_arm:
            if self._measured is None or now - self._measured_at > self.params.state_timeout:
                return self._reject('relative arm tokens need a recent joint_states message '
                                    f'(state_timeout {self.params.state_timeout} s)')
            if self._motion_enabled is False:  # the arm is held: no target was executed
                self.composer.reset()
            resyncs, unreachable = self.composer.resyncs, self.composer.unreachable
            try:
                values = self.composer.compose(values, now, self._measured, self._gripper)
            except ValueError as exc:  # e.g. a measured arm no target can be composed on
                return self._reject(str(exc))
            if self.composer.unreachable != unreachable:
                # Tool deltas: the IK refused the pose, the arm holds its previous target.
                n = self.diag.count('tool_target_unreachable')
                self.get_logger().warn(f'arm held ({n} so far): '
                                       f'{self.composer.unreachable_reason}',
                                       throttle_duration_sec=2.0)
            if self.composer.resyncs != resyncs:
                self.diag.count('resynced_to_measured')
                # Every message while the arm does not follow (motion disabled): logged
                # when it starts, then with a count, never once per message.
                self._resync_log(f'relative arm actions start from the measured arm: '
                                 f'{self.composer.reason}')
        if not publish:  # an earlier step of a late chunk: composed, not sent on its own
            return
        self._pub.publish(target_to_msg(values, stamp_ns, self.params.arm_joint_names,
                                        self._space_id, self.params.base_frame_id))
        self.diag.count('published')

    def _report(self):
        self.diag.set('rate_hz', self._rate.summary()['rate_hz'])


def main(args=None):
    """Run detokenizer_node."""
    exit_with(run(DetokenizerNode, args))


if __name__ == '__main__':
    main()
