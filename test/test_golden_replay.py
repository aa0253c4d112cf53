"""
Golden replay: a bag's inputs through the four node processes, compared with goldens.

Every ``test/golden/*.json`` is a case (``vla_ros/testing/golden``; docs/bags.md, "Golden
replay tests"). Its bag's camera frames, joint_states and instructions are replayed in lock
step on sim time through camera_node, inference_node, detokenizer_node and
interpolation_node (real processes, loopback DDS); the action tokens must equal the goldens
exactly, frame by frame (matched by source stamp), targets and controller commands to 1e-6.
After an intended change, regenerate with
``vla-ros golden --case test/golden/<case>.json --regenerate`` and commit the diff.
"""

import copy
import glob
import os

import pytest

from vla_ros.testing import golden

CASES = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden',
                                      '*.json')))


def test_there_are_golden_cases_and_each_holds_goldens():
    """The shipped model and the known model both have a case, and every case has data."""
    names = [os.path.basename(c) for c in CASES]
    assert {'rt1_nano.json', 'test_model_absolute.json'} <= set(names), names
    for case in CASES:
        data = golden.load_case(case)
        goldens = data['goldens']
        assert goldens['tokens'] and goldens['targets'] and goldens['commands'], case
        ticks = [f['tick_ns'] for f in goldens['tokens']]
        assert ticks == sorted(ticks), case
        assert all(f['stamp_ns'] <= f['tick_ns'] for f in goldens['tokens']), case
        assert all(len(f['tokens']) == 11 for f in goldens['tokens']), case


@pytest.mark.parametrize('case', CASES, ids=[os.path.basename(c)[:-5] for c in CASES])
def test_replay_matches_the_goldens(ros, case):
    outcome = golden.check_case(case)
    print(outcome['report'])
    result = outcome['result']
    print(f'{len(result["tokens"])} token frames, {len(result["commands"])} control ticks, '
          f'{result["rounds"]} barrier rounds')
    assert not outcome['differences'], outcome['report']
    assert result['tokens'] and result['commands']


def test_the_generated_bag_is_the_one_the_goldens_were_made_from(tmp_path):
    """Same bytes on every run and machine (the goldens keep the digest)."""
    counts = golden.generate_bag(str(tmp_path / 'bag'))
    assert counts == {'camera/image_raw': 60, 'joint_states': 300, 'vla/instruction': 2}
    digest = golden.read_inputs(str(tmp_path / 'bag'))['sha256']
    for case in CASES:
        data = golden.load_case(case)
        if data.get('bag', 'generated') == 'generated':
            assert data['goldens']['bag']['sha256'] == digest, case


def test_a_change_shows_as_a_readable_diff():
    """Which frame or tick, which dimension, expected and found."""
    expected = golden.load_case(CASES[0])['goldens']
    found = copy.deepcopy(expected)
    frame = found['tokens'][3]
    frame['tokens'][3] = (frame['tokens'][3] + 1) % 256
    tick = found['commands'][40]
    tick['arm'][1] += 2e-6
    tick['base'][0] += 1e-7                      # within tolerance: no line
    del found['commands'][41]
    found['targets'][5]['gripper'] = 1.0 - found['targets'][5]['gripper']
    lines = golden.compare(expected, found)
    stamp = f'{frame["stamp_ns"] / 1e9:.3f} s'
    assert any(stamp in line and 'dim 3 arm_joint_4' in line and
               f'expected {expected["tokens"][3]["tokens"][3]}, found '
               f'{frame["tokens"][3]}' in line for line in lines), lines
    when = f'tick {tick["tick_ns"] / 1e9:.3f} s arm arm_joint_2'
    assert any(when in line and '|diff| 2e-06 > 1e-06' in line for line in lines), lines
    missing = f'tick {expected["commands"][41]["tick_ns"] / 1e9:.3f} s: missing'
    assert any(missing in line for line in lines), lines
    assert any('target for frame stamped' in line and 'gripper' in line for line in lines)
    assert len(lines) == 4, lines
    text = golden.report('x', lines)
    assert text.startswith("golden replay 'x': 4 differences"), text
