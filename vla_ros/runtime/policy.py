"""
A loaded, validated policy: backend + text encoder + action decoding.

The inference node, the demo and the benchmarks all go through ``Policy`` so the contract
checks, the per-instruction embedding cache and the argmax decoding exist once.
"""

from collections import OrderedDict
from dataclasses import dataclass, replace
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import BackendOptions, create_backend
from ..core import model_contract as mc
from ..core.action_space import ActionSpace


@dataclass(frozen=True)
class PolicyFiles:
    """Paths of the artifacts of one exported model directory."""

    policy: str
    text_encoder: str
    tokenizer: str

    @classmethod
    def from_paths(cls, model_file_path: str, text_encoder_path: str = '',
                   tokenizer_path: str = '') -> 'PolicyFiles':
        """Fill empty text encoder / tokenizer paths from the policy's directory."""
        folder = os.path.dirname(os.path.abspath(model_file_path))
        return cls(model_file_path,
                   text_encoder_path or os.path.join(folder, 'text_encoder.onnx'),
                   tokenizer_path or os.path.join(folder, 'tokenizer.json'))


@dataclass
class Prediction:
    """One inference: tokens, raw logits and how long the model took."""

    tokens: np.ndarray
    logits: np.ndarray
    model_ms: float


class Policy:
    """Validated policy + text encoder with an instruction cache."""

    def __init__(self, files: PolicyFiles, space: ActionSpace, backend: str = 'onnxruntime',
                 options: Optional[BackendOptions] = None, cache_size: int = 32,
                 allow_chunks: bool = False):
        from .text_encoder import TextEncoder
        options = options or BackendOptions(model_file_path=files.policy)
        options = replace(options, model_file_path=files.policy)
        self.space = space
        self.backend = create_backend(backend, options)
        self.metadata = mc.check_policy(self.backend.inputs, self.backend.outputs,
                                        self.backend.metadata, space)
        # Steps per frame: a chunked model's tokens are k steps of 11 (``Prediction.tokens``
        # holds all 11 k). Only callers that execute the steps one by one accept one.
        self.chunk_steps = mc.chunk_steps(self.metadata)
        if self.chunk_steps > 1 and not allow_chunks:
            raise mc.ContractError(
                f'the model predicts {self.chunk_steps} steps per frame (action chunks, '
                f'metadata {mc.META_CHUNK_STEPS!r}); the ROS nodes and the policy server '
                'execute single-step models only. `vla-ros eval` runs chunked models in '
                'process; export a single-step checkpoint for the robot.')
        # The text encoder always runs on ONNX Runtime's CPU provider: 16 tokens, once per
        # new instruction; one intra-op thread keeps it off the policy's cores.
        self.text_encoder = TextEncoder(files.text_encoder, files.tokenizer,
                                        policy_metadata=self.metadata,
                                        providers=('CPUExecutionProvider',),
                                        intra_op_threads=1,
                                        require_manifest=options.require_manifest)
        self._cache: 'OrderedDict[str, Tuple[np.ndarray, np.ndarray]]' = OrderedDict()
        self._cache_size = int(cache_size)
        self.last_encode_ms = 0.0

    @property
    def trained(self) -> bool:
        """Tell whether the model metadata says the weights were trained."""
        return self.metadata.get(mc.META_TRAINED, 'false').lower() == 'true'

    @property
    def active_providers(self):
        """Return the execution providers really used by the policy backend."""
        return self.backend.active_providers

    def encode(self, instruction: str) -> Tuple[np.ndarray, np.ndarray]:
        """Embeddings [1,16,E] and mask [1,16] for an instruction (cached)."""
        hit = self._cache.get(instruction)
        if hit is not None:
            self._cache.move_to_end(instruction)
            return hit
        t0 = time.perf_counter()
        emb, mask = self.text_encoder.encode(instruction)
        self.last_encode_ms = (time.perf_counter() - t0) * 1e3
        self._cache[instruction] = (emb, mask)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return emb, mask

    @property
    def state_dim(self) -> int:
        """Size of the model's ``state`` input (the previous commanded target); 0: none."""
        return mc.state_dim(self.metadata)

    def predict(self, image: np.ndarray, instruction: str,
                state: Optional[np.ndarray] = None) -> Prediction:
        """Tokens for one rgb8 300×300 image, an instruction and (if used) the state."""
        return self.predict_batch([image], [instruction], [state])[0]

    def predict_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                      states: Sequence[Optional[np.ndarray]]) -> List[Prediction]:
        """
        Tokens for several frames in one backend call (the batch axis of the ONNX graph).

        Each frame is checked as ``predict`` checks one; ``model_ms`` is the whole call's.
        """
        h, w = mc.IMAGE_SIZE
        n = len(images)
        if n == 0 or len(instructions) != n or len(states) != n:
            raise ValueError(f'a batch needs as many images, instructions and states (found '
                             f'{n}, {len(instructions)}, {len(states)}), at least one')
        for image in images:
            if image.shape != (h, w, 3) or image.dtype != np.uint8:
                raise ValueError(f'expected image uint8 [{h}, {w}, 3], found {image.dtype} '
                                 f'{list(image.shape)}')
        encoded = [self.encode(text) for text in instructions]
        feeds: Dict[str, np.ndarray] = {
            # One frame (inference_node's 5 Hz path): a view, no copy.
            'image': images[0][None] if n == 1 else np.stack(images),
            'text_embeddings': np.concatenate([e for e, _ in encoded]),
            'text_mask': np.concatenate([m for _, m in encoded])}
        if self.state_dim:
            rows = []
            for state in states:
                if state is None:
                    raise ValueError('this policy needs the previous commanded target as its '
                                     'state input')
                s = np.asarray(state, dtype=np.float32).reshape(1, -1)
                if s.shape != (1, self.state_dim) or not np.all(np.isfinite(s)):
                    raise ValueError(f'state must be {self.state_dim} finite values, found '
                                     f'{np.asarray(state).ravel().tolist()}')
                rows.append(s)
            feeds[mc.STATE_INPUT] = np.concatenate(rows)
        t0 = time.perf_counter()
        logits = self.backend.run(feeds)[mc.POLICY_OUTPUT]
        model_ms = (time.perf_counter() - t0) * 1e3
        width = mc.NUM_ACTION_TOKENS * self.chunk_steps
        if logits.shape != (n, width, mc.NUM_BINS):
            raise ValueError(f'policy returned logits of shape {logits.shape}, expected '
                             f'({n}, {width}, {mc.NUM_BINS})')
        if not np.all(np.isfinite(logits)):
            raise ValueError('policy returned NaN or infinite logits')
        tokens = np.argmax(logits, axis=-1).astype(np.uint8)
        return [Prediction(tokens=tokens[i], logits=logits[i], model_ms=model_ms)
                for i in range(n)]
