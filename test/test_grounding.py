"""
Instruction grounding with the shipped text encoder (all-MiniLM-L6-v2 run by ONNX Runtime).

Every held-out paraphrase must reach a trained phrasing of its own task and slots; what
names no trained task, or a slot value the task lacks, is refused with the reason.
"""

import os

import pytest
from vla_ros.learning import instructions
from vla_ros.paths import default_model_dir
from vla_ros.runtime.grounding import (builtin, Grounding, grounding_from_parameter,
                                       GroundingError, Phrasing, SIM_TASKS)
from vla_ros.sim.tasks import BLOCK_COLOURS, MARKER_COLOURS

COLOURS = {task: (MARKER_COLOURS if task == 'drive_to_marker' else BLOCK_COLOURS)
           for task in instructions.TRAIN if task != 'gripper'}


@pytest.fixture(scope='module')
def encoder():
    from vla_ros.runtime.text_encoder import TextEncoder
    path = os.path.join(default_model_dir(), 'text_encoder.onnx')
    if not os.path.isfile(path):
        pytest.fail(f'no text encoder at {path}: run `make models`')
    return TextEncoder(path)


@pytest.fixture(scope='module')
def grounding(encoder):
    return grounding_from_parameter(SIM_TASKS, encoder.encode)


def test_every_held_out_paraphrase_reaches_its_task_and_slots(grounding):
    checked = 0
    for task, templates in instructions.HELD_OUT.items():
        for params in instructions.param_grid(task, COLOURS):
            for template in templates:
                said = instructions.fill(template, instructions.slots(task, params))
                got = grounding.ground(said)
                assert got.task == task, (said, got)
                assert got.text in instructions.training_phrasings(task, params), (said, got)
                assert got.similarity >= grounding.min_similarity
                checked += 1
    assert checked == 34


def test_a_trained_phrasing_is_its_own_grounding(grounding):
    for text in ('pick up the red block', 'shut your gripper',
                 'nudge the blue block to the left', 'go to the cyan spot'):
        got = grounding.ground(text)
        assert got.text == text and got.similarity == pytest.approx(1.0, abs=1e-5)


def test_slots_are_read_from_the_words_not_the_sentence_vector(grounding):
    # The sentence vector of this paraphrase is nearest to the other side's phrasing.
    said = 'slide the red block over to the left'
    nearest = max(grounding.phrasings, key=lambda p: float(
        grounding.vectors[grounding.phrasings.index(p)] @ grounding._vector(said)))
    assert nearest.text == 'push the red block to the right'
    got = grounding.ground(said)
    assert got.task == 'push_block' and got.text.endswith('to the left'), got
    assert 'red' in got.text


@pytest.mark.parametrize('said, reason', [
    ('make me a sandwich', 'no trained instruction is near it'),
    ('what is the weather', 'no trained instruction is near it'),
    ('pick up the yellow block', "not 'yellow'"),
    ('drive to the red marker', "not 'red'"),
    ('pick up the block', 'names none'),
    ('pick up the red and the blue block', "['blue', 'red']"),
    ('push the green block sideways', 'needs one side'),
    # Nearer in meaning to "lift the green block" than to any push phrasing (they all name
    # a side), but "push" is a push word: ambiguous.
    ('push the green block', 'ambiguous'),
    ('move the red block', 'ambiguous'),
    ('push the green block left and right', 'names both'),
])
def test_what_names_no_trained_task_is_refused_with_the_reason(grounding, said, reason):
    with pytest.raises(GroundingError, match=reason.replace('[', r'\[').replace(']', r'\]')):
        grounding.ground(said)


def test_a_templates_file_replaces_the_trained_phrasings(encoder, tmp_path):
    path = tmp_path / 'templates.yaml'
    path.write_text("pick_block: ['fetch the {colour} block']\n"
                    "gripper: ['{action} the claw']\n")
    grounding = grounding_from_parameter(str(path), encoder.encode)
    assert grounding.ground('fetch me the green block').text == 'fetch the green block'
    assert grounding.ground('shut the claw').text in ('close the claw', 'shut the claw')
    path.write_text("stack_blocks: ['stack the {colour} block']\n")
    with pytest.raises(ValueError, match='unknown task'):
        grounding_from_parameter(str(path), encoder.encode)
    with pytest.raises(ValueError, match='does not exist'):
        grounding_from_parameter(str(tmp_path / 'missing.yaml'), encoder.encode)


def test_bad_settings_are_refused(encoder):
    with pytest.raises(ValueError, match='at least one'):
        Grounding([], COLOURS, encoder.encode)
    with pytest.raises(ValueError, match='cosine'):
        Grounding([Phrasing('open the gripper', 'gripper', (('close', False),))], {},
                  encoder.encode, min_similarity=1.5)
    strict = builtin(encoder.encode, min_similarity=0.99)
    with pytest.raises(GroundingError, match='similarity'):
        strict.ground('take the red cube')
