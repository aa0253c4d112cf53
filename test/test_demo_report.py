"""The demo report's video: an H.264 MP4 of every frame and a GIF preview."""

import os

import numpy as np
import pytest

av = pytest.importorskip('av')

from vla_ros.tools.demo_report import write_video  # noqa: E402


def test_mp4_holds_every_frame_with_the_overlay_and_a_gif_previews_it(tmp_path):
    frames = [(np.full((300, 300, 3), 20 * i, np.uint8), 'pick up the red block',
               {'episode_time': 0.2 * i, 'success': i > 5}) for i in range(12)]
    assert write_video(frames, str(tmp_path), 6.25) == ['camera.mp4', 'camera.gif']
    with av.open(str(tmp_path / 'camera.mp4')) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == 'h264'
        assert abs(float(stream.average_rate) - 6.25) < 1e-6
        decoded = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
    assert len(decoded) == 12 and decoded[0].shape == (300, 300, 3)
    # The instruction bar is black with white text; the frame body keeps its grey level.
    assert decoded[0][:20].mean() < 60 and decoded[0][:20].max() > 150
    assert abs(int(decoded[-1][150, 150].mean()) - 220) < 8
    assert os.path.getsize(tmp_path / 'camera.gif') > 0
    assert write_video([], str(tmp_path / 'none'), 6.25) == []
