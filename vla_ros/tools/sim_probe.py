"""
The probe beside a simulated graph (``vla-ros demo`` and the closed-loop tests).

One rclpy node, spun on its own thread: it records the camera, joint states, arm and base
commands, odometry, action tokens, task status and /diagnostics (with sim-time stamps),
keeps camera frames for the demo video, and drives episodes through the graph's services
(``vla/enable``, ``sim_node/set_parameters``, ``sim/reset``). It initialises rclpy only when
the caller has not.
"""

import json
import threading
import time
from typing import Dict, List, Sequence

import numpy as np
from vla_ros_interfaces.msg import ActionTokens

from ..nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS

VIDEO_EVERY = 2          # keep every 2nd camera frame (12.5 Hz → ~6 fps) for the video
VIDEO_MAX_FRAMES = 900


class SimProbe:
    """A node beside a simulated graph: records what it publishes and drives its episodes."""

    def __init__(self, video_tasks: Sequence[str]):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TwistStamped
        from nav_msgs.msg import Odometry
        from rcl_interfaces.srv import SetParameters
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import SetBool, Trigger

        # The context is the caller's when it already made one (tests); else the probe's.
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            rclpy.init()
        self.rclpy = rclpy
        self.node = node = Node('vla_demo')
        self.lock = threading.Lock()
        self.sim_now = 0.0
        self.status: Dict = {}
        self.tokens = 0
        self.video_tasks = set(video_tasks)
        self.recording_video = False
        self.frames: List = []
        self.frame_count = 0
        self.image_times: List[float] = []
        self.state_times: List[float] = []
        self.arm_times: List[float] = []
        self.diagnostics: Dict[str, Dict[str, str]] = {}
        self.measured: List = []     # (sim t, arm q[7])
        self.commanded: List = []    # (sim t, arm q[7])
        self.base_cmd: List = []     # (sim t, vx, vy, wz)
        self.base_meas: List = []
        self.instruction = ''
        self._state_skip = 0
        node.create_subscription(Image, 'camera/image_raw', self._on_image, SENSOR_QOS)
        node.create_subscription(JointState, 'joint_states', self._on_joints, SENSOR_QOS)
        node.create_subscription(Float64MultiArray, 'arm_controller/commands', self._on_arm,
                                 COMMAND_QOS)
        node.create_subscription(TwistStamped, 'cmd_vel', self._on_cmd_vel, COMMAND_QOS)
        node.create_subscription(Odometry, 'odom', self._on_odom, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        node.create_subscription(String, 'sim/task_status', self._on_status, LATCHED_QOS)
        node.create_subscription(ActionTokens, 'vla/action_tokens', self._on_tokens,
                                 COMMAND_QOS)
        self.enable = node.create_client(SetBool, 'vla/enable')
        self.reset = node.create_client(Trigger, 'sim/reset')
        self.set_params = node.create_client(SetParameters, 'sim_node/set_parameters')
        self._types = {'SetBool': SetBool, 'Trigger': Trigger, 'SetParameters': SetParameters}
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self._running and self.rclpy.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                break

    # -- callbacks ------------------------------------------------------------------------
    def _on_image(self, msg):
        with self.lock:
            self.image_times.append(time.monotonic())
            self.frame_count += 1
            if (self.recording_video and self.frame_count % VIDEO_EVERY == 0
                    and len(self.frames) < VIDEO_MAX_FRAMES):
                image = np.frombuffer(bytes(msg.data), np.uint8).reshape(
                    msg.height, msg.width, 3)
                self.frames.append((image.copy(), self.instruction,
                                    dict(self.status)))

    def _on_joints(self, msg):
        # joint_states carry sim time; the demo keeps no /clock subscription of its own
        # (250 more callbacks a second in this process would slow the graph it measures).
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.sim_now = t
            self.state_times.append(time.monotonic())
            self._state_skip += 1
            if self._state_skip % 5 == 0:  # 50 Hz is plenty for the plots
                self.measured.append((t, np.array(msg.position[:7])))

    def _on_arm(self, msg):
        with self.lock:
            self.arm_times.append(time.monotonic())
            self.commanded.append((self.sim_now, np.array(msg.data)))

    def _on_diagnostics(self, msg):
        with self.lock:
            for status in msg.status:
                if status.hardware_id == 'vla_ros':
                    self.diagnostics[status.name.split('/')[-1]] = {
                        kv.key: kv.value for kv in status.values}

    def _on_cmd_vel(self, msg):
        with self.lock:
            tw = msg.twist
            self.base_cmd.append((self.sim_now, tw.linear.x, tw.linear.y, tw.angular.z))

    def _on_odom(self, msg):
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        tw = msg.twist.twist
        with self.lock:
            self.base_meas.append((t, tw.linear.x, tw.linear.y, tw.angular.z))

    def _on_status(self, msg):
        self.status = json.loads(msg.data)

    def _on_tokens(self, msg):
        self.tokens += 1

    # -- driving ----------------------------------------------------------------------------
    def call(self, client, request, timeout: float = 15.0):
        """Call a service from the main thread (the executor thread spins)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f'service {client.srv_name} is not available after {timeout} s')
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f'service {client.srv_name} did not answer in {timeout} s')
            time.sleep(0.01)
        return future.result()

    def set_enabled(self, enabled: bool):
        """Open or close the interpolation node's motion gate."""
        request = self._types['SetBool'].Request(data=enabled)
        return self.call(self.enable, request)

    def start_episode(self, task: str, seed: int) -> Dict:
        """Gate closed → sim parameters → sim/reset → gate open; returns the episode."""
        from rclpy.parameter import Parameter
        self.set_enabled(False)
        request = self._types['SetParameters'].Request()
        request.parameters = [Parameter('task', value=task).to_parameter_msg(),
                              Parameter('seed', value=int(seed)).to_parameter_msg()]
        result = self.call(self.set_params, request)
        if not all(r.successful for r in result.results):
            raise RuntimeError(f'sim_node refused task={task} seed={seed}: '
                               f'{[r.reason for r in result.results]}')
        response = self.call(self.reset, self._types['Trigger'].Request())
        if not response.success:
            raise RuntimeError(f'sim/reset failed: {response.message}')
        episode = json.loads(response.message)
        self.instruction = episode['instruction']
        # Let a few post-reset joint_states reach interpolation_node, then open the gate:
        # opening re-syncs its commanded state to the measured one.
        time.sleep(0.1)
        self.set_enabled(True)
        return episode

    def wait_done(self, task: str, seed: int, timeout: float) -> Dict:
        """Block until sim/task_status says this episode is done (or the wall timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status
            if s.get('task') == task and s.get('seed') == seed and s.get('done'):
                return dict(s)
            time.sleep(0.05)
        s = dict(self.status)
        s['done'] = False
        s['timed_out_wall'] = True
        return s

    def wait_for(self, predicate, timeout: float) -> bool:
        """Poll ``predicate`` until true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self):
        """Stop spinning; shut rclpy down if the probe started it."""
        self._running = False
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        if self._owns_context:
            self.rclpy.try_shutdown()
