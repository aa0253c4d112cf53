"""
The shipped Fast DDS profile is the default transport of every launcher (issue 7.6).

Fast DDS reads its XML profile once per process, so the camera here is a separate process
started with the launchers' environment, as a camera driver on a robot would be.
"""

import json
import os
import subprocess
import sys
import textwrap

from vla_ros.graph import dds_profile_env, NodeSpec
from vla_ros.paths import default_dds_profile
from vla_ros.processes import child_env, ProcessGroup

PROFILE = 'FASTRTPS_DEFAULT_PROFILES_FILE'


def test_profile_is_on_by_default_with_an_off_switch_and_user_files_win(monkeypatch):
    local = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    assert dds_profile_env(local) == {PROFILE: default_dds_profile()}
    # unset: the RMW's default range (SUBNET on Jazzy) → the network variant
    assert dds_profile_env({}) == {PROFILE: default_dds_profile(network=True)}
    assert dds_profile_env({'ROS_LOCALHOST_ONLY': '1'}) == {PROFILE: default_dds_profile()}
    assert os.path.isfile(default_dds_profile())
    assert dds_profile_env({}, enabled=False) == {}
    for off in ('0', 'off', 'false', 'No'):
        assert dds_profile_env({'VLA_ROS_DDS_PROFILE': off}) == {}
    assert dds_profile_env({PROFILE: '/mine.xml'}) == {}
    assert dds_profile_env({'FASTDDS_DEFAULT_PROFILES_FILE': '/mine.xml'}) == {}
    assert dds_profile_env({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}) == {}
    assert dds_profile_env({'RMW_IMPLEMENTATION': 'rmw_fastrtps_dynamic_cpp'}) != {}
    monkeypatch.delenv(PROFILE, raising=False)
    monkeypatch.delenv('VLA_ROS_DDS_PROFILE', raising=False)
    assert child_env()[PROFILE] == default_dds_profile()
    assert PROFILE not in child_env(dds_profile=False)


CAMERA = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from vla_ros.conversions import array_to_image
    from vla_ros.nodes.common import LATEST_IMAGE_QOS, SENSOR_QOS
    frames, hz = int(sys.argv[1]), float(sys.argv[2])
    rclpy.init()
    node = Node('camera_driver')
    pub = node.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
    back = set()
    node.create_subscription(Image, 'vla/image', lambda m: back.add(
        (m.header.stamp.sec, m.header.stamp.nanosec)), LATEST_IMAGE_QOS)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    end = time.monotonic() + 30.0
    while (pub.get_subscription_count() == 0 or node.count_publishers('vla/image') == 0) \\
            and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    # Both directions matched: a warm-up frame made it there and back (no sleeping).
    end = time.monotonic() + 30.0
    while not back and time.monotonic() < end:
        pub.publish(array_to_image(frame, 'rgb8', node.get_clock().now().to_msg(), 'camera'))
        rclpy.spin_once(node, timeout_sec=0.1)
    back.clear()
    sent = set()
    for _ in range(frames):
        # At most `hz`, and each frame after the one before came back (or 2 s): camera_node
        # keeps only the newest frame, so on a loaded machine a faster camera would lose
        # frames to a starved callback, which is not what this test is about.
        t = time.monotonic()
        stamp = node.get_clock().now().to_msg()
        key = (stamp.sec, stamp.nanosec)
        sent.add(key)
        pub.publish(array_to_image(frame, 'rgb8', stamp, 'camera'))
        while key not in back and time.monotonic() < t + 2.0:
            rclpy.spin_once(node, timeout_sec=0.02)
        while time.monotonic() < t + 1.0 / hz:
            rclpy.spin_once(node, timeout_sec=max(0.0, t + 1.0 / hz - time.monotonic()))
    print(json.dumps({'sent': len(sent), 'back': len(sent & back)}))
""")


def test_640x480_frames_reach_camera_node_on_the_default_transport(params_file):
    """
    With Fast DDS defaults about half of these frames were lost (0.92 MB > 0.5 MB SHM).

    Frames go at up to 30 Hz, each after the one before came back; the rate camera_node
    sustains is measured by ``vla-ros bench pipeline``, not here.
    """
    group = ProcessGroup(params_file, quiet=True)
    group.start(NodeSpec('camera_node', 'camera_node'))
    try:
        with open(f'/proc/{group.procs["camera_node"].pid}/environ', 'rb') as stream:
            assert f'{PROFILE}={default_dds_profile()}'.encode() in stream.read().split(b'\0')
        out = subprocess.run([sys.executable, '-c', CAMERA, '90', '30'], env=child_env(),
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        counts = json.loads(out.stdout.strip().splitlines()[-1])
        assert counts['sent'] == 90
        assert counts['back'] >= 0.9 * counts['sent'], counts
        assert group.failed() is None
    finally:
        group.stop()


def test_shipped_profile_keeps_udp_on_loopback_unless_the_range_is_wider():
    local = open(default_dds_profile(), encoding='utf-8').read()
    assert '<address>127.0.0.1</address>' in local
    assert dds_profile_env({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}) == {
        PROFILE: default_dds_profile()}
    wide = dds_profile_env({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'})[PROFILE]
    assert wide == default_dds_profile(network=True) and wide != default_dds_profile()
    assert '127.0.0.1' not in open(wide, encoding='utf-8').read()
