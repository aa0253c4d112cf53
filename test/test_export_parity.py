"""`vla-ros export` of the tiny RT-1: artifacts, metadata, reproducibility, torch/ORT parity."""

import json
import os
import shutil

import numpy as np
import pytest

from vla_ros.core import model_contract as mc
from vla_ros.core.action_space import ActionSpace
from vla_ros.runtime import BackendError, BackendOptions, create_backend

pytest.importorskip('torch')
pytest.importorskip('onnx')

from vla_ros.runtime.text_encoder import TextEncoder  # noqa: E402
from vla_ros.tools import export as export_tool  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = ActionSpace.from_yaml(os.path.join(REPO, 'config', 'action_space.yaml'))
INSTRUCTIONS = ('pick up the red apple', 'open the top drawer', 'go left')


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp('export')
    out = {}
    for decoding in ('single', 'autoregressive'):
        out[decoding] = str(root / decoding)
        assert export_tool.main(['--config', 'tiny', '--out', out[decoding], '--decoding',
                                 decoding, '--action-space',
                                 os.path.join(REPO, 'config', 'action_space.yaml')]
                                + (['--int8'] if decoding == 'single' else [])) == 0
    return out


def _feeds(encoder, seed, text, batch=1):
    rng = np.random.default_rng(seed)
    emb, mask = encoder.encode(text)
    return {'image': rng.integers(0, 256, (batch, 300, 300, 3), dtype=np.uint8),
            'text_embeddings': np.repeat(emb, batch, 0), 'text_mask': np.repeat(mask, batch, 0)}


def _ort(path):
    return create_backend('onnxruntime', BackendOptions(model_file_path=path,
                                                        intra_op_threads=2))


def test_manifest_lists_every_artifact_with_its_hash(exports):
    out = exports['single']
    with open(os.path.join(out, 'manifest.json'), encoding='utf-8') as stream:
        manifest = json.load(stream)
    assert sorted(manifest['artifacts']) == [
        'policy.onnx', 'policy_int8.onnx', 'text_encoder.onnx', 'tokenizer.json']
    for name, entry in manifest['artifacts'].items():
        path = os.path.join(out, name)
        assert entry['sha256'] == export_tool.file_sha256(path)
        assert entry['bytes'] == os.path.getsize(path)
    assert manifest['config'] == 'tiny' and manifest['contract_version'] == '1'
    assert 'Apache-2.0' in manifest['text_encoder']['license']
    assert manifest['trained'] is False


def test_export_passes_the_contract_checks_the_node_runs(exports):
    out = exports['single']
    policy = _ort(os.path.join(out, 'policy.onnx'))
    meta = mc.check_policy(policy.inputs, policy.outputs, policy.metadata, SPACE)
    assert meta[mc.META_CONFIG] == 'tiny' and meta[mc.META_TRAINED] == 'false'
    assert meta[mc.META_ACTION_SPACE] == SPACE.to_json()
    assert len(meta[mc.META_WEIGHTS]) == 64
    encoder = TextEncoder(os.path.join(out, 'text_encoder.onnx'), policy_metadata=meta)
    emb, mask = encoder.encode('pick up the red apple')
    assert emb.shape == (1, 16, 384) and emb.dtype == np.float32
    assert mask.dtype == np.float32 and mask.sum() == 7  # [CLS] 5 words [SEP]


def test_export_is_byte_reproducible(exports, tmp_path):
    again = str(tmp_path / 'again')
    export_tool.export('tiny', again, log=lambda *_: None)
    for name in ('policy.onnx', 'text_encoder.onnx', 'tokenizer.json'):
        assert (export_tool.file_sha256(os.path.join(again, name))
                == export_tool.file_sha256(os.path.join(exports['single'], name))), name


@pytest.mark.parametrize('decoding', ['single', 'autoregressive'])
def test_torch_and_onnxruntime_agree(exports, decoding):
    out = exports[decoding]
    path = os.path.join(out, 'policy.onnx')
    torch_backend = create_backend('torch', BackendOptions(model_file_path=path,
                                                           intra_op_threads=2))
    ort_backend = _ort(path)
    assert ort_backend.metadata[export_tool.META_DECODING] == decoding
    encoder = TextEncoder(os.path.join(out, 'text_encoder.onnx'))
    worst = 0.0
    for seed, text in enumerate(INSTRUCTIONS):
        feeds = _feeds(encoder, seed, text, batch=2)
        a = torch_backend.run(feeds)[mc.POLICY_OUTPUT]
        b = ort_backend.run(feeds)[mc.POLICY_OUTPUT]
        assert b.shape == (2, 11, 256)
        np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1))
        worst = max(worst, float(np.abs(a - b).max()))
    print(f'\n{decoding}: torch vs onnxruntime max |logit diff| = {worst:.2e}')
    assert worst < 1e-3


def test_int8_variant_is_opt_in_and_close(exports):
    out = exports['single']
    assert not os.path.exists(os.path.join(exports['autoregressive'], 'policy_int8.onnx'))
    fp32, int8 = _ort(os.path.join(out, 'policy.onnx')), _ort(
        os.path.join(out, 'policy_int8.onnx'))
    mc.check_policy(int8.inputs, int8.outputs, int8.metadata, SPACE)
    assert int8.metadata[export_tool.META_VARIANT].startswith('int8')
    encoder = TextEncoder(os.path.join(out, 'text_encoder.onnx'))
    feeds = _feeds(encoder, 7, INSTRUCTIONS[0])
    diff = np.abs(fp32.run(feeds)[mc.POLICY_OUTPUT] - int8.run(feeds)[mc.POLICY_OUTPUT])
    print(f'\nint8 drift: max {diff.max():.4f}, mean {diff.mean():.4f}')
    assert np.isfinite(diff).all() and diff.mean() < 0.05


def test_torch_backend_refuses_weights_that_differ_from_the_export(exports, tmp_path):
    copy = str(tmp_path / 'copy')
    shutil.copytree(exports['single'], copy)
    manifest_path = os.path.join(copy, 'manifest.json')
    with open(manifest_path, encoding='utf-8') as stream:
        manifest = json.load(stream)
    manifest['policy_metadata'][mc.META_WEIGHTS] = '0' * 64
    with open(manifest_path, 'w', encoding='utf-8') as stream:
        json.dump(manifest, stream)
    with pytest.raises(BackendError, match='differ from the exported'):
        create_backend('torch', BackendOptions(model_file_path=os.path.join(copy,
                                                                            'policy.onnx')))
