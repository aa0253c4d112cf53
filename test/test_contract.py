"""
The model I/O contract, checked at start-up.

A conforming model is accepted; any other is rejected with a message naming what was
expected and what was found.
"""

import dataclasses
import json

import numpy as np
import onnx
import pytest

from vla_ros.core import model_contract as mc
from vla_ros.core.action_space import ActionSpace
from vla_ros.runtime import BackendError, BackendOptions, create_backend
from vla_ros.runtime.policy import Policy, PolicyFiles
from vla_ros.testing import known_model


def _backend(path):
    # Hand-edited copies have no manifest: loaded explicitly unverified (test_verify checks
    # that they are refused by default).
    return create_backend('onnxruntime', BackendOptions(model_file_path=path,
                                                        require_manifest=False))


def test_conforming_model_passes_and_predicts_known_tokens(test_model_dir, action_space):
    policy = Policy(PolicyFiles.from_paths(f'{test_model_dir}/policy.onnx'), action_space)
    assert policy.active_providers == ['CPUExecutionProvider']
    assert policy.trained is False
    image = np.empty((300, 300, 3), np.uint8)
    image[...] = (120, 60, 250)
    pred = policy.predict(image, 'close the gripper')
    emb, mask = policy.encode('close the gripper')
    assert np.array_equal(pred.tokens, known_model.expected_tokens(image, emb, mask))
    assert pred.tokens[10] == 255
    assert policy.predict(image, 'open the gripper').tokens[10] == 0


def test_instruction_is_encoded_once(test_model_dir, action_space):
    policy = Policy(PolicyFiles.from_paths(f'{test_model_dir}/policy.onnx'), action_space)
    a = policy.encode('pick up the red block')
    b = policy.encode('pick up the red block')
    assert a[0] is b[0]  # served from the cache, not recomputed


def test_action_space_mismatch_is_refused(test_model_dir, action_space):
    other = dataclasses.replace(action_space, scheme='rt1')
    with pytest.raises(mc.ContractError, match='scheme'):
        Policy(PolicyFiles.from_paths(f'{test_model_dir}/policy.onnx'), other)
    d = action_space.to_dict()
    d['dimensions'][7]['high'] = 1.0
    d['dimensions'][7]['low'] = -1.0
    with pytest.raises(mc.ContractError, match='base_vx bounds'):
        Policy(PolicyFiles.from_paths(f'{test_model_dir}/policy.onnx'), ActionSpace.from_dict(d))


def _rewrite(src, dst, edit):
    model = onnx.load(src)
    edit(model)
    onnx.save(model, dst)
    return dst


def test_wrong_input_shape_names_expected_and_found(test_model_dir, action_space, tmp_path):
    def edit(model):
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 224
    path = _rewrite(f'{test_model_dir}/policy.onnx', str(tmp_path / 'p.onnx'), edit)
    b = _backend(path)
    with pytest.raises(mc.ContractError) as err:
        mc.check_policy(b.inputs, b.outputs, b.metadata, action_space)
    text = str(err.value)
    assert 'image uint8 [B, 300, 300, 3]' in text and 'image uint8 [B, 224, 300, 3]' in text


def test_missing_metadata_is_refused(test_model_dir, action_space, tmp_path):
    def edit(model):
        keep = [p for p in model.metadata_props if p.key != mc.META_CONTRACT]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
    path = _rewrite(f'{test_model_dir}/policy.onnx', str(tmp_path / 'p.onnx'), edit)
    b = _backend(path)
    with pytest.raises(mc.ContractError, match='contract_version'):
        mc.check_policy(b.inputs, b.outputs, b.metadata, action_space)


def test_text_encoder_of_another_policy_is_refused(test_model_dir, action_space, tmp_path):
    def edit(model):
        for p in model.metadata_props:
            if p.key == mc.META_TEXT_ENCODER:
                p.value = 'someone/else'
    path = _rewrite(f'{test_model_dir}/text_encoder.onnx', str(tmp_path / 't.onnx'), edit)
    files = PolicyFiles.from_paths(f'{test_model_dir}/policy.onnx', path,
                                   f'{test_model_dir}/tokenizer.json')
    with pytest.raises(mc.ContractError, match='someone/else'):
        Policy(files, action_space, options=BackendOptions(model_file_path=files.policy,
                                                           require_manifest=False))


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match='model file not found'):
        _backend(str(tmp_path / 'nope.onnx'))


def test_require_accelerator_fails_on_cpu_only_build(test_model_dir):
    with pytest.raises(BackendError, match='require_accelerator'):
        create_backend('onnxruntime', BackendOptions(
            model_file_path=f'{test_model_dir}/policy.onnx',
            providers=('CUDAExecutionProvider', 'CPUExecutionProvider'),
            require_accelerator=True))


def test_metadata_carries_the_action_space(test_model_dir, action_space):
    meta = _backend(f'{test_model_dir}/policy.onnx').metadata
    assert ActionSpace.from_dict(json.loads(meta[mc.META_ACTION_SPACE])) == action_space
