"""The generated input bag: two tasks of camera frames, joints and instructions."""

import json
from typing import Dict, List

import numpy as np

from .common import ARM_JOINTS, GENERATED_BAG_VERSION, NS
from ...bag import topics as bag_topics
from ...bag.record import Recording
from ...nodes.common import LATCHED_QOS, SENSOR_QOS
# The simulated robot's ready pose; vla_ros.sim.robot imports MuJoCo only when a Robot is made.
from ...sim.robot import READY_ARM


TASKS = (
    # instruction, block colours (RGB) and their top-left corners in a 320x240 frame
    ('pick up the red block', [((200, 40, 40), (60, 150)), ((40, 170, 60), (170, 120)),
                               ((40, 70, 200), (250, 160))]),
    ('put the green block in the bowl', [((40, 170, 60), (90, 110)),
                                         ((200, 40, 40), (220, 150)),
                                         ((230, 230, 230), (150, 60))]),
)
TASK_NS = 3 * NS
CAMERA_PERIOD_NS = 100_000_000
JOINT_PERIOD_NS = 20_000_000


def frame(task: int, k: int, height: int = 240, width: int = 320) -> np.ndarray:
    """
    Return camera frame ``k`` of task ``task`` as RGB uint8 (integer arithmetic only).

    A table-coloured gradient, the task's blocks drifting a few pixels per frame and a dark
    'gripper' bar sweeping across: the same bytes on every machine.
    """
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 140 + (x * 40) // width
    img[..., 1] = 112 + (y * 30) // height
    img[..., 2] = 84 + ((x + y) * 20) // (width + height)
    for i, (colour, (bx, by)) in enumerate(TASKS[task][1]):
        dx = ((k * (2 + i)) % 24) - 12
        dy = ((k * (1 + i)) % 10) - 5
        img[by + dy:by + dy + 30, bx + dx:bx + dx + 30] = colour
    gx = 20 + (k * 7) % (width - 60)
    img[10:70, gx:gx + 16] = (35, 35, 40)
    return img


def joint_positions_at(task: int, k: int) -> List[float]:
    """Return the 7 arm positions of joint_states sample ``k`` of a task (triangle waves)."""
    out = []
    for j, q in enumerate(READY_ARM.tolist()):
        phase = (k * (3 + j) + 40 * task) % 120
        tri = phase if phase < 60 else 120 - phase          # 0..60
        out.append(round(q + (tri - 30) * 1e-3, 6))         # +-30 mrad around the pose
    return out


def generate_bag(path: str, start_ns: int = 1000 * NS, storage: str = 'mcap') -> Dict:
    """
    Write the built-in golden input bag to ``path`` (a new rosbag2 folder); return counts.

    Bag times are what a recorder stores (receive times): camera frames arrive 4 ms after
    their header stamp, joint_states 1 ms after theirs; none falls on a 50 ms control tick.
    """
    # Serialized by rosbags, which writes CDR alignment padding as zeros (rclpy leaves it
    # uninitialised): the bag's bytes, and the digest a golden keeps of them, never change.
    store = bag_topics.typestore()
    types = store.types
    header = types['std_msgs/msg/Header']
    time_cls = types['builtin_interfaces/msg/Time']

    def stamped(ns: int, frame_id: str = ''):
        return header(stamp=time_cls(sec=ns // NS, nanosec=ns % NS), frame_id=frame_id)

    def cdr(msg, msgtype: str) -> bytes:
        return bytes(store.serialize_cdr(msg, msgtype))

    image_t, joints_t = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/JointState'
    string_t = 'std_msgs/msg/String'
    events = []
    for task, (text, _) in enumerate(TASKS):
        t0 = start_ns + task * TASK_NS
        events.append((t0 + 3_000_000, 'vla/instruction', string_t,
                       cdr(types[string_t](data=text), string_t), LATCHED_QOS))
        for k in range(TASK_NS // CAMERA_PERIOD_NS):
            stamp = t0 + 29_000_000 + k * CAMERA_PERIOD_NS
            bgr = np.ascontiguousarray(frame(task, k)[..., ::-1])
            h, w = bgr.shape[:2]
            msg = types[image_t](header=stamped(stamp, 'camera_optical_frame'), height=h,
                                 width=w, encoding='bgr8', is_bigendian=0, step=w * 3,
                                 data=bgr.reshape(-1))
            events.append((stamp + 4_000_000, 'camera/image_raw', image_t, cdr(msg, image_t),
                           SENSOR_QOS))
        for k in range(TASK_NS // JOINT_PERIOD_NS):
            stamp = t0 + 6_000_000 + k * JOINT_PERIOD_NS
            msg = types[joints_t](header=stamped(stamp), name=ARM_JOINTS + ['gripper'],
                                  position=np.array(joint_positions_at(task, k) + [0.0]),
                                  velocity=np.zeros(0), effort=np.zeros(0))
            events.append((stamp + 1_000_000, 'joint_states', joints_t, cdr(msg, joints_t),
                           SENSOR_QOS))
    events.sort(key=lambda e: (e[0], e[1]))
    recording = Recording(path, storage)
    try:
        for t, topic, msgtype, data, qos in events:
            recording.write('/' + topic, msgtype, t, data, offered=[qos])
        recording.set_custom_data('vla_ros.golden_bag', json.dumps(
            {'generator': 'vla_ros.testing.golden.generate_bag',
             'version': GENERATED_BAG_VERSION}))
    finally:
        recording.close()
    counts: Dict[str, int] = {}
    for _, topic, _, _, _ in events:
        counts[topic] = counts.get(topic, 0) + 1
    return counts
