"""
The robot build path: both packages built by colcon from a fresh workspace, a node run.

On a robot the repository is cloned into ``<ws>/src/vla_ros`` and built with the command
the README gives (``colcon build --base-paths src/vla_ros src/vla_ros/interfaces``: colcon
does not look for packages inside another package's folder, so the interface package's
folder is named as a second base path). Here the ROS underlay is this venv (what
``source /opt/ros/jazzy/setup.bash`` provides on a robot): AMENT_PREFIX_PATH and
CMAKE_PREFIX_PATH point at it and its bin/ comes first on PATH. Nothing else differs.
The workspace is built once per run (conftest's ``colcon_ws``, test/ros2_support.py) and
shared with the launch tests (test_launch.py).
"""

import signal
import subprocess

from graph_harness import wait_for
import rclpy
from rclpy.node import Node
from vla_ros.processes import interrupt_and_read


def test_colcon_builds_both_packages_and_a_node_runs_from_the_install_space(colcon_ws):
    """`colcon build` in a fresh workspace; source install/setup.bash; start a node."""
    assert colcon_ws.ok, colcon_ws.failure()
    assert 'Summary: 2 packages finished' in colcon_ws.build.stdout, \
        colcon_ws.build.stdout[-2000:]
    ws, env, install = colcon_ws.path, colcon_ws.env, colcon_ws.install
    # Sourced, the install space provides both packages (not the venv's copies).
    probe = subprocess.run(
        ['python', '-c', 'import vla_ros, vla_ros_interfaces.msg as m, '
         'ament_index_python as a; print(vla_ros.__file__); print(m.__file__); '
         'print(a.get_package_share_directory("vla_ros"))'],
        cwd=ws, env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert all(line.startswith(install) for line in lines), lines
    # A node from the install space joins the graph with the interface package's types.
    rclpy.init()
    node = Node('colcon_check')
    proc = subprocess.Popen(
        ['install/vla_ros/lib/vla_ros/detokenizer_node'],
        cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def offered() -> bool:
            rclpy.spin_once(node, timeout_sec=0.1)
            return any(info.topic_type == 'vla_ros_interfaces/msg/ActionTarget'
                       for info in node.get_publishers_info_by_topic('/vla/target'))
        seen = wait_for(offered, 60.0)
        alive = proc.poll() is None
    finally:
        _, out = interrupt_and_read(proc, 20)
        node.destroy_node()
        rclpy.try_shutdown()
    assert seen and alive, 'detokenizer_node from the install space not seen:\n' + out[-3000:]
    assert proc.returncode in (0, -signal.SIGINT, 130), out[-3000:]
