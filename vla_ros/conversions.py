"""Messages <-> numpy: the only layer that knows both message types and core types."""

from typing import Optional, Sequence, Tuple

from builtin_interfaces.msg import Duration, Time
import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import MultiArrayDimension, UInt8MultiArray

from .core import image as core_image

TOKENS_LABEL = 'action'
STAMP_PREFIX = 'stamp='


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


def tokens_to_msg(tokens: np.ndarray, stamp_ns: int) -> UInt8MultiArray:
    """
    11 tokens → UInt8MultiArray with a labelled layout carrying the source image stamp.

    std_msgs has no stamped byte array; the second layout dimension (size 1) carries the
    camera stamp as its label so that latency can be measured end to end.
    """
    msg = UInt8MultiArray()
    n = int(len(tokens))
    msg.layout.dim = [
        MultiArrayDimension(label=TOKENS_LABEL, size=n, stride=n),
        MultiArrayDimension(label=f'{STAMP_PREFIX}{int(stamp_ns)}', size=1, stride=1),
    ]
    msg.data = np.asarray(tokens, dtype=np.uint8).tobytes()
    return msg


def msg_to_tokens(msg: UInt8MultiArray, expected: int) -> Tuple[np.ndarray, Optional[int]]:
    """UInt8MultiArray → (tokens uint8 [expected], stamp_ns or None). Raises ValueError."""
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size != expected:
        raise ValueError(f'expected {expected} action tokens, found {data.size}')
    dims = list(msg.layout.dim)
    if dims and dims[0].size != expected:
        raise ValueError(f'layout says {dims[0].size} tokens, expected {expected}')
    stamp = None
    for d in dims[1:]:
        if d.label.startswith(STAMP_PREFIX):
            try:
                stamp = int(d.label[len(STAMP_PREFIX):])
            except ValueError:
                raise ValueError(f'malformed stamp label {d.label!r}')
    return data.copy(), stamp


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """
    Positions of ``names`` (in that order) from a JointState. Raises ValueError.

    Rejects messages whose name and position arrays differ in length, that repeat a joint
    name (which copy would be right?), that lack a wanted joint, or whose wanted positions
    are not finite.
    """
    if len(msg.position) != len(msg.name):
        raise ValueError(f'{len(msg.name)} names but {len(msg.position)} positions')
    seen = {}
    for i, name in enumerate(msg.name):
        if name in seen:
            raise ValueError(f'joint {name!r} appears twice')
        seen[name] = i
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f'missing joints {missing}')
    q = np.array([msg.position[seen[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError(f'non-finite positions {q.tolist()}')
    return q
