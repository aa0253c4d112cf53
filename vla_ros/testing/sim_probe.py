"""
The probe beside a simulated graph (``vla-ros demo`` and the closed-loop tests).

A ``testing/probe.Probe`` (its node, thread, diagnostics, enable client and service calls)
that also records the camera, joint states, arm and base commands, odometry, action tokens
and task status (with sim-time stamps), keeps camera frames for the demo video, and drives
episodes through ``sim_node/set_parameters`` and ``sim/reset``.
"""

import json
import threading
import time
from typing import Dict, List, Sequence

from geometry_msgs.msg import TwistStamped
from nav_msgs.msg import Odometry
import numpy as np
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from vla_ros_interfaces.msg import ActionTokens

from .probe import Probe
from ..nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS

VIDEO_EVERY = 2          # keep every 2nd camera frame (12.5 Hz → ~6 fps) for the video
VIDEO_MAX_FRAMES = 900


class SimProbe(Probe):
    """A node beside a simulated graph: records what it publishes and drives its episodes."""

    def __init__(self, video_tasks: Sequence[str]):
        """Subscribe to the simulated robot and the graph, then start spinning."""
        super().__init__('vla_demo')
        node = self.node
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
        self.measured: List = []     # (sim t, arm q[7])
        self.commanded: List = []    # (sim t, arm q[7])
        self.base_cmd: List = []     # (sim t, vx, vy, wz)
        self.base_meas: List = []
        self.instruction = ''
        self._state_skip = 0
        # Notified on every joint_states and task status: what start_episode and wait_done
        # wait for (events, not sleeps).
        self.changed = threading.Condition(self.lock)
        node.create_subscription(Image, 'camera/image_raw', self._on_image, SENSOR_QOS)
        node.create_subscription(JointState, 'joint_states', self._on_joints, SENSOR_QOS)
        node.create_subscription(Float64MultiArray, 'arm_controller/commands', self._on_arm,
                                 COMMAND_QOS)
        node.create_subscription(TwistStamped, 'cmd_vel', self._on_cmd_vel, COMMAND_QOS)
        node.create_subscription(Odometry, 'odom', self._on_odom, 10)
        node.create_subscription(String, 'sim/task_status', self._on_status, LATCHED_QOS)
        node.create_subscription(ActionTokens, 'vla/action_tokens', self._on_tokens,
                                 COMMAND_QOS)
        self.reset = node.create_client(Trigger, 'sim/reset')
        self.set_params = node.create_client(SetParameters, 'sim_node/set_parameters')
        self.start()

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
            self.changed.notify_all()

    def _on_arm(self, msg):
        with self.lock:
            self.arm_times.append(time.monotonic())
            self.commanded.append((self.sim_now, np.array(msg.data)))

    @property
    def diagnostics(self) -> Dict[str, Dict[str, str]]:
        """Node name → newest /diagnostics key-values of the vla_ros nodes."""
        with self.lock:
            names = [n for n, st in self.statuses.items() if st.hardware_id == 'vla_ros']
        return {n: self.diagnostic_values(n) for n in names}

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
        status = json.loads(msg.data)
        with self.lock:
            self.status = status
            self.changed.notify_all()

    def _on_tokens(self, msg):
        self.tokens += 1

    # -- driving ----------------------------------------------------------------------------
    def start_episode(self, task: str, seed: int) -> Dict:
        """Gate closed → sim parameters → sim/reset → gate open; returns the episode."""
        self.set_enabled(False)
        request = SetParameters.Request()
        request.parameters = [Parameter('task', value=task).to_parameter_msg(),
                              Parameter('seed', value=int(seed)).to_parameter_msg()]
        result = self.call(self.set_params, request)
        if not all(r.successful for r in result.results):
            raise RuntimeError(f'sim_node refused task={task} seed={seed}: '
                               f'{[r.reason for r in result.results]}')
        # A reset repeated because its answer was lost restarts the same episode; a slow
        # answer is waited for (5 s) before the request is sent again.
        response = self.call(self.reset, Trigger.Request(), retry_after=5.0)
        if not response.success:
            raise RuntimeError(f'sim/reset failed: {response.message}')
        episode = json.loads(response.message)
        self.instruction = episode['instruction']
        # Open the gate once joint_states of the new episode flow (interpolation_node
        # re-syncs its commanded state to the first measurement after the gate opens) and
        # sim_node takes commands again (its reset_command_hold): targets composed while
        # the controllers ignore commands would never be executed.
        start = max(episode['sim_time'], float(episode.get('commands_from', 0.0)))
        with self.changed:
            if not self.changed.wait_for(lambda: self.sim_now > start, 30.0):
                raise RuntimeError('no joint_states after sim/reset within 30 s')
        self.set_enabled(True)
        return episode

    def wait_done(self, task: str, seed: int, timeout: float) -> Dict:
        """Block until sim/task_status says this episode is done (or the wall timeout)."""
        def done():
            s = self.status
            return s.get('task') == task and s.get('seed') == seed and bool(s.get('done'))
        with self.changed:
            if self.changed.wait_for(done, timeout):
                return dict(self.status)
            s = dict(self.status)
        s['done'] = False
        s['timed_out_wall'] = True
        return s

    def wait_sim_time(self, t: float, timeout: float) -> bool:
        """Block until joint_states report sim time ``t`` s or later (False at the timeout)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.sim_now >= t, timeout)
