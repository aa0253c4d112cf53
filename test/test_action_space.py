"""The action space and tokenizer (pure numpy, no ROS)."""

import dataclasses
import math

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from vla_ros.core.action_space import ActionSpace, ActionSpaceError, ActionTokenizer


def _space(space, **changes):
    return dataclasses.replace(space, **changes)


def test_shipped_space_matches_design(action_space):
    assert action_space.names == [f'arm_joint_{i}' for i in range(1, 8)] + [
        'base_vx', 'base_vy', 'base_wz', 'gripper']
    assert np.allclose(action_space.low[:7], -math.pi)
    assert np.allclose(action_space.high[7:10], 0.5)
    assert action_space.scheme == 'uniform'


def test_uniform_half_pi_is_bin_192(action_space):
    tok = ActionTokenizer(action_space)
    a = np.zeros(11)
    a[0] = math.pi / 2
    assert tok.tokenize(a)[0] == 192


def test_uniform_bin_centres(action_space):
    tok = ActionTokenizer(action_space)
    t = np.zeros(11, dtype=np.uint8)
    t[0] = 192
    w = 2 * math.pi / 256
    assert tok.detokenize(t)[0] == pytest.approx(-math.pi + 192.5 * w)


def test_rt1_scheme_matches_reference_formula(action_space):
    tok = ActionTokenizer(_space(action_space, scheme='rt1'))
    v = 0.3
    expected = int((v + math.pi) / (2 * math.pi) * 255)
    a = np.zeros(11)
    a[:7] = v
    assert tok.tokenize(a)[0] == expected
    t = np.full(11, expected, dtype=np.uint8)
    assert tok.detokenize(t)[0] == pytest.approx(expected / 255 * 2 * math.pi - math.pi)
    # both ends are representable exactly in the reference scheme
    lo = np.full(11, 0, dtype=np.uint8)
    assert tok.detokenize(lo)[0] == pytest.approx(-math.pi)


@pytest.mark.parametrize('scheme', ['uniform', 'rt1'])
def test_deadband_maps_bins_next_to_zero_to_zero(action_space, scheme):
    tok = ActionTokenizer(_space(action_space, scheme=scheme))
    for token in (127, 128):
        values = tok.detokenize(np.full(11, token, dtype=np.uint8))
        assert np.all(values[7:10] == 0.0), (scheme, token, values[7:10])
    # without a deadband the same bins are not zero
    raw = ActionTokenizer(_space(action_space, scheme=scheme, velocity_deadband=0.0))
    assert np.all(raw.detokenize(np.full(11, 128, dtype=np.uint8))[7:10] != 0.0)


def test_gripper_threshold(action_space):
    tok = ActionTokenizer(action_space)
    t = np.zeros(11, dtype=np.uint8)
    for token, closed in ((0, 0.0), (127, 0.0), (128, 1.0), (255, 1.0)):
        t[10] = token
        assert tok.detokenize(t)[10] == closed
    a = np.zeros(11)
    a[10] = 1.0
    assert tok.tokenize(a)[10] == 255
    a[10] = 0.2
    assert tok.tokenize(a)[10] == 0


finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(finite, min_size=11, max_size=11),
       scheme=st.sampled_from(['uniform', 'rt1']))
def test_round_trip_within_one_bin_and_clipping(action_space, values, scheme):
    space = _space(action_space, scheme=scheme, velocity_deadband=0.0)
    tok = ActionTokenizer(space)
    a = np.array(values)
    tokens = tok.tokenize(a)
    assert tokens.dtype == np.uint8
    back = tok.detokenize(tokens)
    clipped = np.clip(a, space.low, space.high)
    err = np.abs(back - clipped)[:10]
    assert np.all(err <= space.bin_width[:10] + 1e-9), (err, space.bin_width)
    # out-of-range values land in the end bins
    assert np.all(tokens[:10][a[:10] <= space.low[:10]] == 0)
    assert np.all(tokens[:10][a[:10] >= space.high[:10]] == 255)


@given(tokens=st.lists(st.integers(0, 255), min_size=11, max_size=11))
def test_detokenized_values_stay_in_bounds(action_space, tokens):
    values = ActionTokenizer(action_space).detokenize(np.array(tokens))
    assert np.all(values >= action_space.low) and np.all(values <= action_space.high)


def test_bad_inputs_are_rejected(action_space):
    tok = ActionTokenizer(action_space)
    with pytest.raises(ValueError, match='11 tokens'):
        tok.detokenize(np.zeros(10, dtype=np.uint8))
    with pytest.raises(ValueError, match='0..255'):
        tok.detokenize(np.full(11, 256))
    with pytest.raises(ValueError, match='NaN'):
        tok.tokenize(np.full(11, np.nan))


def test_bad_definitions_are_rejected(action_space):
    d = action_space.to_dict()
    d['dimensions'][3]['low'] = 5.0
    with pytest.raises(ActionSpaceError, match='high > low'):
        ActionSpace.from_dict(d)
    d = action_space.to_dict()
    d['scheme'] = 'log'
    with pytest.raises(ActionSpaceError, match='scheme'):
        ActionSpace.from_dict(d)
    d = action_space.to_dict()
    del d['dimensions'][-1]
    with pytest.raises(ActionSpaceError, match='11 dimensions'):
        ActionSpace.from_dict(d)


def test_json_round_trip_and_differences(action_space):
    import json
    again = ActionSpace.from_dict(json.loads(action_space.to_json()))
    assert again == action_space
    other = _space(action_space, scheme='rt1')
    assert any('scheme' in d for d in action_space.differences(other))
