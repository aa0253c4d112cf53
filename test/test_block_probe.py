"""The block-position probe: scenes carry the named block; probes report errors in cm."""

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('mujoco')

from vla_ros.learning import block_probe  # noqa: E402


def test_scenes_and_probes_report_centimetres(known_policy_weights):
    train = block_probe.render_scenes(24, 0)
    test = block_probe.render_scenes(6, block_probe.EVAL_SEED_START)
    assert train.images.shape == (24, 300, 300, 3) and train.xy.shape == (24, 2)
    # Each instruction names the block whose position is the target; blocks lie on the
    # table in front of the robot.
    assert all(any(c in t for c in ('red', 'green', 'blue')) for t in train.instructions)
    assert np.all((train.xy[:, 0] > 0.3) & (train.xy[:, 0] < 0.9))
    frozen = block_probe.frozen_feature_probe(known_policy_weights, 'nano_150', train, test)
    trained = block_probe.resolution_probe(3, train, test, steps=3, batch=8)
    for result in (frozen, trained):
        assert 0.0 < result['median_cm'] <= result['p90_cm'] < 100.0
        assert 0.0 <= result['within_grasp_tolerance'] <= 1.0
    # Predicting the mean of the training positions is the floor any probe must be near.
    spread = 100.0 * np.median(np.linalg.norm(test.xy - train.xy.mean(0), axis=1))
    assert frozen['median_cm'] < 3.0 * spread + 1.0


@pytest.fixture(scope='module')
def known_policy_weights():
    import os
    from vla_ros.paths import share_file
    path = share_file('models', 'rt1_nano', 'policy.safetensors')
    if not os.path.exists(path):
        pytest.skip('shipped weights not installed')
    return path
