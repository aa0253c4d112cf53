"""
PyTorch backend: runs the RT-1 module itself, for development and parity checks.

``model_file_path`` is either an exported ``policy.onnx`` (the torch model is rebuilt from the
``manifest.json`` beside it: config, decoding and, for untrained exports, the seeded weights;
a trained export also needs ``extra['checkpoint']``), or a checkpoint file
(``.safetensors``/``.pt``) with ``extra['config']``. From an export, the ONNX file must match
its manifest (``runtime.verify``), a checkpoint must hash to the manifest's
``checkpoint_sha256``, and the rebuilt weights to its ``weights_sha256``, so the torch model
is the one the ONNX file holds. A bare checkpoint (development) has no manifest to check.
torch is imported only when this backend is created: nodes never need it.
"""

import json
import os
from typing import Dict, List

import numpy as np

from .base import Backend, BackendError, BackendOptions
from .verify import IntegrityError, verify_file
from ..core import model_contract as mc

MANIFEST_FILE = 'manifest.json'


def _policy_specs(text_dim: int, state_dim: int = 0, steps: int = 1):
    h, w = mc.IMAGE_SIZE
    inputs = [mc.TensorSpec('image', 'uint8', (None, h, w, 3)),
              mc.TensorSpec('text_embeddings', 'float32', (None, mc.MAX_TEXT_TOKENS, text_dim)),
              mc.TensorSpec('text_mask', 'float32', (None, mc.MAX_TEXT_TOKENS))]
    if state_dim:
        inputs.append(mc.TensorSpec(mc.STATE_INPUT, 'float32', (None, state_dim)))
    outputs = [mc.TensorSpec(mc.POLICY_OUTPUT, 'float32',
                             (None, mc.NUM_ACTION_TOKENS * steps, mc.NUM_BINS))]
    return inputs, outputs


class TorchBackend(Backend):
    """Runs ``vla_ros.model.rt1.RT1Policy`` in eager PyTorch."""

    name = 'torch'

    def __init__(self, options: BackendOptions):
        try:
            import torch
            from ..model.config import get_config
            from ..model.rt1 import build_policy, chunk_steps_of, weights_sha256
            from ..model.checkpoint import load_checkpoint
        except ImportError as exc:
            raise BackendError('the torch backend needs PyTorch (the training extra); use '
                               'backend onnxruntime on a robot') from exc
        self._torch = torch
        path = options.model_file_path
        extra = dict(options.extra)
        if not os.path.isfile(path):
            raise BackendError(f'model file not found: {path!r}')
        if path.endswith('.onnx'):
            self.verification = verify_file(path, options.require_manifest)
            manifest_path = os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST_FILE)
            try:
                with open(manifest_path, 'r', encoding='utf-8') as stream:
                    manifest = json.load(stream)
                config_name = manifest['config']
                decoding = extra.get('decoding', manifest['decoding'])
                metadata = dict(manifest['policy_metadata'])
            except (OSError, KeyError, ValueError) as exc:
                raise BackendError(f'the torch backend rebuilds the model from '
                                   f'{manifest_path!r}, which is missing or malformed: {exc}')
            checkpoint = extra.get('checkpoint', '')
            if manifest.get('trained') and not checkpoint:
                raise BackendError(f'{path!r} holds trained weights; pass the checkpoint it '
                                   "was exported from as extra['checkpoint']")
            expected = manifest.get('checkpoint_sha256')
            if checkpoint and expected and mc.file_sha256(checkpoint) != expected:
                raise IntegrityError(
                    f'checkpoint {checkpoint} is not the one {path} was exported from: '
                    f'{manifest_path} expects sha256 {expected}, found '
                    f'{mc.file_sha256(checkpoint)}')
        else:
            config_name = extra.get('config', '')
            if not config_name:
                raise BackendError(f"checkpoint {path!r} needs extra['config'] (seed|tiny)")
            decoding = extra.get('decoding', 'single')
            checkpoint, metadata = path, {}
        try:
            config = get_config(config_name)
            state = load_checkpoint(checkpoint) if checkpoint else None
            # A chunked checkpoint exported with fewer steps (--keep-steps) emits those.
            output_steps = (mc.chunk_steps(metadata) if metadata and state is not None
                            and chunk_steps_of(state) > 1 else None)
            self._model = build_policy(config, decoding, state, output_steps)
        except ValueError as exc:  # CheckpointError, ContractError, shape mismatches
            raise BackendError(f'cannot build the torch model: {exc}') from exc
        weights = weights_sha256(self._model)
        if metadata and metadata.get(mc.META_WEIGHTS) != weights:
            raise IntegrityError(
                f'the torch weights rebuilt for {path} differ from the exported ones: expected '
                f'sha256 {metadata.get(mc.META_WEIGHTS)}, found {weights}; pass the '
                'checkpoint it was exported from')
        if not metadata:
            metadata = {mc.META_CONTRACT: mc.CONTRACT_VERSION, mc.META_CONFIG: config.name,
                        mc.META_WEIGHTS: weights, mc.META_TEXT_DIM: str(config.text_dim),
                        mc.META_IMAGE_SIZE: f'{mc.IMAGE_SIZE[0]},{mc.IMAGE_SIZE[1]}'}
        self._metadata = metadata
        device = extra.get('device', 'cpu')
        if device.startswith('cuda') and not torch.cuda.is_available():
            if options.require_accelerator:
                raise BackendError(f'device {device!r} requested with require_accelerator '
                                   'but torch sees no CUDA device')
            device = 'cpu'
        self._device = torch.device(device)
        self._model.to(self._device)
        if options.intra_op_threads > 0:
            # Process-wide in torch; this backend is for development processes only.
            torch.set_num_threads(int(options.intra_op_threads))
        self._inputs, self._outputs = _policy_specs(
            config.text_dim, config.state_dim, output_steps or self._model.config.chunk_steps)

    @property
    def model(self):
        """Return the torch module (eval mode)."""
        return self._model

    @property
    def active_providers(self) -> List[str]:
        """Return the torch device in use."""
        return [f'torch:{self._device}']

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one inference without gradients."""
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self._device)
                for name in mc.policy_input_names(self.metadata)]
        with torch.inference_mode():
            logits = self._model(*args)
        return {mc.POLICY_OUTPUT: logits.float().cpu().numpy()}
