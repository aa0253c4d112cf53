"""The oracle-state policy: privileged state, fitting the expert, closed-loop evaluation."""

import numpy as np
import pytest

pytest.importorskip('torch')

from vla_ros.learning import oracle  # noqa: E402


@pytest.fixture(scope='module')
def scene():
    s = oracle.Scene(None, None, arm_noise=0.03)
    yield s
    s.close()


def test_privileged_state_names_the_object_and_task(scene):
    x, y, stats = oracle.collect_states(scene, {'push_block': 2, 'drive_to_marker': 1}, 70)
    assert x.shape[1] == oracle.STATE_DIM and np.isfinite(x).all()
    assert y.shape == (len(x), 11) and y.min() >= 0 and y.max() <= 255
    assert stats['episodes'] + stats['expert_failures'] + stats['skipped_held_out'] == 3
    task_block = x[:, 41:46]
    # Every row carries exactly one task; push rows carry a push sign, drive rows a marker.
    np.testing.assert_array_equal(task_block.sum(1), 1.0)
    push = task_block[:, 2] == 1.0
    assert np.all(np.abs(x[push, 46]) == 1.0)
    assert np.all(np.abs(x[~push, 32:34]).sum(1) > 0)


def test_the_mlp_fits_the_expert_and_runs_closed_loop(scene):
    x, y, _ = oracle.collect_states(scene, {'push_block': 3}, 80)
    policy, loss = oracle.train_mlp(x, y, steps=400, batch=64)
    predicted = np.stack([policy(s) for s in x])
    assert predicted.dtype == np.uint8 and predicted.shape == y.shape
    # Most labels are reproduced within one bin on the states it was trained on.
    within_one = np.abs(predicted.astype(int) - y) <= 1
    assert within_one.mean() > 0.6, within_one.mean()
    results = oracle.evaluate_policy(scene, policy, ['push_block'], 1)
    r = results['push_block']
    assert r['episodes'] == 1 and r['successes'] in (0, 1)
    assert 0.0 <= r['interval'][0] <= r['interval'][1] <= 1.0
