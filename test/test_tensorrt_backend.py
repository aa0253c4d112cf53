"""TensorRT backend parts that need neither TensorRT nor a GPU: cache key, rebuild, bindings."""

import dataclasses
import importlib.util
import os

import pytest

from vla_ros.core.model_contract import file_sha256, TensorSpec
from vla_ros.runtime import BackendError, BackendOptions, create_backend
from vla_ros.runtime.tensorrt_backend import (engine_path, EngineKey, key_file, onnx_io_specs,
                                              rebuild_reason, validate_bindings)

KEY = EngineKey(onnx_sha256='ab' * 32, tensorrt_version='10.3.0', gpu_name='Orin (nvgpu)',
                compute_capability='8.7')

POLICY_IN = [TensorSpec('image', 'uint8', (None, 300, 300, 3)),
             TensorSpec('text_embeddings', 'float32', (None, 16, 384)),
             TensorSpec('text_mask', 'float32', (None, 16))]
POLICY_OUT = [TensorSpec('action_logits', 'float32', (None, 11, 256))]


def _engine_specs(specs):
    # TensorRT reports dynamic axes as -1.
    return [TensorSpec(s.name, s.dtype, tuple(-1 if d is None else d for d in s.shape))
            for s in specs]


def _write_engine(path, key, engine=b'engine'):
    with open(path, 'wb') as stream:
        stream.write(engine)
    with open(key_file(path), 'w', encoding='utf-8') as stream:
        stream.write(key.to_json(file_sha256(path)))


def test_engine_name_is_keyed_by_model_tensorrt_and_gpu():
    name = KEY.file_name('policy')
    assert name == 'policy.abababababababab.trt10.3.0.orin-nvgpu.sm87.fp16.b1.engine'
    for other in (EngineKey('cd' * 32, '10.3.0', 'Orin (nvgpu)', '8.7'),
                  EngineKey('ab' * 32, '10.4.0', 'Orin (nvgpu)', '8.7'),
                  EngineKey('ab' * 32, '10.3.0', 'NVIDIA H100', '8.7'),
                  EngineKey('ab' * 32, '10.3.0', 'Orin (nvgpu)', '9.0')):
        assert other.file_name('policy') != name


def test_engine_lives_next_to_the_model_by_default(tmp_path):
    model = tmp_path / 'models' / 'policy.onnx'
    assert engine_path(str(model), KEY) == str(tmp_path / 'models' / KEY.file_name('policy'))
    assert engine_path(str(model), KEY, str(tmp_path) + os.sep) == str(
        tmp_path / KEY.file_name('policy'))
    explicit = str(tmp_path / 'my.engine')
    assert engine_path(str(model), KEY, explicit) == explicit
    assert not engine_path(str(model), KEY).startswith('/tmp/' + KEY.file_name('policy'))


def test_rebuild_decision(tmp_path):
    path = str(tmp_path / KEY.file_name('policy'))
    assert 'no cached engine' in rebuild_reason(path, KEY)
    with open(path, 'wb') as stream:
        stream.write(b'engine')
    assert 'no readable key file' in rebuild_reason(path, KEY)
    _write_engine(path, KEY)
    assert rebuild_reason(path, KEY) is None
    assert rebuild_reason(path, KEY, force=True) == 'force_engine_update is set'


def test_an_engine_whose_bytes_changed_is_rebuilt_not_run(tmp_path):
    path = str(tmp_path / KEY.file_name('policy'))
    _write_engine(path, KEY)
    with open(path, 'r+b') as stream:
        stream.write(b'E')  # one byte flipped after the build
    reason = rebuild_reason(path, KEY)
    assert reason is not None and 'not the one that was built' in reason
    assert file_sha256(path) in reason
    with open(key_file(path), 'w', encoding='utf-8') as stream:
        stream.write(KEY.to_json())  # a key file without the engine's hash
    assert 'not the one that was built' in rebuild_reason(path, KEY)


@pytest.mark.parametrize('field, value', [
    ('onnx_sha256', 'cd' * 32), ('tensorrt_version', '10.4.0'), ('gpu_name', 'NVIDIA H100'),
    ('compute_capability', '9.0'), ('precision', 'fp32'), ('max_batch', 4)])
def test_any_key_difference_forces_a_rebuild(tmp_path, field, value):
    # An explicit engine_file_path keeps its name, so only the key file can tell.
    path = str(tmp_path / 'fixed.engine')
    _write_engine(path, KEY)
    changed = dataclasses.replace(KEY, **{field: value})
    reason = rebuild_reason(path, changed)
    assert reason is not None and field in reason


def test_bindings_that_match_the_onnx_model_pass():
    validate_bindings(_engine_specs(POLICY_IN), _engine_specs(POLICY_OUT), POLICY_IN,
                      POLICY_OUT)


@pytest.mark.parametrize('engine_in, message', [
    (POLICY_IN[:2], 'engine lacks input text_mask'),
    (POLICY_IN + [TensorSpec('extra', 'float32', (1,))], "extra input 'extra'"),
    ([TensorSpec('image', 'float32', (None, 300, 300, 3))] + POLICY_IN[1:],
     "input 'image': ONNX uint8, engine float32"),
    ([TensorSpec('image', 'uint8', (None, 224, 224, 3))] + POLICY_IN[1:],
     "input 'image': ONNX shape"),
])
def test_binding_mismatches_are_named(engine_in, message):
    with pytest.raises(BackendError, match='do not match the ONNX model') as info:
        validate_bindings(_engine_specs(engine_in), _engine_specs(POLICY_OUT), POLICY_IN,
                          POLICY_OUT)
    assert message in str(info.value)


def test_onnx_io_specs_reads_graph_inputs_outputs_and_metadata(tmp_path):
    onnx = pytest.importorskip('onnx')
    from onnx import helper, TensorProto
    graph = helper.make_graph(
        [helper.make_node('Identity', ['text_mask'], ['action_logits'])], 'g',
        [helper.make_tensor_value_info('text_mask', TensorProto.FLOAT, ['B', 16])],
        [helper.make_tensor_value_info('action_logits', TensorProto.FLOAT, ['B', 16])],
        initializer=[helper.make_tensor('w', TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {'vla_ros.config': 'tiny'})
    path = str(tmp_path / 'm.onnx')
    onnx.save(model, path)
    inputs, outputs, metadata = onnx_io_specs(path)
    assert inputs == [TensorSpec('text_mask', 'float32', (None, 16))]
    assert outputs == [TensorSpec('action_logits', 'float32', (None, 16))]
    assert metadata == {'vla_ros.config': 'tiny'}


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is not None,
                    reason='TensorRT is installed here')
def test_missing_tensorrt_is_a_clear_error(tmp_path):
    onnx = pytest.importorskip('onnx')
    from onnx import helper, TensorProto
    graph = helper.make_graph(
        [helper.make_node('Identity', ['x'], ['y'])], 'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    path = str(tmp_path / 'policy.onnx')
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(BackendError, match='TensorRT 10 Python bindings.*onnxruntime'):
        create_backend('tensorrt', BackendOptions(model_file_path=path, require_manifest=False))


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match='model file not found'):
        create_backend('tensorrt', BackendOptions(model_file_path=str(tmp_path / 'no.onnx')))
