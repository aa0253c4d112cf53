"""A real rclpy node that plays camera, operator and robot around the pipeline under test."""

import time
from typing import Callable, List, Tuple

from geometry_msgs.msg import TwistStamped
import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from vla_ros.conversions import array_to_image, target_to_msg
from vla_ros.core.action_space import DEFAULT_ARM_JOINTS
from vla_ros.nodes.common import COMMAND_QOS, LATCHED_QOS, LATEST_IMAGE_QOS, SENSOR_QOS
from vla_ros.testing.probe import Probe, wait_for  # noqa: F401 - tests import wait_for here
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

JOINTS = list(DEFAULT_ARM_JOINTS)


def print_logs(group, lines: int = 30):
    """Print the tail of every node's log (pytest shows it when a test fails)."""
    for name, output in group.lines.items():
        print(f'--- {name} ---')
        print('\n'.join(output[-lines:]))


class Harness(Probe):
    """Publishes images, joint states, instruction, e-stop; records controller commands."""

    def __init__(self, name: str = 'test_harness'):
        """Create the endpoints and timers (camera 10 Hz, joints 50 Hz), then spin."""
        super().__init__(name)
        node = self.node
        self.arm: List[Tuple[float, np.ndarray]] = []
        self.base: List[Tuple[float, np.ndarray]] = []
        self.gripper: List[Tuple[float, float]] = []
        self.vla_images: List[Tuple[float, Image]] = []
        self.tokens: List[Tuple[float, bytes]] = []
        self.image_pub = node.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
        self.joint_pub = node.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        self.instruction_pub = node.create_publisher(String, 'vla/instruction', LATCHED_QOS)
        self.estop_pub = node.create_publisher(Bool, 'vla/estop', LATCHED_QOS)
        self.target_pub = node.create_publisher(ActionTarget, 'vla/target', COMMAND_QOS)
        node.create_subscription(Float64MultiArray, 'arm_controller/commands',
                                 self._record(self.arm, lambda m: np.array(m.data)),
                                 COMMAND_QOS)
        # cmd_vel values, and (publish stamp s, values): the stamp tells how many control
        # ticks lie between two commands even if one was not received.
        self.base_stamped: List[Tuple[float, np.ndarray]] = []
        node.create_subscription(TwistStamped, 'cmd_vel', self._on_cmd_vel, COMMAND_QOS)
        node.create_subscription(Float64MultiArray, 'gripper_controller/commands',
                                 self._record(self.gripper, lambda m: float(m.data[0])),
                                 COMMAND_QOS)
        node.create_subscription(Image, 'vla/image', self._record(self.vla_images, lambda m: m),
                                 LATEST_IMAGE_QOS)
        node.create_subscription(ActionTokens, 'vla/action_tokens',
                                 self._record(self.tokens, lambda m: bytes(m.tokens)), COMMAND_QOS)
        self.image = np.zeros((300, 300, 3), np.uint8)
        self.joint_names = list(JOINTS)
        self.joint_positions = np.zeros(7)
        self.camera_enabled = True
        node.create_timer(0.1, self._publish_image)
        node.create_timer(0.02, self._publish_joints)
        self.start()

    @property
    def diagnostics(self) -> dict:
        """Node name → newest DiagnosticStatus."""
        with self.lock:
            return dict(self.statuses)

    def get_clock(self):
        """Return the harness node's clock."""
        return self.node.get_clock()

    def _on_cmd_vel(self, msg):
        v = np.array([msg.twist.linear.x, msg.twist.linear.y, msg.twist.angular.z])
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.base.append((time.monotonic(), v))
            self.base_stamped.append((stamp, v))

    def _record(self, store: list, convert: Callable):
        def callback(msg):
            with self.lock:
                store.append((time.monotonic(), convert(msg)))
        return callback

    def _publish_image(self):
        if self.camera_enabled:
            stamp = self.node.get_clock().now().to_msg()
            self.image_pub.publish(array_to_image(self.image, 'rgb8', stamp, 'camera'))

    def _publish_joints(self):
        msg = JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = list(self.joint_names)
        msg.position = [float(v) for v in self.joint_positions]
        self.joint_pub.publish(msg)

    def send_target(self, arm, base, stamp_ns: int, gripper: float = 0.0):
        """Publish a whole target stamped ``stamp_ns`` (as the detokenizer does)."""
        self.target_pub.publish(target_to_msg(list(arm) + list(base) + [gripper], stamp_ns,
                                              JOINTS))

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

    def call_enable(self, value: bool, timeout: float = 5.0):
        """Call vla/enable; returns the response."""
        return self.set_enabled(value, timeout)


def sim_graph(params_file, expert: bool = False, without=()):
    """
    Yield (SimProbe, ProcessGroup): sim_node and the pipeline nodes on sim time.

    ``expert`` runs expert_node (the scripted expert, from sim_node's ground truth) in place
    of inference_node; ``without`` names nodes to leave out. A generator for pytest fixtures.
    """
    from vla_ros.graph import pipeline_nodes
    from vla_ros.testing.sim_probe import SimProbe
    from vla_ros.processes import ProcessGroup
    specs = pipeline_nodes(with_sim=True, without=tuple(without), expert=expert)
    group = ProcessGroup(params_file, use_sim_time=True, quiet=True)
    rec = None
    try:
        group.start_all(specs)
        rec = SimProbe(video_tasks=())
        yield rec, group
    finally:  # the node processes stop even when the probe could not be made
        if rec is not None:
            rec.close()
        group.stop()
        print_logs(group)


class LockstepRig:
    """
    The pipeline nodes in lock step (``vla_ros.testing.lockstep``) with the test as the robot.

    Sim time moves only when the test calls ``tick`` (one 20 Hz control period). At every
    tick the robot reports ``joint_states`` where the last arm command put the arm (a
    perfect position controller) and, every second tick (10 Hz) while ``camera_on``, the
    camera sends ``frame_image()`` stamped with the sim time. Everything a tick causes has
    happened when it returns, so tests count ticks, never seconds.
    """

    def __init__(self, params_file: str, overrides: dict, flush: str = 'settle',
                 nodes: Tuple[str, ...] = ()):
        from vla_ros.testing.lockstep import Lockstep, PIPELINE_NODES
        self.step = Lockstep(params_file, overrides, nodes=nodes or PIPELINE_NODES)
        self.step.flush = flush
        self.camera_on = True
        self.image = np.zeros((240, 320, 3), np.uint8)
        self.frames = 0
        # What joint_states say: these names, at these positions (None: where the last arm
        # command put the arm, gripper open).
        self.joint_names = JOINTS + ['gripper']
        self.joint_positions = None

    def inputs(self) -> list:
        """Return (topic, class, QoS) the rig publishes to its nodes (matched at start)."""
        names = self.step.names
        topics = [('camera/image_raw', Image, LATEST_IMAGE_QOS, 'camera_node'),
                  ('vla/instruction', String, LATCHED_QOS, 'inference_node'),
                  ('joint_states', JointState, SENSOR_QOS, 'interpolation_node'),
                  ('vla/estop', Bool, LATCHED_QOS, 'interpolation_node'),
                  ('vla/target', ActionTarget, COMMAND_QOS, 'interpolation_node')]
        return [(topic, cls, qos) for topic, cls, qos, reader in topics if reader in names]

    def start(self, start_ns: int, inputs: list = (), manage: bool = True):
        """
        Start the graph and set the clock to ``start_ns`` (stops every node on failure).

        ``manage`` False: no lifecycle_manager, the managed nodes stay unconfigured.
        """
        try:
            self.step.start(list(self.inputs()) + list(inputs), manage=manage)
            self.step.set_clock(start_ns)
            self.step.settle(2)
        except BaseException:
            self.close()
            raise

    @property
    def records(self):
        """Return what the driver received (``testing.lockstep.Records``)."""
        return self.step.records

    def frame_image(self) -> np.ndarray:
        """Return the next camera frame (``image``; subclasses may vary it)."""
        return self.image

    def set_color(self, r: int, g: int, b: int):
        """Make every camera frame one uniform colour."""
        self.image = np.empty((240, 320, 3), np.uint8)
        self.image[...] = (r, g, b)

    def instruct(self, text: str):
        """Publish the (latched) instruction now."""
        self.step.publish('vla/instruction', String(data=text))

    def estop(self, on: bool):
        """Publish the (latched) e-stop now."""
        self.step.publish('vla/estop', Bool(data=bool(on)))

    def robot(self):
        """Publish joint_states (by default where the last arm command put the arm)."""
        from vla_ros.conversions import ns_to_time
        positions = self.joint_positions
        if positions is None:
            arm = self.step.records.arm
            positions = list(arm[-1]['values'] if arm else np.zeros(7)) + [0.0]
        msg = JointState(name=list(self.joint_names), position=[float(v) for v in positions])
        msg.header.stamp = ns_to_time(self.step.now_ns)
        self.step.publish('joint_states', msg)

    def send_target(self, arm, base, stamp_ns: int, gripper: float = 0.0):
        """Publish a whole target stamped ``stamp_ns`` now (as the detokenizer does)."""
        self.step.publish('vla/target', target_to_msg(list(arm) + list(base) + [gripper],
                                                      stamp_ns, JOINTS))

    def camera(self):
        """Publish one frame stamped with the sim time."""
        from vla_ros.conversions import ns_to_time
        self.frames += 1
        self.step.publish('camera/image_raw', array_to_image(
            self.frame_image(), 'rgb8', ns_to_time(self.step.now_ns), 'camera'))

    def tick(self, camera: bool = True):
        """One control period: the tick, the robot's report, every second tick a frame."""
        self.step.tick()
        self.robot()
        if (camera and self.camera_on and 'camera_node' in self.step.names
                and (self.step.now_ns // self.step.period_ns) % 2 == 0):
            self.camera()

    def run_until(self, condition: Callable[[], bool], ticks: int) -> int:
        """Tick until ``condition`` holds (checked before each tick); return the ticks used."""
        for n in range(ticks):
            if condition():
                return n
            self.tick()
        return ticks

    def enable(self, value: bool):
        """Call vla/enable; return the response."""
        from std_srvs.srv import SetBool
        return self.step.call(SetBool, 'vla/enable', SetBool.Request(data=bool(value)))

    def report(self, node: str, ticking: bool = False, timeout: float = 10.0):
        """
        Return (message, values) of the next /diagnostics report of ``node``.

        Reports come once a second on the steady clock, whatever sim time does: this waits
        (``timeout`` wall seconds at most) for one newer than the call, with sim time
        standing still, or, with ``ticking``, while the graph keeps ticking.
        """
        asked = time.monotonic()
        while (self.step.diagnostics_at.get(node, 0.0) <= asked + 0.05
               and time.monotonic() < asked + timeout):
            if ticking:
                self.tick()
            else:
                self.step.executor.spin_once(timeout_sec=0.05)
        return (self.step.diagnostic_messages.get(node, ''),
                dict(self.step.diagnostics.get(node, {})))

    def close(self):
        """Stop the nodes; print their logs (pytest shows them when a test fails). Once."""
        if getattr(self, '_closed', False):
            return None
        self._closed = True
        codes = self.step.close()
        print(self.step.logs(lines=15))
        print('exit codes', codes)
        return codes
