"""Messages <-> numpy: the only layer that knows both message types and core types."""

import math
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose
from nav_msgs.msg import Odometry
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, JointState
from vla_ros_interfaces.msg import ActionTarget, ActionTokens, SimState

from .core import image as core_image


def image_to_rgb8(msg: Image) -> np.ndarray:
    """Decode any supported Image to rgb8 (H, W, 3). Raises core.image.ImageError."""
    arr = core_image.decode(msg.encoding, msg.height, msg.width, msg.step,
                            bool(msg.is_bigendian), msg.data)
    return core_image.to_rgb8(arr, msg.encoding)


def array_to_image(array: np.ndarray, encoding: str, stamp: Optional[Time] = None,
                   frame_id: str = '') -> Image:
    """Build an Image; data is filled from bytes (never element by element)."""
    h, w, step, data = core_image.encode(array, encoding)
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.step = h, w, step
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.data = data
    return msg


def image_to_array(msg: Image) -> np.ndarray:
    """Decode an Image without colour conversion (cv_bridge 'passthrough')."""
    return core_image.decode(msg.encoding, msg.height, msg.width, msg.step,
                             bool(msg.is_bigendian), msg.data)


def time_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_time(ns: int) -> Time:
    """Integer nanoseconds → builtin_interfaces/Time."""
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def duration_msg(seconds: float) -> Duration:
    """Seconds → builtin_interfaces/Duration (nanosec always below 1e9)."""
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def tokens_to_msg(tokens: np.ndarray, stamp_ns: int, action_space: str = '',
                  frame_id: str = '') -> ActionTokens:
    """Turn tokens into ActionTokens stamped with the source camera frame's stamp and frame."""
    msg = ActionTokens()
    msg.header.stamp = ns_to_time(int(stamp_ns))
    msg.header.frame_id = frame_id
    msg.tokens = np.asarray(tokens, dtype=np.uint8).tobytes()
    msg.action_space = action_space
    return msg


def _check_space(found: str, expected: Optional[str], what: str):
    if expected and found != expected:
        raise ValueError(f'{what} for action space {found or "(none)"!r}, this node is '
                         f'configured for {expected!r}')


def msg_to_tokens(msg: ActionTokens, expected: int, action_space: Optional[str] = None,
                  max_steps: int = 1) -> Tuple[np.ndarray, Optional[int]]:
    """
    Read ActionTokens: (tokens uint8 [k * expected], source stamp ns or None); ValueError if bad.

    A stamp of 0 means unstamped (None). With ``action_space`` given, tokens of another
    action space are refused. ``max_steps`` > 1 also accepts an action chunk: k steps of
    ``expected`` tokens each, 1 <= k <= max_steps.
    """
    data = np.frombuffer(bytes(msg.tokens), dtype=np.uint8)
    steps = data.size // expected if expected else 1
    if steps * expected != data.size or not 1 <= steps <= max_steps:
        what = (f'{expected} action tokens' if max_steps <= 1 else
                f'{expected} action tokens per step, 1 to {max_steps} steps')
        raise ValueError(f'expected {what}, found {data.size}')
    _check_space(msg.action_space, action_space, 'tokens')
    return data.copy(), (time_to_ns(msg.header.stamp) or None)


def target_to_msg(target: Sequence[float], stamp_ns: int, joint_names: Sequence[str],
                  action_space: str = '', frame_id: str = '') -> ActionTarget:
    """Turn an 11-D target (7 arm positions, base vx vy wz, gripper) into an ActionTarget."""
    t = np.asarray(target, dtype=np.float64)
    msg = ActionTarget()
    msg.header.stamp = ns_to_time(int(stamp_ns))
    msg.header.frame_id = frame_id
    msg.joint_names = list(joint_names)
    msg.positions = t[:7].tolist()
    msg.base.linear.x, msg.base.linear.y, msg.base.angular.z = (float(v) for v in t[7:10])
    msg.gripper = float(t[10])
    msg.action_space = action_space
    return msg


def _named(names: Sequence[str], values: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """
    Return ``values`` of the ``wanted`` names, in that order (float64); ValueError if bad.

    Names and values must pair up, no name may appear twice (which copy would be right?)
    and every wanted name must be there.
    """
    names, values = list(names), list(values)
    if len(names) != len(values):
        raise ValueError(f'{len(names)} names but {len(values)} positions')
    index = {}
    for i, name in enumerate(names):
        if name in index:
            raise ValueError(f'joint {name!r} appears twice')
        index[name] = i
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ValueError(f'missing joints {missing}')
    return np.array([values[index[n]] for n in wanted], dtype=np.float64)


def msg_to_target(msg: ActionTarget, joint_names: Sequence[str],
                  action_space: Optional[str] = None) -> Tuple[np.ndarray, Optional[int]]:
    """
    Read an ActionTarget: (11-D target in ``joint_names`` order, source stamp ns or None).

    Raises ValueError for mismatched or repeated joint names, missing joints, non-finite
    values, or (with ``action_space`` given) another action space.
    """
    arm = _named(msg.joint_names, msg.positions, joint_names)
    _check_space(msg.action_space, action_space, 'target')
    out = np.append(arm, [msg.base.linear.x, msg.base.linear.y, msg.base.angular.z,
                          msg.gripper])
    if not np.all(np.isfinite(out)):
        raise ValueError(f'non-finite values {out.tolist()}')
    return out, (time_to_ns(msg.header.stamp) or None)


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """
    Positions of ``names`` (in that order) from a JointState. Raises ValueError.

    Rejects messages whose name and position arrays differ in length, that repeat a joint
    name (which copy would be right?), that lack a wanted joint, or whose wanted positions
    are not finite.
    """
    q = _named(msg.name, msg.position, names)
    if not np.all(np.isfinite(q)):
        raise ValueError(f'non-finite positions {q.tolist()}')
    return q


def odometry_msg(x: float, y: float, yaw: float, twist: Sequence[float], stamp: Time,
                 frame_id: str, child_frame_id: str) -> Odometry:
    """Planar pose (x, y, yaw) and body twist (vx, vy, wz) → nav_msgs/Odometry."""
    msg = Odometry()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.child_frame_id = child_frame_id
    msg.pose.pose.position.x, msg.pose.pose.position.y = float(x), float(y)
    msg.pose.pose.orientation.z = math.sin(yaw / 2)
    msg.pose.pose.orientation.w = math.cos(yaw / 2)
    vx, vy, wz = (float(v) for v in twist)
    msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.angular.z = vx, vy, wz
    return msg


def camera_info_msg(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                    frame_id: str) -> CameraInfo:
    """Pinhole intrinsics without distortion → sensor_msgs/CameraInfo (stamp left to set)."""
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = int(width), int(height)
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class WorldState(NamedTuple):
    """A decoded sim/state: the episode and the world (as ``Robot.snapshot`` returns it)."""

    stamp_ns: int
    task: str
    seed: int
    episode_start_ns: int
    joints: Dict[str, float]
    bodies: Dict[str, Tuple[np.ndarray, np.ndarray]]


def sim_state_msg(stamp_ns: int, task: str, seed: int, episode_start_ns: int,
                  joints: Mapping[str, float], bodies: Mapping[str, Tuple], frame_id: str = ''
                  ) -> SimState:
    """Build a SimState; ``bodies`` maps a name to (position [3], quaternion w, x, y, z)."""
    msg = SimState()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.task, msg.seed = task, int(seed)
    msg.episode_start = ns_to_time(episode_start_ns)
    msg.joint_names = list(joints)
    msg.joint_positions = [float(v) for v in joints.values()]
    msg.body_names = list(bodies)
    poses = []
    for pos, quat in bodies.values():
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in pos)
        o = pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in quat)
        poses.append(pose)
    msg.body_poses = poses
    return msg


def msg_to_sim_state(msg: SimState) -> WorldState:
    """Decode a SimState; raises ValueError when names and values do not pair up."""
    if len(msg.joint_names) != len(msg.joint_positions):
        raise ValueError(f'{len(msg.joint_names)} joint names for '
                         f'{len(msg.joint_positions)} positions')
    if len(msg.body_names) != len(msg.body_poses):
        raise ValueError(f'{len(msg.body_names)} body names for {len(msg.body_poses)} poses')
    if len(set(msg.joint_names)) != len(msg.joint_names) or \
            len(set(msg.body_names)) != len(msg.body_names):
        raise ValueError('a joint or body is named twice')
    bodies = {}
    for name, pose in zip(msg.body_names, msg.body_poses):
        p, o = pose.position, pose.orientation
        bodies[name] = (np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z]))
    return WorldState(time_to_ns(msg.header.stamp), msg.task, int(msg.seed),
                      time_to_ns(msg.episode_start),
                      dict(zip(msg.joint_names, (float(v) for v in msg.joint_positions))),
                      bodies)
