"""
sim_node as a real process: sensors, /clock, commands, the reset service.

The tests assert what sim_node publishes and in what order, never how fast: the rates and
the real-time factor are printed by ``vla-ros bench sim`` (a loaded machine slows them
without anything being wrong). Waits are on events (messages seen, sim time reached).
"""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip('mujoco')

from rcl_interfaces.srv import SetParameters  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from vla_ros import service_calls  # noqa: E402
from vla_ros.nodes.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS  # noqa: E402
from vla_ros.processes import interrupt  # noqa: E402


class Probe(Node):
    """Records what sim_node publishes and talks to its services."""

    def __init__(self):
        super().__init__('sim_probe')
        self.lock = threading.Lock()
        self.images, self.states, self.clocks, self.infos = [], [], [], []
        self.status, self.instruction = None, None
        self.create_subscription(Image, 'camera/image_raw', self._keep(self.images), SENSOR_QOS)
        self.create_subscription(CameraInfo, 'camera/camera_info', self._keep(self.infos),
                                 SENSOR_QOS)
        self.create_subscription(JointState, 'joint_states', self._keep(self.states),
                                 SENSOR_QOS)
        self.create_subscription(Clock, '/clock', self._keep(self.clocks),
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.create_subscription(String, 'sim/task_status', self._on_status, LATCHED_QOS)
        self.create_subscription(String, 'vla/instruction', self._on_instruction, LATCHED_QOS)
        self.arm_pub = self.create_publisher(Float64MultiArray, 'arm_controller/commands',
                                             COMMAND_QOS)
        self.grip_pub = self.create_publisher(Float64MultiArray, 'gripper_controller/commands',
                                              COMMAND_QOS)
        self.reset_client = self.create_client(Trigger, 'sim/reset')
        self.param_client = self.create_client(SetParameters, 'sim_node/set_parameters')

    def _keep(self, store):
        def callback(msg):
            with self.lock:
                store.append((time.monotonic(), msg))
        return callback

    def _on_status(self, msg):
        self.status = json.loads(msg.data)

    def _on_instruction(self, msg):
        self.instruction = msg.data

    def sim_now(self) -> float:
        """Return the sim time of the newest joint_states (0 before any)."""
        with self.lock:
            if not self.states:
                return 0.0
            stamp = self.states[-1][1].header.stamp
        return stamp.sec + stamp.nanosec * 1e-9


def _wait(executor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
    return False


def _call(executor, client, request, timeout=30.0):
    """Call a service, sent again when its answer is lost (vla_ros.service_calls)."""
    return service_calls.call(client, request, timeout,
                              spin=lambda seconds: executor.spin_once(timeout_sec=seconds))


@pytest.fixture(scope='module')
def sim(tmp_path_factory):
    """Start sim_node as a process; a probe node here (same private domain) watches it."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    log_path = tmp_path_factory.mktemp('sim_node') / 'sim_node.log'
    log = open(log_path, 'w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_ros.nodes.sim_node', '--ros-args', '-p', 'task:=pick_block',
         '-p', 'seed:=1'], env=env, stdout=log,
        stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    probe = Probe()
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    try:
        if not _wait(executor, lambda: len(probe.states) > 10 and len(probe.images) > 2, 30.0):
            proc.terminate()
            proc.wait(10)
            pytest.fail('sim_node published nothing; its output:\n' + log_path.read_text())
        yield probe, executor, proc
    finally:
        probe.destroy_node()
        rclpy.try_shutdown()
        interrupt(proc)
        log.close()
    assert proc.returncode == 0, 'sim_node did not stop cleanly:\n' + log_path.read_text()


def test_sensors_and_clock(sim):
    """Frames, camera info, joint states and an advancing /clock arrive (rates: bench sim)."""
    probe, executor, _ = sim
    with probe.lock:
        counts = len(probe.images), len(probe.states), len(probe.clocks)

    def more():
        with probe.lock:
            return (len(probe.images) >= counts[0] + 3 and len(probe.states) >= counts[1] + 60
                    and len(probe.clocks) >= counts[2] + 60)
    assert _wait(executor, more, 60.0), 'sim_node stopped publishing'
    _, image = probe.images[-1]
    assert (image.width, image.height, image.encoding) == (300, 300, 'rgb8')
    assert len(image.data) == 300 * 300 * 3
    _, info = probe.infos[-1]
    assert info.k[0] > 0 and info.width == 300
    _, state = probe.states[-1]
    assert list(state.name) == [f'arm_joint_{i}' for i in range(1, 8)] + ['gripper']
    clock = [c.clock.sec + c.clock.nanosec * 1e-9 for _, c in probe.clocks[-200:]]
    assert len(clock) > 50 and np.all(np.diff(clock) > 0), '/clock must advance'
    # Frames and joint states carry sim time: stamps inside the span /clock went through.
    stamp = state.header.stamp.sec + state.header.stamp.nanosec * 1e-9
    assert clock[0] <= stamp <= clock[-1] + 1.0


def test_reset_service_with_task_and_seed(sim):
    probe, executor, _ = sim
    assert _wait(executor, lambda: probe.instruction is not None, 30.0)
    request = SetParameters.Request()
    request.parameters = [Parameter('task', value='gripper').to_parameter_msg(),
                          Parameter('seed', value=5).to_parameter_msg()]
    result = _call(executor, probe.param_client, request)
    assert all(r.successful for r in result.results)
    response = _call(executor, probe.reset_client, Trigger.Request())
    assert response.success, response.message
    episode = json.loads(response.message)
    assert episode['task'] == 'gripper' and episode['seed'] == 5
    assert _wait(executor, lambda: probe.instruction == episode['instruction'], 30.0)
    assert _wait(executor, lambda: probe.status and probe.status['task'] == 'gripper', 30.0)
    # Same seed, same episode.
    again = json.loads(_call(executor, probe.reset_client, Trigger.Request()).message)
    assert again['instruction'] == episode['instruction']
    # A bad task name is refused by the parameter callback.
    bad = SetParameters.Request()
    bad.parameters = [Parameter('task', value='fly_away').to_parameter_msg()]
    assert not _call(executor, probe.param_client, bad).results[0].successful


def test_commands_move_the_robot(sim):
    probe, executor, _ = sim
    request = SetParameters.Request()
    request.parameters = [Parameter('task', value='gripper').to_parameter_msg(),
                          Parameter('seed', value=0).to_parameter_msg()]
    _call(executor, probe.param_client, request)
    reply = _call(executor, probe.reset_client, Trigger.Request())
    assert _wait(executor, lambda: probe.status and probe.status['task'] == 'gripper', 30.0)
    # The reset reply names this episode's instruction (the latched topic may lag behind).
    episode = json.loads(reply.message)
    close = episode['instruction'] == 'close the gripper'
    # Commands are ignored for reset_command_hold (0.3 s of sim time) after a reset; the
    # reply says from when they count (the demo opens the motion gate then).
    assert episode['commands_from'] == pytest.approx(episode['sim_time'] + 0.3, abs=1e-6)
    assert _wait(executor, lambda: probe.sim_now() > episode['commands_from'] + 0.1, 30.0)
    with probe.lock:
        q0 = np.array(probe.states[-1][1].position[:7])
    target = q0.copy()
    target[0] += 0.2
    # A forward command controller: the command is sent at 20 Hz of sim time, 20 times.
    sent = []

    def command():
        if not sent or probe.sim_now() >= sent[-1] + 0.05:
            probe.arm_pub.publish(Float64MultiArray(data=target.tolist()))
            probe.grip_pub.publish(Float64MultiArray(data=[1.0 if close else 0.0]))
            sent.append(probe.sim_now())
        return len(sent) >= 20
    assert _wait(executor, command, 60.0)

    def done():
        with probe.lock:
            q = np.array(probe.states[-1][1].position)
        return abs(q[0] - target[0]) < 0.02 and probe.status['success']
    with probe.lock:
        last = (probe.states[-1][0], list(probe.states[-1][1].position))
    assert _wait(executor, done, 30.0), (f'robot did not follow: status {probe.status}, '
                                         f'target {target.tolist()}, last state {last}')


def test_gazebo_bridge_names_the_topics_and_types_sim_node_uses(sim):
    """description/gazebo/ros_gz_bridge.yaml stands in for sim_node: same names, same types."""
    import yaml
    from vla_ros.paths import share_file
    probe, executor, _ = sim
    with open(share_file('description', 'gazebo', 'ros_gz_bridge.yaml'), encoding='utf-8') as f:
        entries = yaml.safe_load(f)
    wanted = {(e['direction'], '/' + e['ros_topic_name'].lstrip('/'), e['ros_type_name'])
              for e in entries}

    def graph():
        pubs = probe.get_publisher_names_and_types_by_node('sim_node', '/')
        subs = probe.get_subscriber_names_and_types_by_node('sim_node', '/')
        return ({('GZ_TO_ROS', n, t) for n, types in pubs for t in types}
                | {('ROS_TO_GZ', n, t) for n, types in subs for t in types})
    # Discovery of the node's endpoints is asynchronous: wait until the graph holds them.
    _wait(executor, lambda: wanted <= graph(), 15.0)
    assert wanted <= graph(), f'not used by sim_node: {sorted(wanted - graph())}'
