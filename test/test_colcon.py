"""
The robot build path: both packages built by colcon from a fresh workspace, a node run.

On a robot the repository is cloned into ``<ws>/src/vla_ros`` and built with the command
the README gives (``colcon build --base-paths src/vla_ros src/vla_ros/interfaces``: colcon
does not look for packages inside another package's folder, so the interface package's
folder is named as a second base path). Here the ROS underlay is this venv (what
``source /opt/ros/jazzy/setup.bash`` provides on a robot): AMENT_PREFIX_PATH and
CMAKE_PREFIX_PATH point at it and its bin/ comes first on PATH. Nothing else differs.
"""

import os
import shutil
import signal
import subprocess
import sys

from graph_harness import wait_for
import rclpy
from rclpy.node import Node

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = sys.prefix
SKIP_DIRS = {'.venv', '.git', 'build', 'install', 'log', '__pycache__', 'runs', 'data'}


def _copy_checkout(dest: str):
    """Copy what a clone holds (tracked files; the working tree's when not a git checkout)."""
    try:
        files = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split('\0')
    except (OSError, subprocess.CalledProcessError):
        files = []
    if files and files != ['']:
        for rel in filter(None, files):
            src = os.path.join(REPO, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(dest, rel))
        # The exported model is generated, not committed: a robot runs `make models`
        # (or copies the export) before building; take this checkout's export along.
        models = os.path.join(REPO, 'models')
        for root, _, names in os.walk(models):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), REPO)
                if not os.path.exists(os.path.join(dest, rel)):
                    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                    shutil.copy2(os.path.join(REPO, rel), os.path.join(dest, rel))
    else:
        shutil.copytree(REPO, dest, ignore=lambda d, names: [n for n in names
                                                             if n in SKIP_DIRS])


def _underlay_env() -> dict:
    env = dict(os.environ)
    env['PATH'] = os.path.join(VENV, 'bin') + os.pathsep + env.get('PATH', '')
    env['AMENT_PREFIX_PATH'] = VENV
    env['CMAKE_PREFIX_PATH'] = VENV
    env.pop('PYTHONPATH', None)
    return env


def test_colcon_builds_both_packages_and_a_node_runs_from_the_install_space(tmp_path):
    """`colcon build` in a fresh workspace; source install/setup.bash; start a node."""
    ws = tmp_path / 'ws'
    src = ws / 'src' / 'vla_ros'
    _copy_checkout(str(src))
    env = _underlay_env()
    build = subprocess.run(
        ['colcon', 'build', '--base-paths', 'src/vla_ros', 'src/vla_ros/interfaces',
         '--event-handlers', 'console_cohesion+'],
        cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    assert 'Summary: 2 packages finished' in build.stdout, build.stdout[-2000:]
    install = ws / 'install'
    # Sourced, the install space provides both packages (not the venv's copies).
    probe = subprocess.run(
        ['bash', '-c', 'source install/setup.bash && python -c "import vla_ros, '
         'vla_ros_interfaces.msg as m, ament_index_python as a; print(vla_ros.__file__); '
         'print(m.__file__); print(a.get_package_share_directory(\'vla_ros\'))"'],
        cwd=ws, env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert all(line.startswith(str(install)) for line in lines), lines
    # A node from the install space joins the graph with the interface package's types.
    rclpy.init()
    node = Node('colcon_check')
    proc = subprocess.Popen(
        ['bash', '-c', 'source install/setup.bash && exec '
         'install/vla_ros/lib/vla_ros/detokenizer_node'],
        cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def offered() -> bool:
            rclpy.spin_once(node, timeout_sec=0.1)
            return any(info.topic_type == 'vla_ros_interfaces/msg/ActionTarget'
                       for info in node.get_publishers_info_by_topic('/vla/target'))
        seen = wait_for(offered, 60.0)
        alive = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        node.destroy_node()
        rclpy.try_shutdown()
    assert seen and alive, 'detokenizer_node from the install space not seen:\n' + out[-3000:]
    assert proc.returncode in (0, -signal.SIGINT, 130), out[-3000:]
