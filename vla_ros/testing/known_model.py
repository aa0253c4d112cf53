"""
A small, real ONNX policy whose tokens are a known function of image and instruction.

Used by the graph tests and the pipeline benchmark: it satisfies the full I/O contract
(``image`` uint8 [B,300,300,3], ``text_embeddings`` [B,16,E], ``text_mask`` [B,16] →
``action_logits`` [B,11,256]) so the real inference node, backend checks and text encoder
path run unchanged, while the expected tokens can be computed in numpy:

* arm joint j (0..6): token = round(mean red) + 8 (j - 3), clipped to 0..255;
* base_vx: round(mean green); base_vy: round(mean blue); base_wz: 128;
* gripper: 255 × min(1, masked sum of text embedding channel 0); the test text encoder sets
  that channel to 1 for the word "close" and 0 otherwise, so "close" → closed, else open.

Built with ``chunk_steps`` k > 1 it is a chunked model (``action_logits`` [B, 11k, 256]):
step j repeats those tokens with base_wz = 128 + ``CHUNK_WZ_STEP`` × j, so a test can tell
which step of a chunk a target came from.

The text encoder is a real ONNX embedding lookup behind a real ``tokenizers`` WordLevel
tokenizer padded/truncated to 16 tokens.
"""

import argparse
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from ..core import model_contract as mc
from ..core.action_space import ActionSpace
from ..paths import default_action_space_file

TEXT_DIM = 8
TEXT_ENCODER_ID = 'vla_ros/test-word-embedding-v1'
VOCAB = ['[PAD]', '[UNK]', 'pick', 'up', 'the', 'red', 'green', 'blue', 'block', 'open',
         'close', 'gripper', 'push', 'left', 'right', 'drive', 'to', 'marker', 'place', 'in',
         'bowl', 'lift', 'and', 'a']
CLOSE_WORD = 'close'
CHUNK_WZ_STEP = 16


def expected_tokens(image: np.ndarray, text_embeddings: np.ndarray,
                    text_mask: np.ndarray, chunk_steps: int = 1) -> np.ndarray:
    """Numpy reference of the test policy for one image [300,300,3] → tokens uint8 [11k]."""
    mean = image.reshape(-1, 3).astype(np.float64).mean(axis=0)
    m = text_mask.reshape(-1).astype(np.float64)
    t = min(float((text_embeddings.reshape(-1, TEXT_DIM)[:, 0] * m).sum()), 1.0)
    target = np.empty(11)
    target[:7] = mean[0] + 8.0 * (np.arange(7) - 3)
    target[7], target[8], target[9] = mean[1], mean[2], 128.0
    target[10] = 255.0 * t
    steps = np.tile(target, chunk_steps)
    steps[9::11] += CHUNK_WZ_STEP * np.arange(chunk_steps)
    # argmax of -|k - target| picks the nearest bin, the lower one on an exact tie.
    return np.clip(np.ceil(steps - 0.5), 0, 255).astype(np.uint8)


def _embedding_table() -> np.ndarray:
    rng = np.random.default_rng(7)
    table = rng.uniform(-1.0, 1.0, size=(len(VOCAB), TEXT_DIM)).astype(np.float32)
    table[:, 0] = 0.0
    table[VOCAB.index(CLOSE_WORD), 0] = 1.0
    return table


def build_policy(space: ActionSpace, chunk_steps: int = 1):
    """Return the onnx.ModelProto of the test policy (``chunk_steps`` steps per frame)."""
    import onnx
    from onnx import helper, TensorProto
    h, w = mc.IMAGE_SIZE
    offsets = np.zeros((1, 11), np.float32)
    offsets[0, :7] = 8.0 * (np.arange(7) - 3)
    offsets[0, 9] = 128.0
    # select[c, d]: which mean feature (R, G, B, text) drives action dimension d.
    select = np.zeros((4, 11), np.float32)
    select[0, :7] = 1.0
    select[1, 7] = 1.0
    select[2, 8] = 1.0
    select[3, 10] = 255.0
    bins = np.arange(256, dtype=np.float32).reshape(1, 1, 256)
    step_offsets = np.zeros((1, 11 * chunk_steps), np.float32)
    step_offsets[0, 9::11] = CHUNK_WZ_STEP * np.arange(chunk_steps)
    inits = [
        helper.make_tensor('offsets', TensorProto.FLOAT, offsets.shape, offsets.ravel()),
        helper.make_tensor('select', TensorProto.FLOAT, select.shape, select.ravel()),
        helper.make_tensor('bins', TensorProto.FLOAT, bins.shape, bins.ravel()),
        helper.make_tensor('axes12', TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor('axes1', TensorProto.INT64, [1], [1]),
        helper.make_tensor('axes2', TensorProto.INT64, [1], [2]),
        helper.make_tensor('start0', TensorProto.INT64, [1], [0]),
        helper.make_tensor('end1', TensorProto.INT64, [1], [1]),
        helper.make_tensor('one', TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor('repeats', TensorProto.INT64, [2], [1, chunk_steps]),
        helper.make_tensor('step_offsets', TensorProto.FLOAT, step_offsets.shape,
                           step_offsets.ravel()),
    ]
    nodes = [
        helper.make_node('Cast', ['image'], ['image_f'], to=TensorProto.FLOAT),
        helper.make_node('ReduceMean', ['image_f', 'axes12'], ['rgb'], keepdims=0),  # [B,3]
        # masked mean of embedding channel 0
        helper.make_node('Slice', ['text_embeddings', 'start0', 'end1', 'axes2'], ['ch0']),
        helper.make_node('Squeeze', ['ch0', 'axes2'], ['ch0s']),  # [B,16]
        helper.make_node('Mul', ['ch0s', 'text_mask'], ['masked']),
        helper.make_node('ReduceSum', ['masked', 'axes1'], ['tsum'], keepdims=1),
        helper.make_node('Min', ['tsum', 'one'], ['tmean']),  # [B,1]
        helper.make_node('Concat', ['rgb', 'tmean'], ['feat'], axis=1),  # [B,4]
        helper.make_node('MatMul', ['feat', 'select'], ['lin']),
        helper.make_node('Add', ['lin', 'offsets'], ['target1']),  # [B,11]
        helper.make_node('Tile', ['target1', 'repeats'], ['tiled']),  # [B,11k]
        helper.make_node('Add', ['tiled', 'step_offsets'], ['target']),
        helper.make_node('Unsqueeze', ['target', 'axes2'], ['target3']),  # [B,11k,1]
        helper.make_node('Sub', ['bins', 'target3'], ['diff']),
        helper.make_node('Abs', ['diff'], ['adiff']),
        helper.make_node('Neg', ['adiff'], [mc.POLICY_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, 'vla_ros_test_policy',
        [helper.make_tensor_value_info('image', TensorProto.UINT8, ['B', h, w, 3]),
         helper.make_tensor_value_info('text_embeddings', TensorProto.FLOAT,
                                       ['B', mc.MAX_TEXT_TOKENS, TEXT_DIM]),
         helper.make_tensor_value_info('text_mask', TensorProto.FLOAT,
                                       ['B', mc.MAX_TEXT_TOKENS])],
        [helper.make_tensor_value_info(mc.POLICY_OUTPUT, TensorProto.FLOAT,
                                       ['B', mc.NUM_ACTION_TOKENS * chunk_steps,
                                        mc.NUM_BINS])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)],
                              producer_name='vla_ros.tools.test_model')
    model.ir_version = 8
    weights = hashlib.sha256(b''.join(t.SerializeToString() for t in inits)).hexdigest()
    meta = {
        mc.META_CONTRACT: mc.CONTRACT_VERSION, mc.META_ACTION_SPACE: space.to_json(),
        mc.META_IMAGE_SIZE: f'{h},{w}', mc.META_TEXT_ENCODER: TEXT_ENCODER_ID,
        mc.META_TEXT_DIM: str(TEXT_DIM), mc.META_CONFIG: 'test_model',
        mc.META_WEIGHTS: weights, mc.META_TRAINED: 'false',
    }
    if chunk_steps > 1:
        meta[mc.META_CHUNK_STEPS] = str(chunk_steps)
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def build_text_encoder():
    """Return the onnx.ModelProto of the test text encoder (embedding lookup)."""
    import onnx
    from onnx import helper, TensorProto
    table = _embedding_table()
    graph = helper.make_graph(
        [helper.make_node('Gather', ['table', 'input_ids'], ['emb'], axis=0),
         helper.make_node('Cast', ['attention_mask'], ['mask_f'], to=TensorProto.FLOAT),
         helper.make_node('Unsqueeze', ['mask_f', 'axes'], ['mask3']),
         helper.make_node('Mul', ['emb', 'mask3'], [mc.TEXT_OUTPUT])],
        'vla_ros_test_text_encoder',
        [helper.make_tensor_value_info(n, TensorProto.INT64, ['B', mc.MAX_TEXT_TOKENS])
         for n in mc.TEXT_INPUTS],
        [helper.make_tensor_value_info(mc.TEXT_OUTPUT, TensorProto.FLOAT,
                                       ['B', mc.MAX_TEXT_TOKENS, TEXT_DIM])],
        [helper.make_tensor('table', TensorProto.FLOAT, table.shape, table.ravel()),
         helper.make_tensor('axes', TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)],
                              producer_name='vla_ros.tools.test_model')
    model.ir_version = 8
    onnx.helper.set_model_props(model, {mc.META_TEXT_ENCODER: TEXT_ENCODER_ID,
                                        mc.META_TEXT_DIM: str(TEXT_DIM)})
    onnx.checker.check_model(model)
    return model


def build_tokenizer():
    """Return a tokenizers.Tokenizer: lower-case words, WordLevel vocab, 16 tokens."""
    from tokenizers import normalizers, pre_tokenizers, Tokenizer
    from tokenizers.models import WordLevel
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token='[UNK]'))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_truncation(mc.MAX_TEXT_TOKENS)
    tok.enable_padding(length=mc.MAX_TEXT_TOKENS, pad_id=0, pad_token='[PAD]')
    return tok


def write(out_dir: str, space: ActionSpace, chunk_steps: int = 1) -> str:
    """Write policy.onnx, text_encoder.onnx, tokenizer.json, manifest.json; return out_dir."""
    import onnx
    os.makedirs(out_dir, exist_ok=True)
    policy = build_policy(space, chunk_steps)
    onnx.save(policy, os.path.join(out_dir, 'policy.onnx'))
    onnx.save(build_text_encoder(), os.path.join(out_dir, 'text_encoder.onnx'))
    build_tokenizer().save(os.path.join(out_dir, 'tokenizer.json'))
    files = {}
    for name in ('policy.onnx', 'text_encoder.onnx', 'tokenizer.json'):
        path = os.path.join(out_dir, name)
        files[name] = {'sha256': mc.file_sha256(path), 'bytes': os.path.getsize(path)}
    meta = {p.key: p.value for p in policy.metadata_props}
    # The layout `vla-ros export` writes (runtime/verify.py checks the artifacts against it).
    with open(os.path.join(out_dir, 'manifest.json'), 'w', encoding='utf-8') as f:
        json.dump({'format': 1, 'config': 'test_model', 'contract_version': mc.CONTRACT_VERSION,
                   'trained': False, 'weights_sha256': meta[mc.META_WEIGHTS],
                   'text_encoder': {'id': TEXT_ENCODER_ID}, 'artifacts': files}, f, indent=2,
                  sort_keys=True)
    return out_dir


def main(argv: Sequence[str] = None) -> int:
    """Command line: write the test model to --out."""
    parser = argparse.ArgumentParser(prog='vla-ros test-model', description=__doc__.split(
        '\n')[0])
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--action-space', default=default_action_space_file())
    parser.add_argument('--chunk-steps', type=int, default=1,
                        help='steps per frame (action chunks); 1: single-step')
    args = parser.parse_args(argv)
    write(args.out, ActionSpace.from_yaml(args.action_space), args.chunk_steps)
    print(f'wrote test model to {args.out}')
    return 0
