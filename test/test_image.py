"""Image conversion with cv_bridge semantics and the model resize (pure numpy)."""

import numpy as np
import pytest

from vla_ros.core.image import decode, encode, ImageError, Resizer, to_rgb8

RNG = np.random.default_rng(0)


def _pixels(encoding, h=5, w=7):
    if encoding in ('rgb8', 'bgr8'):
        return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if encoding in ('rgba8', 'bgra8'):
        return RNG.integers(0, 256, (h, w, 4), dtype=np.uint8)
    if encoding == 'mono8':
        return RNG.integers(0, 256, (h, w), dtype=np.uint8)
    if encoding in ('mono16', '16UC1'):
        return RNG.integers(0, 65536, (h, w), dtype=np.uint16)
    return RNG.random((h, w)).astype(np.float32)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16',
                                      '16UC1', '32FC1'])
def test_round_trip(encoding):
    a = _pixels(encoding)
    h, w, step, data = encode(a, encoding)
    back = decode(encoding, h, w, step, False, data)
    assert back.shape == a.shape and back.dtype == a.dtype
    assert np.array_equal(back, a)


@pytest.mark.parametrize('encoding', ['rgb8', 'mono16', '32FC1'])
def test_step_padding_is_honoured(encoding):
    a = _pixels(encoding)
    h, w, step, data = encode(a, encoding)
    pad = 13 if encoding == 'rgb8' else 5  # odd padding: rows not element-aligned
    rows = [data[i * step:(i + 1) * step] + b'\xee' * pad for i in range(h)]
    back = decode(encoding, h, w, step + pad, False, b''.join(rows))
    assert np.array_equal(back, a)


@pytest.mark.parametrize('encoding,dtype', [('mono16', '>u2'), ('16UC1', '>u2'),
                                            ('32FC1', '>f4')])
def test_big_endian(encoding, dtype):
    a = _pixels(encoding)
    data = a.astype(dtype).tobytes()
    step = a.shape[1] * np.dtype(dtype).itemsize
    back = decode(encoding, a.shape[0], a.shape[1], step, True, data)
    assert back.dtype.isnative
    assert np.array_equal(back, a)


def test_colour_conversions_follow_cv_bridge():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    assert to_rgb8(bgr, 'bgr8')[0, 0].tolist() == [0, 0, 255]
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGRA
    assert to_rgb8(bgra, 'bgra8')[0, 0].tolist() == [200, 0, 0]
    rgba = np.full((2, 2, 4), 9, np.uint8)
    assert to_rgb8(rgba, 'rgba8').shape == (2, 2, 3)
    mono16 = np.full((2, 2), 65535, np.uint16)
    assert to_rgb8(mono16, 'mono16')[0, 0].tolist() == [255, 255, 255]
    f = np.array([[0.5, np.nan]], np.float32)
    assert to_rgb8(f, '32FC1')[0].tolist() == [[128] * 3, [0] * 3]


@pytest.mark.parametrize('fields,match', [
    (('yuv422', 2, 2, 4, False, b'\0' * 8), 'unsupported encoding'),
    (('rgb8', 0, 2, 6, False, b''), 'zero size'),
    (('rgb8', 2, 2, 6, False, b'\0' * 7), 'expected at least'),
    (('rgb8', 2, 2, 5, False, b'\0' * 12), 'smaller than one row'),
    (('mono16', 2, 2, 3, False, b'\0' * 12), 'smaller than one row'),
])
def test_malformed_messages_raise_clear_errors(fields, match):
    with pytest.raises(ImageError, match=match):
        decode(*fields)


def test_resize_to_model_size():
    img = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = Resizer(300, 300, 'crop')(img)
    assert out.shape == (300, 300, 3) and out.dtype == np.uint8
    # crop keeps the centre: a constant central square survives exactly
    img2 = np.zeros((480, 640, 3), np.uint8)
    img2[:, 80:560] = 77
    assert np.all(Resizer(300, 300, 'crop')(img2) == 77)
    assert not np.all(Resizer(300, 300, 'stretch')(img2) == 77)
    # identity when already the right size
    same = RNG.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    assert Resizer(300, 300)(same) is same


def test_resize_is_bilinear_on_a_ramp():
    ramp = np.tile(np.arange(600, dtype=np.float64)[None, :, None] * (255 / 599),
                   (600, 1, 3)).astype(np.uint8)
    out = Resizer(300, 300, 'stretch')(ramp)
    # the downscaled ramp stays monotonic and spans the range
    row = out[150, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and row[0] <= 1 and row[-1] >= 254


def test_resize_tables_stay_bounded_under_changing_sizes():
    """A sender that changes the frame size every message cannot grow the table cache."""
    resize = Resizer(30, 40, 'crop')
    rng = np.random.default_rng(0)
    reference = {}
    for i in range(200):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = resize(img)
        assert len(resize._cache) <= Resizer.CACHE_SIZE
        if (h, w) not in reference:  # evicted tables are rebuilt identically
            reference[(h, w)] = (img, out)
    for img, out in list(reference.values())[:20]:
        np.testing.assert_array_equal(resize(img), out)
