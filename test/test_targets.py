"""The previous-commanded-target rule shared by detokenizer, inference, sim and expert."""

import numpy as np
import pytest

from vla_ros.core.action_space import ActionSpace, ActionSpaceError, ActionTokenizer
from vla_ros.core.targets import ComposerConfig, measured_state, TargetComposer


@pytest.fixture
def space(joint_action_space):
    return joint_action_space


def test_shipped_space_is_relative(space, action_space):
    assert space.relative_arm and space.arm_kind == 'delta_position'
    assert not action_space.relative_arm
    # +-0.3 rad in 256 bins: 2.3 mrad per bin.
    np.testing.assert_allclose(space.bin_width[:7], 0.6 / 256)


def test_mixed_arm_kinds_are_rejected(space):
    d = space.to_dict()
    d['dimensions'][3]['kind'] = 'position'
    with pytest.raises(ActionSpaceError, match='arm dimensions all one of'):
        ActionSpace.from_dict(d)


def test_first_target_starts_from_the_measured_arm(space):
    composer = TargetComposer(space)
    measured = np.linspace(-0.5, 0.5, 7)
    values = np.zeros(11)
    values[:7] = 0.1
    values[7] = 0.2
    values[10] = 1.0
    target = composer.compose(values, 0.0, measured, 0.0)
    np.testing.assert_allclose(target[:7], measured + 0.1)
    assert target[7] == 0.2 and target[10] == 1.0
    # The next one builds on the commanded target, not on the (lagging) measured arm.
    target2 = composer.compose(values, 0.2, measured, 0.0)
    np.testing.assert_allclose(target2[:7], measured + 0.2)
    np.testing.assert_allclose(composer.previous(0.3, measured, 0.0), target2)


def test_stale_or_diverged_previous_target_falls_back_to_measured(space):
    composer = TargetComposer(space, ComposerConfig(timeout=1.0, max_deviation=0.35))
    measured = np.zeros(7)
    values = np.zeros(11)
    values[:7] = 0.3
    composer.compose(values, 0.0, measured, 1.0)
    # Too old: the robot may have been held meanwhile.
    np.testing.assert_allclose(composer.previous(1.5, measured, 1.0),
                               measured_state(measured, 1.0))
    assert 'old' in composer.reason and composer.resyncs == 1
    # Diverged: e-stop or disable held the arm while targets kept integrating.
    composer.compose(values, 2.0, measured, 0.0)
    composer.compose(values, 2.2, measured, 0.0)  # 0.6 rad from the measured arm
    assert np.allclose(composer.previous(2.3, measured, 0.0)[:7], measured)
    assert 'max_deviation' in composer.reason


def test_labels_invert_compose_and_quantisation_never_accumulates(space):
    tokenizer = ActionTokenizer(space)
    composer = TargetComposer(space)
    rng = np.random.default_rng(0)
    measured = np.zeros(7)
    goal = np.zeros(11)
    for step in range(30):
        goal[:7] += rng.uniform(-0.05, 0.05, 7)
        now = 0.2 * step
        tokens = tokenizer.tokenize(composer.labels(goal, now, measured, 0.0))
        target = composer.compose(tokenizer.detokenize(tokens), now, measured, 0.0)
        measured = target[:7]  # a perfect controller
        # Each step is relative to the exact previous command: the error stays within
        # one bin instead of growing with the number of steps.
        assert np.max(np.abs(target[:7] - goal[:7])) <= space.bin_width[0]


def test_bad_measurements_are_rejected(space):
    composer = TargetComposer(space)
    with pytest.raises(ValueError, match='finite'):
        composer.previous(0.0, [0.0] * 6 + [np.nan], 0.0)
    with pytest.raises(ValueError):
        composer.observe(np.zeros(10), 0.0)


def test_targets_the_space_cannot_compose_are_rejected(space):
    """A base or gripper beyond its range, or beyond float32, never becomes a state input."""
    composer = TargetComposer(space)
    good = np.zeros(11)
    composer.observe(good, 0.0)
    for i, value in ((7, 1e300), (8, -np.inf), (9, 50.0), (10, 5.0), (3, 1e39)):
        bad = good.copy()
        bad[i] = value
        with pytest.raises(ValueError, match=space.names[i]):
            composer.observe(bad, 1.0)
    # The last good target is kept.
    np.testing.assert_array_equal(composer.previous(0.5, np.zeros(7), 0.0), good)
    assert composer.reason == ''
    # Parts of a target are checked by their dimensions.
    space.check_target([0.1, 0.0, -0.2], slice(7, 10))
    with pytest.raises(ValueError, match='gripper'):
        space.check_target([2.0], [10])
