"""The MiniLM text encoder: tokenizer to 16 tokens, torch model, ONNX export, runtime class."""

import os

import numpy as np
import pytest

from vla_ros.core import model_contract as mc
from vla_ros.runtime import BackendError
from vla_ros.runtime.text_encoder import TextEncoder

torch = pytest.importorskip('torch')
pytest.importorskip('onnx')

from vla_ros.model import text_encoder as te  # noqa: E402, I100
from vla_ros.tools.export import export_text_encoder  # noqa: E402


@pytest.fixture(scope='module')
def torch_encoder():
    return te.load_text_encoder(), te.load_tokenizer()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('text'))
    meta = export_text_encoder(out)
    return out, meta


def _sentence(model, tokenizer, text):
    ids, mask = te.tokenize(tokenizer, text)
    with torch.no_grad():
        return te.sentence_embedding(model(ids, mask), mask)[0]


def test_tokenizer_truncates_and_pads_to_16(torch_encoder):
    _, tokenizer = torch_encoder
    short = tokenizer.encode('stop')
    assert len(short.ids) == 16 and sum(short.attention_mask) == 3
    long = tokenizer.encode(' '.join(['apple'] * 40))
    assert len(long.ids) == 16 and sum(long.attention_mask) == 16
    assert long.tokens[0] == '[CLS]' and long.tokens[-1] == '[SEP]'


def test_pretrained_weights_give_meaningful_sentence_vectors(torch_encoder):
    model, tokenizer = torch_encoder
    a = _sentence(model, tokenizer, 'pick up the red apple')
    b = _sentence(model, tokenizer, 'grab the red apple')
    c = _sentence(model, tokenizer, 'the stock market fell sharply today')
    # Random weights would give no such gap; the pretrained MiniLM does (0.90 vs 0.06).
    assert float(a @ b) > 0.8 and float(a @ c) < 0.3


def test_encoder_id_names_source_and_weights():
    assert te.encoder_id().startswith('sentence-transformers/all-MiniLM-L6-v2@sha256:')


def test_onnx_encoder_matches_torch(torch_encoder, exported):
    model, tokenizer = torch_encoder
    out, meta = exported
    encoder = TextEncoder(os.path.join(out, 'text_encoder.onnx'), require_manifest=False)
    assert encoder.dim == 384 and encoder.encoder_id == meta[mc.META_TEXT_ENCODER]
    for text in ('pick up the red apple', 'move the coke can to the top drawer', ''):
        emb, mask = encoder.encode(text)
        assert emb.shape == (1, 16, 384) and mask.shape == (1, 16)
        ids, torch_mask = te.tokenize(tokenizer, text)
        with torch.no_grad():
            ref = model(ids, torch_mask).numpy()
        np.testing.assert_array_equal(mask, torch_mask.numpy().astype(np.float32))
        assert np.abs(emb - ref).max() < 1e-4


def test_encoder_for_another_policy_is_rejected(exported):
    out, meta = exported
    policy_meta = {mc.META_TEXT_DIM: '384', mc.META_TEXT_ENCODER: 'bert-base-uncased'}
    with pytest.raises(mc.ContractError, match='bert-base-uncased'):
        TextEncoder(os.path.join(out, 'text_encoder.onnx'), require_manifest=False,
                    policy_metadata=policy_meta)
    policy_meta[mc.META_TEXT_ENCODER] = meta[mc.META_TEXT_ENCODER]
    TextEncoder(os.path.join(out, 'text_encoder.onnx'), require_manifest=False,
                policy_metadata=policy_meta)


def test_missing_tokenizer_is_a_clear_error(exported, tmp_path):
    out, _ = exported
    with pytest.raises(BackendError, match='tokenizer not found'):
        TextEncoder(os.path.join(out, 'text_encoder.onnx'), require_manifest=False,
                    tokenizer_path=str(tmp_path / 'none.json'))
