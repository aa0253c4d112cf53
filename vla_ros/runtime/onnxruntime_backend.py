"""ONNX Runtime backend: explicit execution providers, reports the ones really active."""

import os
from typing import Dict, List

import numpy as np

from .base import Backend, BackendError, BackendOptions
from .verify import check_weights, verify_file
from ..core.model_contract import TensorSpec

ACCELERATOR_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')

_ORT_TYPES = {
    'tensor(uint8)': 'uint8', 'tensor(int8)': 'int8', 'tensor(int32)': 'int32',
    'tensor(int64)': 'int64', 'tensor(float)': 'float32', 'tensor(float16)': 'float16',
    'tensor(double)': 'float64', 'tensor(bool)': 'bool',
}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def provider_options(options: BackendOptions) -> List:
    """
    Build the providers list for InferenceSession, with per-provider options.

    The TensorRT EP caches engines and timing data next to the model (never a fixed /tmp
    path); the EP itself keys cached engines by model hash, TensorRT version and GPU.
    """
    model_dir = os.path.dirname(os.path.abspath(options.model_file_path))
    out = []
    for name in options.providers:
        if name == 'TensorrtExecutionProvider':
            cache = os.path.join(model_dir, 'trt_cache')
            out.append((name, {
                'trt_fp16_enable': bool(options.fp16),
                'trt_engine_cache_enable': True,
                'trt_engine_cache_path': cache,
                'trt_timing_cache_enable': True,
                'trt_timing_cache_path': cache,
            }))
        else:
            out.append(name)
    return out


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file with onnxruntime.InferenceSession."""

    name = 'onnxruntime'

    def __init__(self, options: BackendOptions):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
            raise BackendError('onnxruntime is not installed: pip install onnxruntime') from exc
        if not os.path.isfile(options.model_file_path):
            raise BackendError(f'model file not found: {options.model_file_path!r}; set the '
                               'model_file_path parameter or run `make models`')
        if not options.providers:
            raise BackendError('providers is empty: list execution providers explicitly, '
                               'e.g. [CPUExecutionProvider]')
        # The bytes must be the exported ones before anything runs them.
        self.verification = verify_file(options.model_file_path, options.require_manifest)
        available = ort.get_available_providers()
        unknown = [p for p in options.providers if p not in available]
        if unknown and options.require_accelerator:
            raise BackendError(
                f'requested providers {unknown} are not available in this onnxruntime build '
                f'(available: {available}) and require_accelerator is true')
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(options.intra_op_threads)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry('session.intra_op.allow_spinning',
                                    '1' if options.allow_spinning else '0')
        so.log_severity_level = 3
        requested = [p for p in provider_options(options)
                     if (p[0] if isinstance(p, tuple) else p) in available]
        if not requested:
            requested = ['CPUExecutionProvider']
        try:
            self._session = ort.InferenceSession(options.model_file_path, sess_options=so,
                                                 providers=requested)
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise BackendError(
                f'onnxruntime could not load {options.model_file_path!r}: {exc}') from exc
        self._requested = list(options.providers)
        self._active = list(self._session.get_providers())
        # ONNX Runtime silently falls back to CPU when a GPU provider fails to initialise.
        if options.require_accelerator and not any(
                p in ACCELERATOR_PROVIDERS for p in self._active):
            raise BackendError(
                f'require_accelerator is true but no accelerator provider is active: '
                f'requested {self._requested}, active {self._active}')
        meta = self._session.get_modelmeta()
        self._metadata = dict(meta.custom_metadata_map)
        check_weights(self.verification, self._metadata)
        self._inputs = [_spec(a) for a in self._session.get_inputs()]
        self._outputs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @property
    def requested_providers(self) -> List[str]:
        """Return the providers the configuration asked for."""
        return list(self._requested)

    @property
    def active_providers(self) -> List[str]:
        """Return the providers onnxruntime really uses (after any silent fallback)."""
        return list(self._active)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one inference."""
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))
