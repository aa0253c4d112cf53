"""
Native TensorRT 10 backend: FP16 engine built from the ONNX model, cached next to it.

The engine file name is keyed by everything that makes a serialized engine invalid: the
ONNX file's sha256, the TensorRT version, the GPU name and its compute capability (plus the
precision and the largest batch of the optimisation profile). A JSON key file beside the
engine repeats the key; the engine is rebuilt when any part differs, when the file is
missing or unreadable, when its bytes do not hash to the ``engine_sha256`` the key file
recorded at build time (a corrupted cache is rebuilt, never run), or when
``force_engine_update`` is set. Engines live next to the model (or in ``engine_file_path``),
never under a fixed /tmp path. The ONNX file itself is checked against its manifest
(``runtime.verify``) before it is parsed.

Inference uses ``execute_async_v3`` with tensor addresses set per I/O tensor.

TensorRT and the CUDA runtime bindings (``cuda-python``) are imported only when the backend is
created. The pure parts (cache key, engine path, rebuild decision, binding validation
against the ONNX graph) need neither and are tested on machines without a GPU.

Length (over 300 lines): engine cache key, build, binding checks and execution of one
backend.
"""

from dataclasses import asdict, dataclass
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import Backend, BackendError, BackendOptions
from .verify import check_weights, verify_file
from ..core.model_contract import file_sha256, TensorSpec

# 2: the key file also records the engine's sha256.
KEY_FORMAT = 2

# onnx.TensorProto element types -> numpy names (the onnx package is not needed for this).
_ONNX_TYPES = {1: 'float32', 2: 'uint8', 3: 'int8', 5: 'int16', 6: 'int32', 7: 'int64',
               9: 'bool', 10: 'float16', 11: 'float64', 16: 'bfloat16'}
# tensorrt.DataType member names -> numpy names.
_TRT_TYPES = {'FLOAT': 'float32', 'HALF': 'float16', 'INT8': 'int8', 'INT32': 'int32',
              'INT64': 'int64', 'BOOL': 'bool', 'UINT8': 'uint8', 'BF16': 'bfloat16'}


@dataclass(frozen=True)
class EngineKey:
    """What a serialized TensorRT engine is valid for."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # e.g. '8.7' (Jetson Orin), '9.0' (H100)
    precision: str = 'fp16'
    max_batch: int = 1

    def file_name(self, stem: str) -> str:
        """
        Return the engine file name.

        For example ``policy.<16 hex>.trt10.3.0.nvidia-h100.sm90.fp16.b1.engine``.
        """
        gpu = re.sub(r'[^a-z0-9]+', '-', self.gpu_name.lower()).strip('-') or 'gpu'
        version = re.sub(r'[^0-9A-Za-z.]+', '_', self.tensorrt_version)
        sm = self.compute_capability.replace('.', '')
        return (f'{stem}.{self.onnx_sha256[:16]}.trt{version}.{gpu}.sm{sm}.'
                f'{self.precision}.b{self.max_batch}.engine')

    def timing_cache_name(self) -> str:
        """Return the timing cache file name, valid per TensorRT version and GPU, not per model."""
        gpu = re.sub(r'[^a-z0-9]+', '-', self.gpu_name.lower()).strip('-') or 'gpu'
        version = re.sub(r'[^0-9A-Za-z.]+', '_', self.tensorrt_version)
        return f'timing.trt{version}.{gpu}.sm{self.compute_capability.replace(".", "")}.cache'

    def to_json(self, engine_sha256: str = '') -> str:
        """Canonical JSON written next to the engine (with the engine's sha256 once built)."""
        fields = dict(asdict(self), format=KEY_FORMAT)
        if engine_sha256:
            fields['engine_sha256'] = engine_sha256
        return json.dumps(fields, indent=2, sort_keys=True)


def key_file(engine_path: str) -> str:
    """Return the path of the JSON key that describes ``engine_path``."""
    return engine_path + '.json'


def engine_path(model_file_path: str, key: EngineKey, engine_file_path: str = '') -> str:
    """
    Return where the engine for ``key`` lives.

    Empty ``engine_file_path``: next to the model under the keyed name. A directory: the keyed
    name inside it. A file name: exactly that file (its key file still guards it).
    """
    stem = os.path.splitext(os.path.basename(model_file_path))[0]
    if not engine_file_path:
        return os.path.join(os.path.dirname(os.path.abspath(model_file_path)),
                            key.file_name(stem))
    if os.path.isdir(engine_file_path) or engine_file_path.endswith(os.sep):
        return os.path.join(engine_file_path, key.file_name(stem))
    return engine_file_path


def rebuild_reason(path: str, key: EngineKey, force: bool = False) -> Optional[str]:
    """Return why the engine at ``path`` must be (re)built, or None when it can be reused."""
    if force:
        return 'force_engine_update is set'
    if not os.path.isfile(path):
        return f'no cached engine at {path}'
    try:
        with open(key_file(path), 'r', encoding='utf-8') as stream:
            found = json.load(stream)
    except (OSError, ValueError):
        return f'the engine has no readable key file {key_file(path)}'
    want = json.loads(key.to_json())
    diffs = [f'{name} {found.get(name)!r} -> {value!r}' for name, value in sorted(want.items())
             if found.get(name) != value]
    if diffs:
        return 'the cached engine was built for something else: ' + ', '.join(diffs)
    found_sha = file_sha256(path)
    if found.get('engine_sha256') != found_sha:
        return (f'the cached engine is not the one that was built: sha256 {found_sha}, key '
                f'file records {found.get("engine_sha256")}')
    return None


def _dims(shape: Sequence) -> Tuple:
    # -1 (TensorRT), None/'B'/'' (ONNX symbolic) all mean "dynamic".
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def validate_bindings(engine_inputs: List[TensorSpec], engine_outputs: List[TensorSpec],
                      onnx_inputs: List[TensorSpec], onnx_outputs: List[TensorSpec]) -> None:
    """Check that the engine's I/O tensors are the ONNX model's (names, dtypes, shapes)."""
    problems = []
    for kind, engine, onnx_specs in (('input', engine_inputs, onnx_inputs),
                                     ('output', engine_outputs, onnx_outputs)):
        by_name = {s.name: s for s in engine}
        for spec in onnx_specs:
            got = by_name.pop(spec.name, None)
            if got is None:
                problems.append(f'engine lacks {kind} {spec.describe()}')
                continue
            if got.dtype != spec.dtype:
                problems.append(f'{kind} {spec.name!r}: ONNX {spec.dtype}, engine {got.dtype}')
            want, found = _dims(spec.shape), _dims(got.shape)
            if len(want) != len(found) or any(
                    w is not None and f is not None and w != f for w, f in zip(want, found)):
                problems.append(f'{kind} {spec.name!r}: ONNX shape {list(want)}, engine '
                                f'shape {list(found)}')
        problems += [f'engine has extra {kind} {name!r}' for name in sorted(by_name)]
    if problems:
        raise BackendError('TensorRT engine bindings do not match the ONNX model: '
                           + '; '.join(problems)
                           + '. Rebuild the engine (force_engine_update: true).')


def onnx_io_specs(model_file_path: str) -> Tuple[List[TensorSpec], List[TensorSpec],
                                                 Dict[str, str]]:
    """Read graph inputs (initializers excluded), outputs and metadata of an ONNX file."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendError('the tensorrt backend reads the ONNX graph with the onnx '
                           'package: pip install onnx') from exc
    model = onnx.load(model_file_path, load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField('dim_value') else None
                      for d in tensor.shape.dim)
        return TensorSpec(value.name, _ONNX_TYPES.get(tensor.elem_type,
                                                      str(tensor.elem_type)), shape)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    metadata = {p.key: p.value for p in model.metadata_props}
    return inputs, outputs, metadata


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            'backend tensorrt needs the TensorRT 10 Python bindings, which are not installed '
            '(JetPack 6: apt install python3-libnvinfer; x86: the tensorrt wheels from NVIDIA). '
            'Use backend onnxruntime (optionally with TensorrtExecutionProvider) instead.'
        ) from exc
    if int(trt.__version__.split('.')[0]) < 10:
        raise BackendError(f'backend tensorrt needs TensorRT >= 10 (execute_async_v3, '
                           f'tensor addresses); found {trt.__version__}')
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendError('backend tensorrt needs the CUDA runtime bindings: '
                               'pip install cuda-python') from exc
    return trt, cudart


def _check(result):
    # cuda-python returns (error, *values); raise on any error code.
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f'CUDA runtime call failed: {err}')
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    """Runs a cached FP16 TensorRT engine built from the ONNX model."""

    name = 'tensorrt'

    def __init__(self, options: BackendOptions):
        if not options.model_file_path or not os.path.isfile(options.model_file_path):
            raise BackendError(f'model file not found: {options.model_file_path!r}; set '
                               'model_file_path to an exported policy.onnx')
        self.verification = verify_file(options.model_file_path, options.require_manifest)
        self._onnx_inputs, self._onnx_outputs, self._metadata = onnx_io_specs(
            options.model_file_path)
        check_weights(self.verification, self._metadata)
        trt, cudart = _import_tensorrt()
        self._trt, self._cudart = trt, cudart
        props = _check(cudart.cudaGetDeviceProperties(0))
        gpu_name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        max_batch = int(options.extra.get('max_batch', '1'))
        self.key = EngineKey(self.verification.sha256, trt.__version__,
                             gpu_name, f'{props.major}.{props.minor}',
                             'fp16' if options.fp16 else 'fp32', max_batch)
        self.engine_path = engine_path(options.model_file_path, self.key,
                                       options.engine_file_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.rebuilt_because = rebuild_reason(self.engine_path, self.key,
                                              options.force_engine_update)
        if self.rebuilt_because:
            self._build(options.model_file_path)
        runtime = trt.Runtime(self._logger)
        with open(self.engine_path, 'rb') as stream:
            self._engine = runtime.deserialize_cuda_engine(stream.read())
        if self._engine is None and not self.rebuilt_because:
            # Corrupt or foreign file under the right name: rebuild once.
            self.rebuilt_because = 'the cached engine could not be deserialized'
            self._build(options.model_file_path)
            with open(self.engine_path, 'rb') as stream:
                self._engine = runtime.deserialize_cuda_engine(stream.read())
        if self._engine is None:
            raise BackendError(f'TensorRT could not deserialize {self.engine_path}')
        self._inputs, self._outputs = self._engine_specs()
        validate_bindings(self._inputs, self._outputs, self._onnx_inputs, self._onnx_outputs)
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._buffers: Dict[str, Tuple[int, int]] = {}  # name -> (device pointer, bytes)

    # -- build ---------------------------------------------------------------------------
    def _build(self, onnx_path: str) -> None:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(onnx_path):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f'TensorRT could not parse {onnx_path}: {errors}')
        config = builder.create_builder_config()
        if self.key.precision == 'fp16':
            config.set_flag(trt.BuilderFlag.FP16)
        timing_path = os.path.join(os.path.dirname(self.engine_path),
                                   self.key.timing_cache_name())
        timing_bytes = b''
        if os.path.isfile(timing_path):
            with open(timing_path, 'rb') as stream:
                timing_bytes = stream.read()
        cache = config.create_timing_cache(timing_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            low, high = ([1 if d < 0 else d for d in shape],
                         [self.key.max_batch if d < 0 else d for d in shape])
            profile.set_shape(tensor.name, low, low, high)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f'TensorRT failed to build an engine from {onnx_path}')
        tmp = self.engine_path + '.tmp'
        with open(tmp, 'wb') as stream:
            stream.write(serialized)
        os.replace(tmp, self.engine_path)  # never leave a half-written engine
        with open(key_file(self.engine_path), 'w', encoding='utf-8') as stream:
            stream.write(self.key.to_json(file_sha256(self.engine_path)) + '\n')
        with open(timing_path, 'wb') as stream:
            stream.write(memoryview(config.get_timing_cache().serialize()))

    def _engine_specs(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        trt, engine = self._trt, self._engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = _TRT_TYPES.get(engine.get_tensor_dtype(name).name, 'unknown')
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype, _dims(shape))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
            else:
                outputs.append(spec)
        return inputs, outputs

    # -- interface -----------------------------------------------------------------------
    @property
    def active_providers(self) -> List[str]:
        """Return the GPU and precision in use."""
        return [f'TensorRT {self.key.tensorrt_version} {self.key.precision} on '
                f'{self.key.gpu_name} (sm {self.key.compute_capability})']

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Copy inputs to the GPU, execute_async_v3, copy outputs back."""
        cudart, ctx = self._cudart, self._context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self._inputs:
            array = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            ptr = self._device_buffer(spec.name, array.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d,
                                          self._stream))
            ctx.set_input_shape(spec.name, array.shape)
            ctx.set_tensor_address(spec.name, ptr)
        results = {}
        for spec in self._outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            results[spec.name] = np.empty(shape, dtype=spec.dtype)
            ctx.set_tensor_address(spec.name, self._device_buffer(
                spec.name, results[spec.name].nbytes))
        if not ctx.execute_async_v3(self._stream):
            raise BackendError('TensorRT execute_async_v3 failed')
        for spec in self._outputs:
            out = results[spec.name]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[spec.name][0],
                                          out.nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return results

    def __del__(self):
        """Free the device buffers."""
        cudart = getattr(self, '_cudart', None)
        for ptr, _ in getattr(self, '_buffers', {}).values():
            if cudart is not None:
                cudart.cudaFree(ptr)
