"""
sim_node: the MuJoCo robot, seen from ROS the way a real one with ros2_control is.

Inputs are what the controllers take (forward position commands or a joint trajectory for
the arm, a base twist with a timeout, a gripper command); outputs are what the robot
drivers publish (camera image + info, joint states, odometry) plus ``/clock``, so the rest
of the graph can run on sim time at any real-time factor.

Simulated time advances in fixed chunks (one joint_states/clock message each); a pacer on
the steady clock keeps sim time at ``real_time_factor`` × wall time. Like ros2_control's
controller_manager and Gazebo's physics loop, stepping runs on a dedicated thread rather than
an executor timer: at 250 Hz the rclpy executor's per-wake-up cost (~1.5 ms with this many
entities) would eat most of a core. The executor serves only commands, services and
diagnostics. The camera renders on its own thread too (it owns the EGL context) from a
snapshot of the state, so a slow frame never delays physics.

Episodes: parameters ``task`` and ``seed`` (changeable at run time) and the ``sim/reset``
service (std_srvs/Trigger) start a new one; ``vla/instruction`` (latched) and
``sim/task_status`` (JSON) tell the graph what is being asked and how it is going.

Length (over 300 lines): the simulator's ROS wiring (parameters, nine topics, three
services, the stepping thread with its pacer, resets, the optional ground-truth state); the
physics, camera, controllers and tasks live in ``sim/``.

Ground truth: with ``publish_sim_state`` the node publishes ``sim/state``
(vla_ros_interfaces/SimState: the episode, every robot joint and the placed bodies' poses) at
``inference_frequency`` on the policy's time grid; expert_node (the scripted expert) decides
from it. A real robot has no such topic, and a policy never reads it.
"""

from dataclasses import dataclass
import json
import math
import os
import threading
import time
from typing import Optional

from geometry_msgs.msg import Twist, TwistStamped
from nav_msgs.msg import Odometry
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from vla_ros_interfaces.msg import SimState

from .common import (COMMAND_QOS, ConfigError, declare_all, Diagnostics, exclusive_group,
                     exit_with, LATCHED_QOS, run, SENSOR_QOS)
from ..conversions import (array_to_image, camera_info_msg, ns_to_time, odometry_msg,
                           sim_state_msg, time_to_ns)
from ..core.control import whole_ratio
from ..core.stats import RateMonitor
from ..sim.camera import CameraWorker
from ..sim.controllers import ControllerEmulation
from ..sim.robot import ARM_JOINTS, DEFAULT_MODEL, JOINT_STATE_NAMES, RealTimePacer, Robot
from ..sim.tasks import TASK_NAMES, TaskEnv


CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def _whole(numerator: float, denominator: float, what: str) -> int:
    try:
        return whole_ratio(numerator, denominator, f'{what} / simulation chunk')
    except ValueError as exc:
        raise ConfigError(f'{exc}; pick frequencies whose periods divide evenly') from exc


@dataclass(frozen=True)
class SimParams:
    """Validated parameters of sim_node (frequencies in Hz, times in s)."""

    model_file_path: str
    task: str
    seed: int
    real_time_factor: float
    publish_frequency: float
    camera_frequency: float
    odom_frequency: float
    status_frequency: float
    image_size: int
    cmd_vel_timeout: float
    cmd_vel_stamped: bool
    reset_command_hold: float
    publish_sim_state: bool
    inference_frequency: float
    world_frame_id: str
    camera_frame_id: str
    base_frame_id: str
    odom_frame_id: str

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise ConfigError(f'task must be one of {TASK_NAMES}, found {self.task!r}')
        # Numbers (seed, rates, times) are held to their schema range by rclpy at
        # declaration and on every later set (core/params.py).


class SimNode(Node):
    """MuJoCo simulation of the mobile manipulator and its task episodes."""

    def __init__(self):
        super().__init__('sim_node')

        self.params = p = SimParams(**declare_all(self, 'sim_node'))
        try:
            self.robot = robot = Robot(p.model_file_path or DEFAULT_MODEL, p.image_size)
        except (ValueError, OSError) as exc:
            raise ConfigError(f'cannot load model {p.model_file_path!r}: {exc}') from exc
        except Exception as exc:  # mujoco.FatalError and XML errors
            raise ConfigError(f'cannot load model {p.model_file_path!r}: {exc}') from exc
        step = robot.timestep
        self.chunk = 1.0 / p.publish_frequency
        try:
            self.steps_per_chunk = robot.steps_per(self.chunk)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.camera_every = _whole(1.0 / p.camera_frequency, self.chunk, 'camera period')
        self.odom_every = _whole(1.0 / p.odom_frequency, self.chunk, 'odom period')
        self.status_every = _whole(1.0 / p.status_frequency, self.chunk, 'status period')
        self.policy_every = _whole(1.0 / p.inference_frequency, self.chunk, 'policy period')
        # Stepped a publish period at a time (the task checks run after each chunk).
        self.env = TaskEnv(robot, self.chunk)
        self._arm_names = ARM_JOINTS
        self._state_names = list(JOINT_STATE_NAMES)

        # Sim state is touched by the stepping timer and the reset service only, under
        # this lock; command callbacks only write the small pending-command fields.
        self._lock = threading.Lock()
        self._clock_offset = 0.0
        self._chunk_index = 0
        self.controllers = ControllerEmulation(p.cmd_vel_timeout, p.reset_command_hold)
        self._last_success = False
        self.diag = Diagnostics(self)
        self._js_rate = RateMonitor(p.publish_frequency * p.real_time_factor)
        self._cam_rate = RateMonitor(p.camera_frequency * p.real_time_factor)
        self._rtf_window = (time.monotonic(), 0.0)
        self.real_time_factor = 0.0

        self._clock_pub = self.create_publisher(ClockMsg, '/clock', CLOCK_QOS)
        self._js_pub = self.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        self._odom_pub = self.create_publisher(Odometry, 'odom', 10)
        self._image_pub = self.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
        self._info_pub = self.create_publisher(CameraInfo, 'camera/camera_info', SENSOR_QOS)
        self._status_pub = self.create_publisher(String, 'sim/task_status', LATCHED_QOS)
        self._instruction_pub = self.create_publisher(String, 'vla/instruction', LATCHED_QOS)
        self._state_pub = (self.create_publisher(SimState, 'sim/state', COMMAND_QOS)
                           if p.publish_sim_state else None)

        inputs = exclusive_group()
        self.create_subscription(Float64MultiArray, 'arm_controller/commands', self._on_arm,
                                 COMMAND_QOS, callback_group=inputs)
        self.create_subscription(JointTrajectory, 'arm_controller/joint_trajectory',
                                 self._on_trajectory, COMMAND_QOS, callback_group=inputs)
        self.create_subscription(TwistStamped if p.cmd_vel_stamped else Twist, 'cmd_vel',
                                 self._on_cmd_vel, COMMAND_QOS, callback_group=inputs)
        self.create_subscription(Float64MultiArray, 'gripper_controller/commands',
                                 self._on_gripper, COMMAND_QOS, callback_group=inputs)
        self.create_service(Trigger, 'sim/reset', self._on_reset, callback_group=inputs)
        self.add_on_set_parameters_callback(self._check_params)

        self._camera_info = self._make_camera_info()
        self.camera = CameraWorker(robot.model, robot.camera_id, p.image_size,
                                   self._publish_image)
        self.camera.start()
        self._pacer = RealTimePacer(self.chunk, p.real_time_factor, max_lag=0.1)
        self._reset_episode(p.task, p.seed)
        # Pacing and reports run on the steady clock: with use_sim_time this node's ROS clock
        # would be driven by the /clock it publishes itself.
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0, self._report, callback_group=inputs, clock=self._steady)
        self._stop = threading.Event()
        self._loop_thread = threading.Thread(target=self._loop, name='sim_loop', daemon=True)
        self._loop_thread.start()
        self.get_logger().info(
            f'MuJoCo {step * 1e3:g} ms physics, joint_states+clock {p.publish_frequency:g} Hz '
            f'({self.steps_per_chunk} steps), camera {p.camera_frequency:g} Hz, real-time '
            f'factor {p.real_time_factor:g}, task {p.task!r} seed {p.seed}'
            + (f', sim/state at {p.inference_frequency:g} Hz' if self._state_pub else ''))

    # -- time ---------------------------------------------------------------------------
    def sim_time(self) -> float:
        """Continuous sim time in seconds (MuJoCo's clock restarts at every reset)."""
        return self._clock_offset + self.robot.time

    def _stamp(self, t: Optional[float] = None):
        return ns_to_time(int(round((self.sim_time() if t is None else t) * 1e9)))

    # -- parameters and services ----------------------------------------------------------
    def _check_params(self, params):
        for param in params:
            if param.name == 'task' and param.value not in TASK_NAMES:
                return SetParametersResult(successful=False, reason=(
                    f'task must be one of {TASK_NAMES}, found {param.value!r}'))
            if param.name == 'seed' and (param.type_ != Parameter.Type.INTEGER
                                         or param.value < 0):
                return SetParametersResult(successful=False,
                                           reason=f'seed must be an integer >= 0, found '
                                                  f'{param.value!r}')
        return SetParametersResult(successful=True)

    def _on_reset(self, request, response):
        task = self.get_parameter('task').value
        seed = int(self.get_parameter('seed').value)
        try:
            episode = self._reset_episode(task, seed)
        except Exception as exc:  # a failed reset answers the caller; it must not kill the node
            response.success, response.message = False, str(exc)
            return response
        response.success = True
        # commands_from: the sim time from which commands move the robot again
        # (reset_command_hold); a harness that opens the motion gate earlier has upstream
        # loops compose on commands the controllers ignored.
        # sim_time: the episode's start (the physics thread may have stepped since).
        start = self._clock_offset + episode.start_time
        response.message = json.dumps({
            'task': episode.task, 'seed': episode.seed, 'instruction': episode.instruction,
            'sim_time': round(start, 6),
            'commands_from': round(start + self.params.reset_command_hold, 6)})
        return response

    def _reset_episode(self, task: str, seed: int):
        with self._lock:
            self._clock_offset += self.robot.time
            episode = self.env.reset(task, seed)
            self.controllers.reset(self.sim_time())
            self._last_success = False
            status = self.env.status()
        self._instruction_pub.publish(String(data=episode.instruction))
        self._publish_status(status)
        self.get_logger().info(f'episode: {task} seed {seed}: "{episode.instruction}"')
        return episode

    # -- command inputs (sim/controllers.py applies them) ---------------------------------
    def _command(self, what: str, counter: str, take):
        try:
            if not take():
                self.diag.count('commands_ignored_after_reset')
        except ValueError as exc:
            self.diag.count(counter)
            self.get_logger().warn(f'rejected {what}: {exc}', throttle_duration_sec=2.0)

    def _on_arm(self, msg: Float64MultiArray):
        self._command('arm command', 'arm_commands_rejected',
                      lambda: self.controllers.arm(list(msg.data), self.sim_time()))

    def _on_trajectory(self, msg: JointTrajectory):
        try:
            idx = [list(msg.joint_names).index(n) for n in self._arm_names]
            if not msg.points:
                raise ValueError('no points')
            now = self.sim_time()
            start = time_to_ns(msg.header.stamp) * 1e-9 or now
            times = [start + p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
                     for p in msg.points]
            positions = [[p.positions[i] for i in idx] for p in msg.points]
        except (ValueError, IndexError) as exc:
            self.diag.count('trajectories_rejected')
            self.get_logger().warn(f'rejected joint_trajectory (joints must be '
                                   f'{list(self._arm_names)}): {exc}', throttle_duration_sec=2.0)
            return
        current = self.robot.data.ctrl[self.robot.arm_act].copy()
        self._command('joint_trajectory', 'trajectories_rejected',
                      lambda: self.controllers.trajectory(times, positions, now, current))

    def _on_cmd_vel(self, msg):
        twist = msg.twist if isinstance(msg, TwistStamped) else msg
        v = [twist.linear.x, twist.linear.y, twist.angular.z]
        self._command('cmd_vel', 'cmd_vel_rejected',
                      lambda: self.controllers.base(v, self.sim_time()))

    def _on_gripper(self, msg: Float64MultiArray):
        value = float(msg.data[0]) if len(msg.data) == 1 else math.nan
        self._command('gripper command (1 value in 0..1)', 'gripper_commands_rejected',
                      lambda: self.controllers.gripper(value, self.sim_time()))

    # -- the simulation loop --------------------------------------------------------------
    def _loop(self):
        pacer = self._pacer
        try:
            while not self._stop.is_set() and self.context.ok():
                wall = time.monotonic()
                for _ in range(pacer.due(wall, self._locked_sim_time())):
                    self._advance(wall)
                self._stop.wait(pacer.wait_time(time.monotonic(), self._locked_sim_time()))
        except Exception as exc:
            # Ctrl-C shuts the context down under a running publish; that is no error.
            if self.context.ok() and not self._stop.is_set():
                self.diag.error = f'simulation loop stopped: {exc!r}'
                self.get_logger().fatal(self.diag.error)
                raise

    def _locked_sim_time(self) -> float:
        # A reset moves the clock offset and the robot time in two steps; read between them
        # and sim time looks twice as far ahead, which parks the pacer for seconds.
        with self._lock:
            return self.sim_time()

    def _sim_state(self, t: float) -> SimState:
        """Return the ground truth at sim time ``t`` (the caller holds the lock)."""
        episode = self.env.episode
        joints, bodies = self.robot.snapshot()
        start = self._clock_offset + episode.start_time
        return sim_state_msg(int(round(t * 1e9)), episode.task, episode.seed,
                             int(round(start * 1e9)), joints, bodies, self.params.world_frame_id)

    def _advance(self, wall: float):
        robot = self.robot
        state = None
        with self._lock:
            now = self.sim_time()
            self.controllers.apply(robot, now)
            robot.step(self.steps_per_chunk)
            success = self.env.update()
            self._chunk_index += 1
            k = self._chunk_index
            t = self.sim_time()
            names, pos, vel, eff = robot.joint_state()
            odom = robot.odometry() if k % self.odom_every == 0 else None
            if k % self.camera_every == 0:
                self.camera.submit(robot.data.qpos.copy(), robot.data.mocap_pos.copy(),
                                   int(round(t * 1e9)))
            if self._state_pub is not None and k % self.policy_every == 0:
                state = self._sim_state(t)
            status = (self.env.status() if k % self.status_every == 0
                      or success != self._last_success else None)
            self._last_success = success
        stamp = self._stamp(t)
        self._clock_pub.publish(ClockMsg(clock=stamp))
        js = JointState()
        js.header.stamp = stamp
        js.name = self._state_names
        js.position, js.velocity, js.effort = pos.tolist(), vel.tolist(), eff.tolist()
        self._js_pub.publish(js)
        self._js_rate.tick(wall)
        if odom is not None:
            self._publish_odom(odom, stamp)
        if state is not None:
            self._state_pub.publish(state)
        if status is not None:
            self._publish_status(status)

    # -- outputs --------------------------------------------------------------------------
    def _publish_status(self, status):
        status['sim_time'] = round(self.sim_time(), 3)
        status['real_time_factor'] = round(self.real_time_factor, 3)
        self._status_pub.publish(String(data=json.dumps(status, sort_keys=True)))

    def _publish_odom(self, odom, stamp):
        self._odom_pub.publish(odometry_msg(odom.x, odom.y, odom.yaw, (odom.vx, odom.vy, odom.wz),
                                            stamp, self.params.odom_frame_id,
                                            self.params.base_frame_id))

    def _publish_image(self, image: np.ndarray, stamp_ns: int):
        if not self.context.ok():
            return
        stamp = ns_to_time(stamp_ns)
        self._image_pub.publish(array_to_image(image, 'rgb8', stamp=stamp,
                                               frame_id=self.params.camera_frame_id))
        self._camera_info.header.stamp = stamp
        self._info_pub.publish(self._camera_info)
        self._cam_rate.tick(time.monotonic())

    def _make_camera_info(self) -> CameraInfo:
        return camera_info_msg(*self.robot.camera_intrinsics(), self.params.camera_frame_id)

    def _report(self):
        wall = time.monotonic()
        w0, s0 = self._rtf_window
        sim = self.sim_time()
        if wall > w0 and sim >= s0:
            self.real_time_factor = (sim - s0) / (wall - w0)
        self._rtf_window = (wall, sim)
        self.diag.set('real_time_factor', self.real_time_factor)
        self.diag.set('sim_time', sim)
        self.diag.set('joint_states_rate_hz', self._js_rate.summary()['rate_hz'])
        self.diag.set('camera_rate_hz', self._cam_rate.summary()['rate_hz'])
        self.diag.set('camera_render_ms', self.camera.render_ms)
        self.diag.set('camera_frames_dropped', self.camera.dropped)
        self.diag.set('pacer_resyncs', self._pacer.resyncs)
        if self.camera.error:
            self.diag.error = self.camera.error
            self.get_logger().error(self.camera.error, throttle_duration_sec=10.0)
        elif self.real_time_factor < 0.9 * self.params.real_time_factor:
            self.diag.reason = (f'real-time factor {self.real_time_factor:.2f} below the '
                                f'requested {self.params.real_time_factor:g}')
        else:
            self.diag.reason = ''

    def destroy_node(self):
        """Stop the simulation and camera threads before the node goes."""
        stop = getattr(self, '_stop', None)
        if stop is not None:
            stop.set()
            self._loop_thread.join(timeout=2.0)
        camera = getattr(self, 'camera', None)
        if camera is not None:
            camera.stop()
            camera.join(timeout=2.0)
        super().destroy_node()


def main(args=None):
    """Run sim_node."""
    os.environ.setdefault('MUJOCO_GL', 'egl')  # headless rendering unless told otherwise
    exit_with(run(SimNode, args))


if __name__ == '__main__':
    main()
