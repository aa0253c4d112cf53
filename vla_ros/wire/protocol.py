"""
The remote policy protocol (``_proto/policy_v1.proto``) as both ends use it.

The service's method table is written here by hand (``METHODS``) instead of generated, so
the only generated module is the message code (``_proto/policy_v1_pb2.py``) and neither end
depends on the gRPC code generator's version; ``test/test_serve.py`` checks the table
against the service in the .proto. Frames are raw rgb8 (lossless), PNG (lossless) or JPEG
(lossy); decoding checks the declared size before any pixel is decoded, so a small request
cannot make the server allocate a large image. Plain Python, no rclpy.
"""

import hashlib
import io
import re
from typing import Dict, Tuple

import numpy as np

from ._proto import policy_v1_pb2 as pb

PROTOCOL_VERSION = 1
SERVICE = 'vla_ros.policy.v1.PolicyService'
# name → (request class, reply class)
METHODS: Dict[str, Tuple[type, type]] = {
    'Predict': (pb.PredictRequest, pb.PredictReply),
    'Health': (pb.HealthRequest, pb.HealthReply),
    'GetModelInfo': (pb.ModelInfoRequest, pb.ModelInfo),
}
# Per-robot token: gRPC metadata ``authorization: Bearer <token>``.
AUTH_METADATA = 'authorization'
ROBOT_ID_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$')
MAX_INSTRUCTION_CHARS = 1000
ENCODINGS = {'raw': pb.Frame.RAW_RGB8, 'png': pb.Frame.PNG, 'jpeg': pb.Frame.JPEG}
_PIL_FORMATS = {pb.Frame.PNG: 'PNG', pb.Frame.JPEG: 'JPEG'}


class FrameError(ValueError):
    """A frame that cannot be decoded into the model's input image."""


def method_path(name: str) -> str:
    """Return the gRPC path of one method, ``/vla_ros.policy.v1.PolicyService/<name>``."""
    return f'/{SERVICE}/{name}'


def encode_frame(rgb: np.ndarray, compression: str = 'raw', jpeg_quality: int = 90) -> pb.Frame:
    """Build a Frame from an rgb8 image [H, W, 3] (``compression``: raw, png or jpeg)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FrameError(f'expected an rgb8 image [H, W, 3] uint8, found {rgb.dtype} '
                         f'{list(rgb.shape)}')
    if compression not in ENCODINGS:
        raise FrameError(f'compression must be one of {sorted(ENCODINGS)}, found '
                         f'{compression!r}')
    h, w = rgb.shape[:2]
    encoding = ENCODINGS[compression]
    if encoding == pb.Frame.RAW_RGB8:
        data = np.ascontiguousarray(rgb).tobytes()
    else:
        from PIL import Image
        out = io.BytesIO()
        image = Image.fromarray(np.ascontiguousarray(rgb), 'RGB')
        if encoding == pb.Frame.PNG:
            image.save(out, format='PNG', compress_level=1)
        else:
            image.save(out, format='JPEG', quality=int(jpeg_quality))
        data = out.getvalue()
    return pb.Frame(encoding=encoding, width=w, height=h, data=data)


def decode_frame(frame: pb.Frame, size: Tuple[int, int]) -> np.ndarray:
    """
    Decode a Frame into rgb8 [H, W, 3] of exactly ``size`` (H, W); FrameError otherwise.

    The declared and the encoded size are checked before the pixels are decoded.
    """
    h, w = size
    if (frame.height, frame.width) != (h, w):
        raise FrameError(f'frame must be {w}x{h} rgb8 (the model input), found '
                         f'{frame.width}x{frame.height}')
    if frame.encoding == pb.Frame.RAW_RGB8:
        if len(frame.data) != h * w * 3:
            raise FrameError(f'raw rgb8 frame {w}x{h} needs {h * w * 3} bytes, found '
                             f'{len(frame.data)}')
        return np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 3)
    expected = _PIL_FORMATS.get(frame.encoding)
    if expected is None:
        raise FrameError(f'unknown frame encoding {frame.encoding}')
    from PIL import Image
    try:
        image = Image.open(io.BytesIO(frame.data), formats=[expected])
        if image.size != (w, h):
            raise FrameError(f'{expected} data is {image.size[0]}x{image.size[1]}, the '
                             f'request says {w}x{h}')
        rgb = np.asarray(image.convert('RGB'), dtype=np.uint8)
    except FrameError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
        raise FrameError(f'cannot decode the {expected} frame: {exc}') from exc
    if rgb.shape != (h, w, 3):
        raise FrameError(f'decoded frame has shape {list(rgb.shape)}, expected [{h}, {w}, 3]')
    return rgb


def model_id(metadata: Dict[str, str], policy_sha256: str = '') -> str:
    """
    Return ``<config>@sha256:<16 hex>`` naming a model by its weights.

    The weights hash (``vla_ros.weights_sha256``) is the same whichever backend runs them
    (ONNX, TensorRT engine, torch checkpoint of one export); without it, the policy file's.
    """
    weights = metadata.get('vla_ros.weights_sha256', '') or policy_sha256
    if not weights:
        weights = hashlib.sha256(repr(sorted(metadata.items())).encode()).hexdigest()
    return f'{metadata.get("vla_ros.config", "unknown")}@sha256:{weights[:16]}'


def token_digest(token: str) -> str:
    """Return ``sha256:<64 hex>`` of a robot token (what the server's tokens file holds)."""
    return 'sha256:' + hashlib.sha256(token.strip().encode('utf-8')).hexdigest()
