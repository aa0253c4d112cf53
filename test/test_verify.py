"""Model bytes are checked against manifest.json before any backend runs them (issue 7.2)."""

import json
import logging
import os
import shutil

import pytest

from vla_ros.core.model_contract import file_sha256, META_WEIGHTS
from vla_ros.runtime import BackendOptions, create_backend
from vla_ros.runtime import verify
from vla_ros.runtime.text_encoder import TextEncoder


@pytest.fixture
def model_dir(tmp_path, test_model_dir):
    """Return a private copy of the known-function test model (with its manifest)."""
    out = str(tmp_path / 'model')
    shutil.copytree(test_model_dir, out)
    return out


def _corrupt_weights(path):
    """Change one initializer's values: still a valid ONNX file, other bytes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    init = next(i for i in model.graph.initializer
                if numpy_helper.to_array(i).dtype == np.float32 and numpy_helper.to_array(i).size)
    values = numpy_helper.to_array(init).copy()
    values.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _manifest(folder):
    with open(os.path.join(folder, 'manifest.json'), encoding='utf-8') as stream:
        return json.load(stream)


def _write_manifest(folder, manifest):
    with open(os.path.join(folder, 'manifest.json'), 'w', encoding='utf-8') as stream:
        json.dump(manifest, stream)


def _load(folder, backend='onnxruntime', **kw):
    return create_backend(backend, BackendOptions(
        model_file_path=os.path.join(folder, 'policy.onnx'), **kw))


def test_an_exported_model_is_verified(model_dir):
    backend = _load(model_dir)
    assert backend.verification.verified
    assert backend.verification.sha256 == _manifest(model_dir)['artifacts']['policy.onnx'][
        'sha256']
    encoder = TextEncoder(os.path.join(model_dir, 'text_encoder.onnx'))
    assert encoder.verification.verified and encoder.tokenizer_verification.verified


@pytest.mark.parametrize('backend', ['onnxruntime', 'tensorrt'])
def test_corrupted_weights_are_refused_naming_file_and_both_hashes(model_dir, backend):
    path = os.path.join(model_dir, 'policy.onnx')
    expected = _manifest(model_dir)['artifacts']['policy.onnx']['sha256']
    _corrupt_weights(path)
    found = file_sha256(path)
    with pytest.raises(verify.IntegrityError) as err:
        _load(model_dir, backend)  # tensorrt: refused before TensorRT is even imported
    assert path in str(err.value) and expected in str(err.value) and found in str(err.value)


def test_a_manifest_whose_hash_does_not_match_is_refused(model_dir):
    manifest = _manifest(model_dir)
    manifest['artifacts']['policy.onnx']['sha256'] = '0' * 64
    _write_manifest(model_dir, manifest)
    with pytest.raises(verify.IntegrityError, match='expected sha256 0{64}, found [0-9a-f]{64}'):
        _load(model_dir)


@pytest.mark.parametrize('name', ['text_encoder.onnx', 'tokenizer.json'])
def test_text_encoder_files_are_verified(model_dir, name):
    path = os.path.join(model_dir, name)
    with open(path, 'ab') as stream:
        stream.write(b' ')  # still loads (JSON / protobuf tolerate it), other bytes
    with pytest.raises(verify.IntegrityError, match=name):
        TextEncoder(os.path.join(model_dir, 'text_encoder.onnx'))


def test_weights_metadata_must_match_the_manifest(model_dir):
    manifest = _manifest(model_dir)
    manifest['weights_sha256'] = 'f' * 64
    _write_manifest(model_dir, manifest)
    with pytest.raises(verify.IntegrityError, match=f'{META_WEIGHTS}.*expects weights_sha256 '
                                                    f'f{{64}}'):
        _load(model_dir)


def test_a_file_missing_from_the_manifest_is_refused(model_dir):
    shutil.copy(os.path.join(model_dir, 'policy.onnx'), os.path.join(model_dir, 'other.onnx'))
    with pytest.raises(verify.IntegrityError, match='not listed in'):
        create_backend('onnxruntime', BackendOptions(
            model_file_path=os.path.join(model_dir, 'other.onnx')))


def test_a_malformed_manifest_is_refused(model_dir):
    _write_manifest(model_dir, {'files': {}})
    with pytest.raises(verify.IntegrityError, match='no "artifacts" map'):
        _load(model_dir)


def test_without_a_manifest_is_refused_unless_explicitly_allowed(model_dir, caplog,
                                                                 monkeypatch):
    """Issue 17.7: a model whose manifest was deleted loaded and ran (integrity by default)."""
    os.remove(os.path.join(model_dir, 'manifest.json'))
    path = os.path.join(model_dir, 'policy.onnx')
    monkeypatch.delenv(verify.ALLOW_ENV, raising=False)
    with pytest.raises(verify.IntegrityError, match='no manifest.json beside .*refused'):
        _load(model_dir)
    with pytest.raises(verify.IntegrityError, match='no manifest.json'):
        TextEncoder(os.path.join(model_dir, 'text_encoder.onnx'))
    assert path not in verify.unverified_files()
    # Explicitly allowed (inference_node's allow_unverified_model): loads, loudly.
    with caplog.at_level(logging.WARNING, logger='vla_ros.runtime.verify'):
        backend = _load(model_dir, require_manifest=False)
    assert not backend.verification.verified
    assert 'NOT verified' in caplog.text and path in caplog.text
    assert path in verify.unverified_files()
    # Tools outside the nodes: the environment variable allows it.
    monkeypatch.setenv(verify.ALLOW_ENV, '1')
    assert not _load(model_dir).verification.verified
    # An explicit require_manifest wins over the environment.
    with pytest.raises(verify.IntegrityError, match='no manifest.json'):
        _load(model_dir, require_manifest=True)


def test_torch_backend_checks_the_export_it_rebuilds(tmp_path):
    pytest.importorskip('torch')
    from vla_ros.paths import default_model_dir
    source = default_model_dir()
    if not os.path.isfile(os.path.join(source, 'manifest.json')):
        pytest.skip('no exported rt1_tiny (make models)')
    folder = str(tmp_path / 'rt1')
    os.makedirs(folder)
    for name in ('policy.onnx', 'manifest.json'):
        shutil.copy(os.path.join(source, name), folder)
    with open(os.path.join(folder, 'policy.onnx'), 'r+b') as stream:
        stream.seek(-1, os.SEEK_END)
        last = stream.read(1)
        stream.seek(-1, os.SEEK_END)
        stream.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(verify.IntegrityError, match='policy.onnx does not match'):
        _load(folder, 'torch')
