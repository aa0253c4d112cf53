"""
interpolation_node: 5 Hz targets → smooth, limited 20 Hz controller commands.

Every input callback is a few microseconds of bookkeeping, so one single-threaded executor
serves them and the control timer without delaying it (rclpy's MultiThreadedExecutor was
measured to stall the timer for hundreds of ms; see nodes/common.run). The groups are kept
so the node still behaves if composed into a multi-threaded executor.

All rules (limits, watchdog, e-stop, enable gate) live in ``core.control.ControlLoop``; this
node wires topics to it and stamps commands at publish time (controllers such as
diff_drive_controller drop stale stamps).

A managed (lifecycle) node, as ros2_control controllers are. Unconfigured it has no
endpoints and commands nothing; ``configure`` makes the control loop, endpoints and timers
and ``cleanup`` / ``shutdown`` release them. Inactive (after configure, again after
deactivate) it holds — the arm brakes to rest at the measured pose, the base ramps to zero,
targets are ignored. Active, targets move the robot while the operator's gate
(``vla/enable``, the latched e-stop) is open. ``cleanup`` and ``shutdown`` are carried out
(and answered) only once the base is at rest and the arm stands still: the node brakes
first, as on deactivate (``nodes/managed.py``); a request the current state cannot take is
refused and changes nothing. lifecycle_manager configures and activates it.
``vla/motion_enabled`` (latched Bool) says whether targets move the robot now; it changes
with the gate, the e-stop and the lifecycle state.

Length (over 300 lines): the rules live in core/control.py; the length is the node wiring
(inputs, lifecycle, the lost-clock timer, command and marker publishing, diagnostics).
"""

from dataclasses import dataclass
import threading
import time
from typing import Dict, List, Optional, Tuple

from geometry_msgs.msg import Twist, TwistStamped
import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray
from vla_ros_interfaces.msg import ActionTarget

from .common import (COMMAND_QOS, ConfigError, declare_all, Diagnostics, exclusive_group,
                     exit_with, LATCHED_QOS, now_s, QOS_OVERRIDABLE, run, SENSOR_QOS)
from .managed import ManagedNode, STOPPING
from ..conversions import duration_msg, msg_to_target
from ..core.action_space import check_arm_joint_names
from ..core.control import (ClockWatchdog, Command, ControlConfig, ControlLoop, joint_indices,
                            StaleTarget)
from ..core.stats import RateMonitor, WindowStats

ARM_OUTPUTS = ('commands', 'joint_trajectory')


@dataclass(frozen=True)
class InterpolationParams:
    """Validated parameters of interpolation_node."""

    control: ControlConfig
    arm_joint_names: Tuple[str, ...]
    arm_output: str
    cmd_vel_stamped: bool
    base_frame_id: str
    start_enabled: bool
    marker_frequency: float

    def __post_init__(self):
        try:
            check_arm_joint_names(self.arm_joint_names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.arm_output not in ARM_OUTPUTS:
            raise ConfigError(f'arm_output must be one of {ARM_OUTPUTS}, found '
                              f'{self.arm_output!r}')


class InterpolationNode(ManagedNode):
    """The 20 Hz loop between the policy and the controllers."""

    def __init__(self):
        super().__init__('interpolation_node')
        values = declare_all(self, 'interpolation_node')
        try:
            control = ControlConfig.from_params(values)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.params = InterpolationParams(
            control=control, arm_joint_names=tuple(values['arm_joint_names']),
            **{k: values[k] for k in ('arm_output', 'cmd_vel_stamped', 'base_frame_id',
                                      'start_enabled', 'marker_frequency')})
        self._lock = threading.Lock()
        self.diag = Diagnostics(self)
        self.diag.reason = 'unconfigured: commanding nothing (waiting for configure)'
        self.loop: Optional[ControlLoop] = None
        self._endpoints: List[object] = []
        self._stopping = False
        self._active = False
        self._want_enabled = self.params.start_enabled

    # -- lifecycle: unconfigured = silent, inactive = holding, active = executing -------
    def on_configure(self, state) -> TransitionCallbackReturn:
        """Make the control loop, the endpoints and the timers; hold until activated."""
        p, control = self.params, self.params.control
        self.loop = ControlLoop(control)
        self._measured: Optional[np.ndarray] = None
        self._index_cache: Dict[Tuple[str, ...], object] = {}
        self._pending_latency: Optional[int] = None
        self._last_rejection: Tuple[float, str] = (-1e9, '')
        self._instruction = ''
        self._rate = RateMonitor(control.control_frequency)
        self._latency_ms = WindowStats(1000)
        self._tick_ms = WindowStats(1000)
        self._stopping = False
        self._active = False
        self._want_enabled = p.start_enabled

        qos = QOS_OVERRIDABLE  # the robot-facing endpoints: QoS settable from YAML
        if p.arm_output == 'commands':
            self._arm_pub = self.create_publisher(Float64MultiArray, 'arm_controller/commands',
                                                  COMMAND_QOS, qos_overriding_options=qos)
        else:
            self._arm_pub = self.create_publisher(JointTrajectory,
                                                  'arm_controller/joint_trajectory',
                                                  COMMAND_QOS, qos_overriding_options=qos)
        self._base_pub = self.create_publisher(TwistStamped if p.cmd_vel_stamped else Twist,
                                               'cmd_vel', COMMAND_QOS,
                                               qos_overriding_options=qos)
        self._grip_pub = self.create_publisher(Float64MultiArray,
                                               'gripper_controller/commands', COMMAND_QOS,
                                               qos_overriding_options=qos)
        self._marker_pub = self.create_publisher(MarkerArray, 'vla/markers', 10)
        # Latched: whether targets move the robot now (gate, e-stop, lifecycle). The
        # detokenizer composes relative actions on the measured arm while this is false.
        self._gate_pub = self.create_publisher(Bool, 'vla/motion_enabled', LATCHED_QOS)
        self._gate_said: Optional[bool] = None

        inputs = exclusive_group()
        sub = self.create_subscription
        made = [self._arm_pub, self._base_pub, self._grip_pub, self._marker_pub, self._gate_pub,
                sub(JointState, 'joint_states', self._on_joint_states, SENSOR_QOS,
                    callback_group=inputs, qos_overriding_options=qos),
                sub(ActionTarget, 'vla/target', self._on_target, COMMAND_QOS,
                    callback_group=inputs),
                # Latched: a re-configured node gets a standing e-stop again.
                sub(Bool, 'vla/estop', self._on_estop, LATCHED_QOS, callback_group=inputs),
                sub(String, 'vla/instruction', self._on_instruction, LATCHED_QOS,
                    callback_group=inputs),
                self.create_service(SetBool, 'vla/enable', self._on_enable,
                                    callback_group=inputs)]
        control_group = exclusive_group()
        made.append(self.create_timer(control.control_period, self._tick,
                                      callback_group=control_group))
        # A timer on ROS time stalls with /clock; this one runs on the steady clock and takes
        # over (base to zero, arm braked) when ROS time stops moving.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._clock_watch = ClockWatchdog(control.clock_timeout)
        self._clock_frozen = False
        made += [self.create_timer(control.control_period, self._watch_clock,
                                   callback_group=control_group, clock=steady),
                 self.create_timer(1.0 / p.marker_frequency, self._publish_markers,
                                   callback_group=inputs),
                 self.create_timer(1.0, self._report, callback_group=inputs, clock=steady)]
        self._endpoints = made
        self._say_gate()
        self.diag.reason = 'inactive: holding (waiting for activate)'
        self.get_logger().info(
            f'{control.control_frequency:g} Hz {control.interpolation} interpolation, '
            f'command_timeout {control.command_timeout} s, arm output {p.arm_output}, motion '
            f'{"enabled" if p.start_enabled else "disabled until vla/enable"}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Let targets move the robot (when the vla/enable gate is also open)."""
        with self._lock:
            self._active = True
            self._sync_gate()
        self.get_logger().info('active: targets are executed while vla/enable is on')
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Hold: the arm brakes to rest, the base ramps to zero, targets are ignored."""
        with self._lock:
            self._active = False
            self._sync_gate()
        self.get_logger().info('inactive: holding')
        return super().on_deactivate(state)

    def hold_transition(self, transition: int, label: str) -> bool:
        """
        Hold cleanup and shutdown until the robot is at rest (``ManagedNode``).

        The gate closes now (targets ignored, the arm brakes to rest, the base ramps to zero
        within its deceleration limit); the control ticks carry on, and the transition runs
        and is answered at the first tick that leaves base and arm at rest. A node that
        commands nothing (unconfigured, or no joint_states yet) goes at once.
        """
        if transition not in STOPPING or self._at_rest():
            return False
        with self._lock:
            self._stopping = True
            self._sync_gate()
        self.diag.reason = 'stopping: base ramping to zero, arm braking (lifecycle request)'
        self.get_logger().info(f'{label}: bringing the base to rest and the arm to a stop '
                               'first')
        return True

    def _at_rest(self) -> bool:
        """Tell whether nothing moves: not commanding, or base at zero and the arm still."""
        loop = self.loop
        return (loop is None or not loop.started
                or (not loop.arm.moving and not np.any(loop.base.value != 0.0)))

    def _release_when_at_rest(self):
        """Carry out a held cleanup/shutdown once the last command left the robot at rest."""
        if self.holding_transition is not None and self._at_rest():
            self.release_held_transition()

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Release the loop, endpoints and timers (the robot is at rest: see hold)."""
        self._release()
        self.diag.reason = 'unconfigured: commanding nothing (waiting for configure)'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Release everything: a finalized node commands nothing (the robot is at rest)."""
        self._release()
        self.diag.reason = 'finalized: commanding nothing'
        self.get_logger().info('finalized: the robot was brought to rest; commanding nothing')
        return TransitionCallbackReturn.SUCCESS

    def refused(self, text: str):
        """Log and count a refused lifecycle request (``ManagedNode``)."""
        self.diag.count('refused_transitions')
        self.get_logger().warn(text)

    def _release(self):
        with self._lock:
            self._active = False
            self._stopping = False
        if self.loop is not None:
            # The last command (the robot at rest) must reach the controllers before the
            # publishers go: a sample still in flight is dropped with its writer.
            for pub in (self._arm_pub, self._base_pub, self._grip_pub):
                pub.wait_for_all_acked(Duration(seconds=0.2))
        self.destroy_entities(self._endpoints)
        self._endpoints = []
        self.loop = None

    def _sync_gate(self):
        """Open the control loop's gate when active and enabled; close it otherwise (locked)."""
        wanted = self._active and self._want_enabled and not self._stopping
        if self.loop is not None and self.loop.started and wanted != self.loop.enabled:
            self.loop.set_enabled(wanted, self._measured, now_s(self))

    def _say_gate(self):
        """Publish vla/motion_enabled (latched) when the gate's state has changed."""
        enabled = bool(self.loop is not None and self.loop.enabled)
        if enabled != self._gate_said:
            self._gate_said = enabled
            self._gate_pub.publish(Bool(data=enabled))

    # -- inputs -------------------------------------------------------------------------
    def _arm_indices(self, names) -> np.ndarray:
        """Return the arm joints' indices in ``names``; ValueError on duplicates, missing."""
        key = tuple(names)
        if key not in self._index_cache:
            try:
                self._index_cache[key] = joint_indices(key, self.params.arm_joint_names)
            except ValueError as exc:
                self._index_cache[key] = exc
            while len(self._index_cache) > 64:  # garbage names must not grow memory
                self._index_cache.pop(next(iter(self._index_cache)))
        found = self._index_cache[key]
        if isinstance(found, ValueError):
            raise found
        return found

    def _on_joint_states(self, msg: JointState):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        try:
            idx = self._arm_indices(msg.name)
            if len(msg.position) != len(msg.name):
                raise ValueError(f'{len(msg.position)} positions for {len(msg.name)} names')
        except ValueError as exc:
            n = self.diag.count('joint_states_rejected')
            self.get_logger().warn(f'rejecting joint_states ({n} so far): {exc}',
                                   throttle_duration_sec=5.0)
            return
        q = np.asarray(msg.position, dtype=float)[idx]
        if not np.all(np.isfinite(q)):
            self.diag.count('joint_states_rejected')
            return
        with self._lock:
            self._measured = q
            self.loop.on_measured(q, now_s(self))
            if not self.loop.started:
                self.loop.start(q, now_s(self))
                self.get_logger().info('first joint_states: holding the measured arm pose')
                self._sync_gate()

    def _reject(self, what: str, exc: Exception):
        if isinstance(exc, StaleTarget):
            # Judged by the source stamp it carries: not executed, counted, and said why.
            n = self.diag.count('rejected_stale_targets')
            self.diag.count(f'rejected_stale_targets_{exc.kind}')
            self._last_rejection = (time.monotonic(), f'{what} rejected: {exc}')
            self.diag.set('last_rejected_target', f'{what}: {exc}')
            self.get_logger().warn(f'not executing {what} ({n} so far): {exc}',
                                   throttle_duration_sec=2.0)
            return
        n = self.diag.count('rejected_targets')
        self.get_logger().warn(f'rejecting {what} ({n} so far): {exc}',
                               throttle_duration_sec=2.0)

    def _on_target(self, msg: ActionTarget):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        try:
            target, stamp_ns = msg_to_target(msg, self.params.arm_joint_names)
            stamp = (stamp_ns or 0) * 1e-9
            with self._lock:
                accepted = self.loop.on_target(target[:7], target[7:10], target[10],
                                               now_s(self), stamp)
        except ValueError as exc:
            return self._reject('target', exc)
        if accepted:
            self._pending_latency = stamp_ns
        else:
            self.diag.count('ignored_targets_gate_closed')

    def _on_estop(self, msg: Bool):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        with self._lock:
            self.loop.set_estop(bool(msg.data))
            if msg.data:  # a pending start_enabled / enable request dies with the e-stop
                self._want_enabled = False
                self._sync_gate()
        if msg.data:
            self.get_logger().error('E-STOP: base stopped, arm held; latched until vla/estop '
                                    'false and motion re-enabled')
            self.diag.count('estops')
        else:
            self.get_logger().warn('e-stop cleared; motion stays disabled until vla/enable')

    def _on_instruction(self, msg: String):
        self._instruction = msg.data

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        with self._lock:
            if self.loop is None:
                response.success = False
                response.message = 'interpolation_node is not configured'
            elif request.data and self.loop.estop:
                response.success = False
                response.message = 'e-stop is latched: publish false on vla/estop first'
            else:
                self._want_enabled = bool(request.data)
                self._sync_gate()
                response.success = True
                if not request.data:
                    response.message = 'disabled: arm held'
                elif self._stopping:
                    response.message = 'enabled, but a lifecycle cleanup/shutdown is stopping'
                elif not self._active:
                    response.message = ('enabled: motion starts when interpolation_node is '
                                        'activated (lifecycle)')
                elif not self.loop.started:
                    response.message = 'motion will be enabled at the first joint_states'
                else:
                    response.message = 'enabled'
        self.get_logger().info(f'vla/enable({request.data}): {response.message}')
        return response

    # -- the 20 Hz tick -----------------------------------------------------------------
    def _tick(self):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        t0 = time.perf_counter()
        now = now_s(self)
        self._rate.tick(now)
        with self._lock:
            cmd = self.loop.tick(now)
        self._say_gate()
        if cmd is None:
            self.diag.reason = 'waiting for joint_states'
            return
        self._publish(cmd)
        if self.holding_transition is not None:
            self.diag.reason = f'{self.holding_transition}: stopping ({cmd.state})'
            return self._release_when_at_rest()
        if self._pending_latency is not None and cmd.state == 'tracking':
            self._latency_ms.add((self.get_clock().now().nanoseconds - self._pending_latency)
                                 * 1e-6)
            self._pending_latency = None
        reason = '' if cmd.state == 'tracking' else cmd.state
        seen, why = self._last_rejection
        if reason and time.monotonic() - seen < 2.0:
            reason += f' ({why})'
        self.diag.reason = reason
        self._tick_ms.add((time.perf_counter() - t0) * 1e3)

    def _watch_clock(self):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        now = now_s(self)
        frozen = self._clock_watch.observe(now, time.monotonic())
        if not frozen:
            if self._clock_frozen:
                self._clock_frozen = False
                self.get_logger().warn(f'ROS time moves again ({now:.3f} s): control resumes '
                                       'with the next target')
            return
        stuck = self._clock_watch.stuck_for(time.monotonic())
        if not self._clock_frozen:
            self._clock_frozen = True
            self.diag.count('clock_frozen')
            sim = self.get_parameter('use_sim_time').value
            text = (f'clock frozen: ROS time has stayed at {now:.3f} s for {stuck:.2f} s '
                    f'(use_sim_time {sim}: is /clock published?); base ramping to zero, arm '
                    'braking, targets dropped until it moves')
            # rclpy fixes a call site's severity at its first use: one call site per level.
            if now == 0.0:
                self.get_logger().warn(text)
            else:
                self.get_logger().error(text)
        with self._lock:
            cmd = self.loop.tick_frozen()
        if cmd is None:
            return
        self._publish(cmd)
        self.diag.reason = (f'clock frozen: ROS time stuck at {now:.3f} s for {stuck:.1f} s; '
                            f'{cmd.state}')
        self._release_when_at_rest()

    def _publish(self, cmd: Command):
        stamp = self.get_clock().now().to_msg()
        arm = [float(v) for v in cmd.arm_positions]
        if self.params.arm_output == 'commands':
            self._arm_pub.publish(Float64MultiArray(data=arm))
        else:
            traj = JointTrajectory()
            traj.header.stamp = stamp
            traj.joint_names = list(self.params.arm_joint_names)
            period = self.params.control.control_period
            point = JointTrajectoryPoint(positions=arm)
            point.time_from_start = duration_msg(period)
            traj.points = [point]
            self._arm_pub.publish(traj)
        twist = Twist()
        twist.linear.x, twist.linear.y, twist.angular.z = (float(v) for v in cmd.base_velocity)
        if self.params.cmd_vel_stamped:
            out = TwistStamped()
            out.header.stamp = stamp
            out.header.frame_id = self.params.base_frame_id
            out.twist = twist
            self._base_pub.publish(out)
        else:
            self._base_pub.publish(twist)
        if self.loop.gripper_commanded:
            self._grip_pub.publish(Float64MultiArray(data=[float(cmd.gripper)]))

    # -- monitoring ---------------------------------------------------------------------
    def _publish_markers(self):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        with self._lock:
            base = self.loop.base.value.copy()
            gripper, state = self.loop.gripper, self.loop.state
        stamp = self.get_clock().now().to_msg()
        frame = self.params.base_frame_id
        arrow = Marker(type=Marker.ARROW, action=Marker.ADD, ns='vla_base_cmd', id=0)
        speed = float(np.hypot(base[0], base[1]))
        arrow.pose.orientation.z = float(np.sin(0.5 * np.arctan2(base[1], base[0])))
        arrow.pose.orientation.w = float(np.cos(0.5 * np.arctan2(base[1], base[0])))
        arrow.scale.x, arrow.scale.y, arrow.scale.z = max(speed * 2.0, 0.01), 0.05, 0.05
        arrow.color.r, arrow.color.g, arrow.color.b, arrow.color.a = 0.1, 0.4, 1.0, 0.9
        grip = Marker(type=Marker.SPHERE, action=Marker.ADD, ns='vla_gripper', id=1)
        grip.pose.position.z = 1.0
        grip.pose.orientation.w = 1.0
        grip.scale.x = grip.scale.y = grip.scale.z = 0.08
        grip.color.r, grip.color.g, grip.color.b, grip.color.a = (
            (1.0, 0.2, 0.1, 0.9) if gripper >= 0.5 else (0.2, 1.0, 0.2, 0.9))
        text = Marker(type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, ns='vla_instruction',
                      id=2)
        text.pose.position.z = 1.4
        text.pose.orientation.w = 1.0
        text.scale.z = 0.08
        text.color.r = text.color.g = text.color.b = text.color.a = 1.0
        text.text = f'{self._instruction or "(no instruction)"} [{state}]'
        for m in (arrow, grip, text):
            m.header.stamp = stamp
            m.header.frame_id = frame
        self._marker_pub.publish(MarkerArray(markers=[arrow, grip, text]))

    def _report(self):
        if self.loop is None:  # released (cleanup/shutdown)
            return
        r = self._rate.summary()
        lat = self._latency_ms.summary()
        self.diag.set('rate_hz', r['rate_hz'])
        self.diag.set('jitter_ms_p50', r['jitter_p50'] * 1e3)
        self.diag.set('jitter_ms_p99', r['jitter_p99'] * 1e3)
        self.diag.set('jitter_ms_max', r['jitter_max'] * 1e3)
        self.diag.set('latency_ms_p50', lat['p50'])
        self.diag.set('latency_ms_p99', lat['p99'])
        self.diag.set('tick_ms_p99', self._tick_ms.summary()['p99'])
        self.diag.set('state', self.loop.state)
        self.diag.set('enabled', self.loop.enabled)
        self.diag.set('active', self._active)
        self.diag.set('estop', self.loop.estop)


def main(args=None):
    """Run interpolation_node."""
    exit_with(run(InterpolationNode, args))


if __name__ == '__main__':
    main()
