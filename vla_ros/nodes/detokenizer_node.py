"""
detokenizer_node: vla/action_tokens (11 × uint8) → arm, base and gripper targets.

Outputs keep the source image stamp. Arrays of the wrong length or with a malformed layout
are rejected with a throttled warning and a counter; nothing is published for them.
"""

from dataclasses import dataclass
from typing import Tuple

from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from std_msgs.msg import Float64, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from .common import (COMMAND_QOS, ConfigError, declare, Diagnostics, exit_with, now_s, run,
                     STRING_ARRAY)
from ..conversions import duration_msg, msg_to_tokens, ns_to_time
from ..core.action_space import (ActionSpace, ActionSpaceError, ActionTokenizer, ARM, BASE,
                                 check_arm_joint_names, DEFAULT_ARM_JOINTS, GRIPPER,
                                 NUM_DIMENSIONS)
from ..core.stats import RateMonitor
from ..paths import default_action_space_file


@dataclass(frozen=True)
class DetokenizerParams:
    """Validated parameters of detokenizer_node."""

    action_space_file: str
    arm_joint_names: Tuple[str, ...]
    base_frame_id: str
    inference_frequency: float

    def __post_init__(self):
        try:
            check_arm_joint_names(self.arm_joint_names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not self.inference_frequency > 0:
            raise ConfigError(f'inference_frequency must be > 0, found '
                              f'{self.inference_frequency}')


class DetokenizerNode(Node):
    """Turns bins into physical targets with the configured action space."""

    def __init__(self):
        super().__init__('detokenizer_node')
        p = self.params = DetokenizerParams(
            action_space_file=declare(self, 'action_space_file', default_action_space_file(),
                                      'Action space YAML (bounds, binning scheme).'),
            arm_joint_names=tuple(declare(self, 'arm_joint_names', DEFAULT_ARM_JOINTS,
                                          'Joint names of the 7 arm dimensions, in order.',
                                          type_=STRING_ARRAY)),
            base_frame_id=declare(self, 'base_frame_id', 'base_link', 'frame_id of the base '
                                  'velocity target.'),
            inference_frequency=declare(self, 'inference_frequency', 5.0, 'Policy rate in Hz '
                                        '(a target is meant to be reached in one period).',
                                        low=0.1, high=100.0),
        )
        try:
            self.tokenizer = ActionTokenizer(ActionSpace.from_yaml(p.action_space_file))
        except ActionSpaceError as exc:
            raise ConfigError(str(exc)) from exc
        self.get_logger().info(f'action space {p.action_space_file} '
                               f'(scheme {self.tokenizer.space.scheme})')
        period = 1.0 / p.inference_frequency
        self._segment = duration_msg(period)
        self.diag = Diagnostics(self)
        self._rate = RateMonitor(p.inference_frequency)
        self._arm_pub = self.create_publisher(JointTrajectory, 'vla/arm_target', COMMAND_QOS)
        self._base_pub = self.create_publisher(TwistStamped, 'vla/base_target', COMMAND_QOS)
        self._grip_pub = self.create_publisher(Float64, 'vla/gripper_target', COMMAND_QOS)
        self.create_subscription(UInt8MultiArray, 'vla/action_tokens', self._on_tokens,
                                 COMMAND_QOS)
        self.create_timer(1.0, self._report)

    def _reject(self, why: str):
        n = self.diag.count('rejected')
        self.get_logger().warn(f'rejecting action tokens ({n} so far): {why}',
                               throttle_duration_sec=2.0)

    def _on_tokens(self, msg: UInt8MultiArray):
        self._rate.tick(now_s(self))
        try:
            tokens, stamp_ns = msg_to_tokens(msg, NUM_DIMENSIONS)
            values = self.tokenizer.detokenize(tokens)
        except ValueError as exc:
            return self._reject(str(exc))
        stamp = ns_to_time(stamp_ns) if stamp_ns is not None else \
            self.get_clock().now().to_msg()
        # Base and gripper first: the interpolator pairs them with the arm target that
        # follows, so a consumer reacting to the arm sees a complete 11-D target.
        base = TwistStamped()
        base.header.stamp = stamp
        base.header.frame_id = self.params.base_frame_id
        vx, vy, wz = (float(v) for v in values[BASE])
        base.twist.linear.x, base.twist.linear.y, base.twist.angular.z = vx, vy, wz
        self._base_pub.publish(base)
        self._grip_pub.publish(Float64(data=float(values[GRIPPER])))
        arm = JointTrajectory()
        arm.header.stamp = stamp
        arm.joint_names = list(self.params.arm_joint_names)
        arm.points = [JointTrajectoryPoint(positions=[float(v) for v in values[ARM]],
                                           time_from_start=self._segment)]
        self._arm_pub.publish(arm)
        self.diag.count('published')

    def _report(self):
        self.diag.set('rate_hz', self._rate.summary()['rate_hz'])


def main(args=None):
    """Run detokenizer_node."""
    exit_with(run(DetokenizerNode, args))


if __name__ == '__main__':
    main()
