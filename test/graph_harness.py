"""A real rclpy node that plays camera, operator and robot around the pipeline under test."""

import threading
import time
from typing import Callable, List, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool
from vla_ros.conversions import array_to_image, target_to_msg
from vla_ros.nodes.common import COMMAND_QOS, LATCHED_QOS, LATEST_IMAGE_QOS, SENSOR_QOS
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

JOINTS = [f'arm_joint_{i}' for i in range(1, 8)]


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until true or ``timeout`` s pass; return its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def print_logs(group, lines: int = 30):
    """Print the tail of every node's log (pytest shows it when a test fails)."""
    for name, output in group.lines.items():
        print(f'--- {name} ---')
        print('\n'.join(output[-lines:]))


class Harness(Node):
    """Publishes images, joint states, instruction, e-stop; records controller commands."""

    def __init__(self, name: str = 'test_harness'):
        super().__init__(name)
        self.lock = threading.Lock()
        self.arm: List[Tuple[float, np.ndarray]] = []
        self.base: List[Tuple[float, np.ndarray]] = []
        self.gripper: List[Tuple[float, float]] = []
        self.vla_images: List[Tuple[float, Image]] = []
        self.tokens: List[Tuple[float, bytes]] = []
        self.diagnostics: dict = {}
        self.image_pub = self.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
        self.joint_pub = self.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        self.instruction_pub = self.create_publisher(String, 'vla/instruction', LATCHED_QOS)
        self.estop_pub = self.create_publisher(Bool, 'vla/estop', LATCHED_QOS)
        self.target_pub = self.create_publisher(ActionTarget, 'vla/target', COMMAND_QOS)
        self.enable_client = self.create_client(SetBool, 'vla/enable')
        self.create_subscription(Float64MultiArray, 'arm_controller/commands',
                                 self._record(self.arm, lambda m: np.array(m.data)),
                                 COMMAND_QOS)
        self.create_subscription(TwistStamped, 'cmd_vel', self._record(
            self.base, lambda m: np.array([m.twist.linear.x, m.twist.linear.y,
                                           m.twist.angular.z])), COMMAND_QOS)
        self.create_subscription(Float64MultiArray, 'gripper_controller/commands',
                                 self._record(self.gripper, lambda m: float(m.data[0])),
                                 COMMAND_QOS)
        self.create_subscription(Image, 'vla/image', self._record(self.vla_images, lambda m: m),
                                 LATEST_IMAGE_QOS)
        self.create_subscription(ActionTokens, 'vla/action_tokens',
                                 self._record(self.tokens, lambda m: bytes(m.tokens)), COMMAND_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.image = np.zeros((300, 300, 3), np.uint8)
        self.joint_names = list(JOINTS)
        self.joint_positions = np.zeros(7)
        self.camera_enabled = True
        self.create_timer(0.1, self._publish_image)
        self.create_timer(0.02, self._publish_joints)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self._running and rclpy.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down while spinning
                break

    def _record(self, store: list, convert: Callable):
        def callback(msg):
            with self.lock:
                store.append((time.monotonic(), convert(msg)))
        return callback

    def _on_diagnostics(self, msg):
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name.split('/')[-1]] = status

    def _publish_image(self):
        if self.camera_enabled:
            stamp = self.get_clock().now().to_msg()
            self.image_pub.publish(array_to_image(self.image, 'rgb8', stamp, 'camera'))

    def _publish_joints(self):
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = list(self.joint_names)
        msg.position = [float(v) for v in self.joint_positions]
        self.joint_pub.publish(msg)

    def send_target(self, arm, base, stamp_ns: int, gripper: float = 0.0):
        """Publish a whole target stamped ``stamp_ns`` (as the detokenizer does)."""
        self.target_pub.publish(target_to_msg(list(arm) + list(base) + [gripper], stamp_ns,
                                              JOINTS))

    def diagnostic_values(self, node: str) -> dict:
        """Return the newest /diagnostics key-values of ``node`` (empty when none yet)."""
        with self.lock:
            status = self.diagnostics.get(node)
        return {} if status is None else {kv.key: kv.value for kv in status.values}

    def set_color(self, r: int, g: int, b: int):
        """Make every camera frame one uniform colour."""
        self.image = np.empty((300, 300, 3), np.uint8)
        self.image[...] = (r, g, b)

    def instruct(self, text: str):
        """Publish the (latched) instruction."""
        self.instruction_pub.publish(String(data=text))

    def latest(self, store: list):
        """Newest recorded (time, value) or None."""
        with self.lock:
            return store[-1] if store else None

    def since(self, store: list, t0: float) -> list:
        """All recorded (time, value) after monotonic time t0."""
        with self.lock:
            return [x for x in store if x[0] >= t0]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` until true or ``timeout`` s pass."""
        return wait_for(predicate, timeout)

    def call_enable(self, value: bool, timeout: float = 5.0):
        """Call vla/enable; returns the response."""
        assert self.enable_client.wait_for_service(timeout_sec=timeout)
        future = self.enable_client.call_async(SetBool.Request(data=value))
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        return future.result()

    def close(self):
        """Stop spinning and destroy the node."""
        self._running = False
        self._thread.join(timeout=2.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.destroy_node()


def sim_graph(params_file, expert: bool = False, without=()):
    """
    Yield (SimProbe, ProcessGroup): sim_node and the pipeline nodes on sim time.

    ``expert`` makes sim_node publish the scripted expert's tokens (inference_node is then
    left out); ``without`` names more nodes to leave out. A generator for pytest fixtures.
    """
    from vla_ros.graph import pipeline_nodes
    from vla_ros.tools.sim_probe import SimProbe
    from vla_ros.tools.up import ProcessGroup
    overrides = {'sim_node': {'expert_actions': True}} if expert else None
    skip = set(without) | ({'inference_node'} if expert else set())
    specs = pipeline_nodes(with_sim=True, overrides=overrides, without=tuple(skip))
    group = ProcessGroup(params_file, use_sim_time=True, quiet=True)
    group.start_all(specs)
    rec = SimProbe(video_tasks=())
    try:
        yield rec, group
    finally:
        rec.close()
        group.stop()
        print_logs(group)
