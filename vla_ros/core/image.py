"""
sensor_msgs/Image fields <-> numpy, with cv_bridge's semantics, and the model resize.

No message import here: callers pass the message fields. ``decode`` honours ``step`` row
padding and ``is_bigendian`` and returns a native-endian array shaped (H, W) or (H, W, C)
like cv_bridge's ``imgmsg_to_cv2(msg, 'passthrough')``; ``to_rgb8`` is the colour
conversion cv_bridge applies for ``desired_encoding='rgb8'``.
"""

from typing import Dict, Tuple

import numpy as np

# encoding -> (dtype, channels)
ENCODINGS: Dict[str, Tuple[str, int]] = {
    'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'rgba8': ('u1', 4), 'bgra8': ('u1', 4),
    'mono8': ('u1', 1), '8UC1': ('u1', 1), 'mono16': ('u2', 1), '16UC1': ('u2', 1),
    '32FC1': ('f4', 1),
}


class ImageError(ValueError):
    """A message that cannot be decoded as an image; the text says why."""


def decode(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
           data) -> np.ndarray:
    """
    Return the pixels of an Image message as a native-endian numpy array.

    The result is a copy-free view of ``data`` when rows are unpadded.
    """
    if encoding not in ENCODINGS:
        raise ImageError(f'unsupported encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    if height <= 0 or width <= 0:
        raise ImageError(f'image has zero size: {width}x{height}')
    kind, channels = ENCODINGS[encoding]
    dtype = np.dtype(('>' if is_bigendian else '<') + kind) if kind != 'u1' else np.dtype('u1')
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(f'step {step} is smaller than one row of {width} {encoding} pixels '
                         f'({row_bytes} bytes)')
    buf = np.frombuffer(data, dtype=np.uint8)
    # The last row may omit its padding; anything shorter than that is truncated data.
    needed = step * (height - 1) + row_bytes
    if buf.size < needed:
        raise ImageError(f'data has {buf.size} bytes, expected at least {needed} for '
                         f'{width}x{height} {encoding} with step {step}')
    rows = np.lib.stride_tricks.as_strided(
        buf, shape=(height, row_bytes), strides=(step, 1), writeable=False)
    if step != row_bytes:
        rows = np.ascontiguousarray(rows)
    img = rows.reshape(-1).view(dtype).reshape(height, width, channels)
    if dtype.byteorder == '>' or (dtype.byteorder == '<' and np.little_endian is False):
        img = img.astype(dtype.newbyteorder('='))
    return img[:, :, 0] if channels == 1 else img


def encode(array: np.ndarray, encoding: str) -> Tuple[int, int, int, bytes]:
    """Return (height, width, step, data) for an array in ``encoding`` (little endian)."""
    if encoding not in ENCODINGS:
        raise ImageError(f'unsupported encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    kind, channels = ENCODINGS[encoding]
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels:
        raise ImageError(f'{encoding} needs {channels} channel(s), found array shape {a.shape}')
    a = np.ascontiguousarray(a, dtype=np.dtype('<' + kind) if kind != 'u1' else np.uint8)
    h, w = a.shape[:2]
    return h, w, w * channels * a.itemsize, a.tobytes()


def to_rgb8(img: np.ndarray, encoding: str) -> np.ndarray:
    """
    Convert a decoded image to rgb8 (H, W, 3) uint8 as cv_bridge would.

    16-bit images are scaled by 255/65535 (cv_bridge's bit-depth scaling); 32FC1 is taken
    as intensity in [0, 1] (values outside clip, NaN becomes 0).
    """
    if encoding == 'rgb8':
        return img
    if encoding == 'bgr8':
        return img[:, :, ::-1]
    if encoding == 'rgba8':
        return img[:, :, :3]
    if encoding == 'bgra8':
        return img[:, :, 2::-1]
    if encoding in ('mono8', '8UC1'):
        gray = img
    elif encoding in ('mono16', '16UC1'):
        gray = (img.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif encoding == '32FC1':
        gray = (np.nan_to_num(np.clip(img, 0.0, 1.0), nan=0.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageError(f'unsupported encoding {encoding!r}')
    return np.repeat(gray[:, :, None], 3, axis=2)


class Resizer:
    """
    Bilinear resize to a fixed size, with optional centre crop to the target aspect.

    Index and weight tables are cached per input shape, so the steady-state cost is a few
    gathers and multiply-adds. The cache keeps the ``CACHE_SIZE`` most recently used shapes:
    a sender that changes the frame size with every message cannot grow it without bound.
    """

    CACHE_SIZE = 4

    MODES = ('stretch', 'crop')

    def __init__(self, height: int, width: int, mode: str = 'crop'):
        if mode not in self.MODES:
            raise ValueError(f'resize mode must be one of {self.MODES}, found {mode!r}')
        if height <= 0 or width <= 0:
            raise ValueError(f'output size must be positive, found {width}x{height}')
        self.height, self.width, self.mode = int(height), int(width), mode
        self._cache = {}

    def _tables(self, h: int, w: int):
        key = (h, w)
        if key in self._cache:
            self._cache[key] = self._cache.pop(key)  # most recently used last
        else:
            while len(self._cache) >= self.CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            y0, x0, ch, cw = 0, 0, h, w
            if self.mode == 'crop':
                target = self.width / self.height
                if w / h > target:
                    cw = max(1, int(round(h * target)))
                    x0 = (w - cw) // 2
                else:
                    ch = max(1, int(round(w / target)))
                    y0 = (h - ch) // 2

            def axis(n_out, n_in, offset):
                # Pixel centres aligned, as cv2.resize(INTER_LINEAR) does.
                pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
                pos = np.clip(pos, 0, n_in - 1)
                lo = np.floor(pos).astype(np.intp)
                hi = np.minimum(lo + 1, n_in - 1)
                return lo + offset, hi + offset, (pos - lo).astype(np.float32)

            self._cache[key] = (axis(self.height, ch, y0), axis(self.width, cw, x0))
        return self._cache[key]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Resize an (H, W, C) uint8 image to (height, width, C) uint8."""
        h, w = img.shape[:2]
        if (h, w) == (self.height, self.width):
            return img
        (ylo, yhi, wy), (xlo, xhi, wx) = self._tables(h, w)
        f = img.astype(np.float32)
        top = f[ylo]
        bot = f[yhi]
        wy = wy[:, None, None]
        rows = top + (bot - top) * wy
        left = rows[:, xlo]
        right = rows[:, xhi]
        out = left + (right - left) * wx[None, :, None]
        return (out + 0.5).astype(np.uint8)
