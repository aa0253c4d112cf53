"""
Instruction -> token embeddings with only onnxruntime and tokenizers (no torch).

The inference node creates one ``TextEncoder`` next to its policy backend and calls
``encode`` when the instruction changes (not per frame).
"""

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .base import BackendError, BackendOptions
from .verify import verify_file
from ..core import model_contract as mc

TOKENIZER_FILE = 'tokenizer.json'


class TextEncoder:
    """A text encoder ONNX model plus its tokenizer, checked against the policy it feeds."""

    def __init__(self, model_file_path: str, tokenizer_path: str = '',
                 policy_metadata: Optional[Dict[str, str]] = None,
                 providers: Sequence[str] = ('CPUExecutionProvider',),
                 intra_op_threads: int = 1, require_manifest: Optional[bool] = None):
        from . import create_backend
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - tokenizers is a hard dependency
            raise BackendError('tokenizers is not installed: pip install tokenizers') from exc
        tokenizer_path = tokenizer_path or os.path.join(
            os.path.dirname(os.path.abspath(model_file_path)), TOKENIZER_FILE)
        if not os.path.isfile(tokenizer_path):
            raise BackendError(f'tokenizer not found: {tokenizer_path!r}; it is written by '
                               '`vla-ros export` next to text_encoder.onnx')
        # Both files are checked against the manifest beside them (the model by its backend).
        self.tokenizer_verification = verify_file(tokenizer_path, require_manifest)
        # The policy session lives in the same process: no spinning idle threads.
        self._backend = create_backend('onnxruntime', BackendOptions(
            model_file_path=model_file_path, providers=tuple(providers),
            intra_op_threads=intra_op_threads, allow_spinning=False,
            require_manifest=require_manifest))
        if policy_metadata is not None:
            self.dim = mc.check_text_encoder(self._backend.inputs, self._backend.outputs,
                                             self._backend.metadata, policy_metadata)
        else:
            out = {s.name: s for s in self._backend.outputs}.get(mc.TEXT_OUTPUT)
            if out is None or not isinstance(out.shape[-1], int):
                raise BackendError(f'{model_file_path!r} has no output {mc.TEXT_OUTPUT!r} '
                                   'with a fixed embedding size')
            self.dim = int(out.shape[-1])
        self._tokenizer = Tokenizer.from_file(tokenizer_path)
        # Enforce the contract's 16 tokens even if someone edited tokenizer.json.
        self._tokenizer.enable_truncation(max_length=mc.MAX_TEXT_TOKENS)
        self._tokenizer.enable_padding(length=mc.MAX_TEXT_TOKENS,
                                       pad_id=self._tokenizer.padding['pad_id']
                                       if self._tokenizer.padding else 0)

    @property
    def verification(self):
        """Return the runtime.verify.Verification of the text encoder model file."""
        return self._backend.verification

    @property
    def encoder_id(self) -> str:
        """Return the text encoder identifier from the model metadata."""
        return self._backend.metadata.get(mc.META_TEXT_ENCODER, '')

    @property
    def active_providers(self):
        """Return the execution providers the text encoder session really uses."""
        return self._backend.active_providers

    def tokenize(self, text: str) -> Tuple[np.ndarray, np.ndarray]:
        """Return ``input_ids`` and ``attention_mask`` int64 [1, 16]."""
        enc = self._tokenizer.encode(text)
        return (np.asarray([enc.ids], dtype=np.int64),
                np.asarray([enc.attention_mask], dtype=np.int64))

    def encode(self, text: str) -> Tuple[np.ndarray, np.ndarray]:
        """Return token embeddings float32 [1, 16, E] and mask float32 [1, 16]."""
        ids, mask = self.tokenize(text)
        out = self._backend.run({mc.TEXT_INPUTS[0]: ids, mc.TEXT_INPUTS[1]: mask})
        return (np.ascontiguousarray(out[mc.TEXT_OUTPUT], dtype=np.float32),
                mask.astype(np.float32))
