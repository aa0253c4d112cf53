"""Inference backends behind one interface; ``create_backend`` picks one by name."""

from .base import Backend, BackendError, BackendOptions

BACKENDS = ('onnxruntime', 'tensorrt', 'torch')


def create_backend(name: str, options: BackendOptions) -> Backend:
    """Create the backend called ``name`` (one of BACKENDS); imports it lazily."""
    if name == 'onnxruntime':
        from .onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(options)
    if name == 'tensorrt':
        from .tensorrt_backend import TensorRTBackend
        return TensorRTBackend(options)
    if name == 'torch':
        from .torch_backend import TorchBackend
        return TorchBackend(options)
    raise BackendError(f'unknown backend {name!r}; expected one of {BACKENDS}')


__all__ = ['Backend', 'BackendError', 'BackendOptions', 'BACKENDS', 'create_backend']
