"""
The graph's topics as a bag sees them: names, message types, QoS, definitions and hashes.

``GRAPH_TOPICS`` mirrors what the nodes publish (vla_ros/nodes/*.py, QoS from
nodes/common.py); ``vla-ros record`` subscribes to them with a matching QoS before their
publishers exist, so the first messages of a run are not lost. Message definitions and
RIHS01 type description hashes come from rosbags' ROS 2 Jazzy type store; types that are not
in it (a robot's own interfaces) are read from ``share/<package>/msg/<Type>.msg`` of the
installed packages, the way rosbag2 reads them from the ament index.
"""

from dataclasses import dataclass
import importlib
import os
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

SENSOR = 'sensor'        # best effort, volatile (cameras, joint_states)
RELIABLE = 'reliable'    # reliable, volatile (commands, targets, tokens, /clock, odom)
LATCHED = 'latched'      # reliable, transient local (instruction, task status)
RECORD_DEPTH = 100       # the recorder's own queue: room for a short stall, any QoS


@dataclass(frozen=True)
class TopicSpec:
    """A topic of the graph: message type (``pkg/msg/Type``) and QoS kind."""

    msgtype: str
    qos: str


GRAPH_TOPICS: Dict[str, TopicSpec] = {
    'camera/image_raw': TopicSpec('sensor_msgs/msg/Image', SENSOR),
    'vla/image': TopicSpec('sensor_msgs/msg/Image', SENSOR),
    'vla/instruction': TopicSpec('std_msgs/msg/String', LATCHED),
    'vla/action_tokens': TopicSpec('vla_ros_interfaces/msg/ActionTokens', RELIABLE),
    'vla/target': TopicSpec('vla_ros_interfaces/msg/ActionTarget', RELIABLE),
    'joint_states': TopicSpec('sensor_msgs/msg/JointState', SENSOR),
    'arm_controller/commands': TopicSpec('std_msgs/msg/Float64MultiArray', RELIABLE),
    'cmd_vel': TopicSpec('geometry_msgs/msg/TwistStamped', RELIABLE),
    'gripper_controller/commands': TopicSpec('std_msgs/msg/Float64MultiArray', RELIABLE),
    '/clock': TopicSpec('rosgraph_msgs/msg/Clock', RELIABLE),
    'sim/task_status': TopicSpec('std_msgs/msg/String', LATCHED),
    'odom': TopicSpec('nav_msgs/msg/Odometry', RELIABLE),
    '/diagnostics': TopicSpec('diagnostic_msgs/msg/DiagnosticArray', RELIABLE),
}
DEFAULT_TOPICS: Tuple[str, ...] = tuple(GRAPH_TOPICS)


class UnknownTypeError(ValueError):
    """A message type that cannot be imported or described."""


def resolve(name: str, namespace: str = '/') -> str:
    """Return the fully qualified topic name (relative names go under ``namespace``)."""
    name = name.strip()
    if name.startswith('~'):
        raise ValueError(f'private topic names are not supported here: {name!r}')
    if name.startswith('/'):
        return name
    namespace = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{namespace}/{name}'


def spec_for(topic: str, namespace: str = '/') -> Optional[TopicSpec]:
    """Return the graph's TopicSpec of a (relative or absolute) topic name, if it has one."""
    full = resolve(topic, namespace)
    for name, spec in GRAPH_TOPICS.items():
        if resolve(name, namespace) == full:
            return spec
    return None


def message_class(msgtype: str):
    """Import the Python class of ``pkg/msg/Type`` (UnknownTypeError when not installed)."""
    parts = msgtype.split('/')
    if len(parts) == 2:  # pkg/Type, as some tools write it
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        raise UnknownTypeError(f'malformed message type {msgtype!r}; expected pkg/msg/Type')
    try:
        module = importlib.import_module(f'{parts[0]}.{parts[1]}')
        return getattr(module, parts[2])
    except (ImportError, AttributeError) as exc:
        raise UnknownTypeError(f'message type {msgtype!r} is not installed ({exc})') from exc


def type_name(cls) -> str:
    """``pkg/msg/Type`` of a generated rclpy message class."""
    module = cls.__module__.split('.')
    return f'{module[0]}/{module[1]}/{cls.__name__}'


# -- definitions and hashes -------------------------------------------------------------------

_STORE = None
_STORE_LOCK = threading.Lock()


def _share_dirs() -> List[str]:
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    seen, out = set(), []
    for prefix in prefixes:
        share = os.path.join(prefix, 'share')
        if share not in seen and os.path.isdir(share):
            seen.add(share)
            out.append(share)
    return out


def _msg_file(msgtype: str) -> Optional[str]:
    pkg, kind, name = msgtype.split('/')
    for share in _share_dirs():
        path = os.path.join(share, pkg, kind, f'{name}.msg')
        if os.path.isfile(path):
            return path
    return None


def _referenced(fielddef) -> List[str]:
    """Message types a rosbags field definition refers to."""
    from rosbags.interfaces import Nodetype
    kind, detail = fielddef
    if kind == Nodetype.NAME:
        return [detail]
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        return _referenced(detail[0])
    return []


def _ensure(store, msgtype: str, chain: Tuple[str, ...] = ()):
    """Register ``msgtype`` (and what it refers to) from installed .msg files if missing."""
    if msgtype in store.fielddefs:
        return
    from rosbags.typesys import get_types_from_msg
    if msgtype.count('/') != 2:
        raise UnknownTypeError(f'malformed message type {msgtype!r}; expected pkg/msg/Type')
    path = _msg_file(msgtype)
    if path is None:
        raise UnknownTypeError(
            f'{msgtype} is neither in the ROS 2 Jazzy type store nor installed (no '
            f'share/{msgtype.split("/")[0]}/msg/{msgtype.split("/")[2]}.msg under '
            f'AMENT_PREFIX_PATH)')
    if msgtype in chain:
        raise UnknownTypeError(f'recursive message definition: {" -> ".join(chain)}')
    with open(path, encoding='utf-8') as stream:
        types = get_types_from_msg(stream.read(), msgtype)
    for _, fields in types.values():
        for _, fielddef in fields:
            for ref in _referenced(fielddef):
                _ensure(store, ref, chain + (msgtype,))
    store.register(types)


def typestore():
    """Return the shared rosbags store of types: ROS 2 Jazzy plus those added on demand."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            from rosbags.typesys import get_typestore, Stores
            _STORE = get_typestore(Stores.ROS2_JAZZY)
        return _STORE


def definition(msgtype: str) -> Tuple[str, str]:
    """Return (message definition text, RIHS01 hash) of a type, as rosbag2 stores them."""
    store = typestore()
    with _STORE_LOCK:
        _ensure(store, msgtype)
        msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
        return msgdef, store.hash_rihs01(msgtype)


# -- QoS --------------------------------------------------------------------------------------

def subscription_qos(kind: str):
    """Return the QoS the recorder subscribes with for a topic of QoS kind ``kind``."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    reliability = (ReliabilityPolicy.BEST_EFFORT if kind == SENSOR
                   else ReliabilityPolicy.RELIABLE)
    durability = (DurabilityPolicy.TRANSIENT_LOCAL if kind == LATCHED
                  else DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH,
                      reliability=reliability, durability=durability)


def adapted_kind(offered: Sequence) -> str:
    """
    Return the QoS kind that matches every publisher of a topic (rosbag2's adaptive rule).

    Reliable only when every publisher is reliable (a reliable subscription does not match a
    best-effort publisher); transient local only when every publisher is (it would not match
    a volatile one).
    """
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    if not offered:
        return RELIABLE
    if any(q.reliability != ReliabilityPolicy.RELIABLE for q in offered):
        return SENSOR
    if all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered):
        return LATCHED
    return RELIABLE


def _bag_time(duration) -> 'object':
    from rosbags.interfaces import QosTime
    ns = int(getattr(duration, 'nanoseconds', 0) or 0)
    sec, nsec = divmod(max(0, ns), 1_000_000_000)
    return QosTime(sec, nsec)


def _enum(enum_cls, value, default: str):
    name = getattr(value, 'name', str(value)).upper()
    try:
        return enum_cls[name]
    except KeyError:
        return enum_cls[default]


def qos_to_bag(profile):
    """Convert an rclpy QoSProfile to a rosbags Qos (an offered_qos_profiles entry)."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability)
    return Qos(history=_enum(QosHistory, profile.history, 'UNKNOWN'),
               depth=int(profile.depth),
               reliability=_enum(QosReliability, profile.reliability, 'UNKNOWN'),
               durability=_enum(QosDurability, profile.durability, 'UNKNOWN'),
               deadline=_bag_time(profile.deadline),
               lifespan=_bag_time(profile.lifespan),
               liveliness=_enum(QosLiveliness, profile.liveliness, 'UNKNOWN'),
               liveliness_lease_duration=_bag_time(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def qos_from_bag(profiles: Sequence, depth: int = 10):
    """
    Return the QoSProfile to play a topic with, from its recorded publishers' rosbags Qos.

    Like ``ros2 bag play``: reliable unless a recorded publisher was best effort, transient
    local only when every recorded publisher was; deadlines and lifespans are not copied.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    names = [(getattr(q.reliability, 'name', ''), getattr(q.durability, 'name', ''))
             for q in profiles]
    reliability = (ReliabilityPolicy.BEST_EFFORT
                   if any(r == 'BEST_EFFORT' for r, _ in names) else ReliabilityPolicy.RELIABLE)
    latched = bool(names) and all(d == 'TRANSIENT_LOCAL' for _, d in names)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1 if latched else int(depth),
                      reliability=reliability,
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE))
