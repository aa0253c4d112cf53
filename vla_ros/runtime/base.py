"""The one small interface every inference runtime implements, and the shared options."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core.model_contract import TensorSpec


class BackendError(RuntimeError):
    """A backend that cannot be created or run as configured."""


@dataclass(frozen=True)
class BackendOptions:
    """What the inference node passes to every backend (from its parameters)."""

    model_file_path: str
    providers: Tuple[str, ...] = ('CPUExecutionProvider',)
    intra_op_threads: int = 1
    # Several sessions in one process (policy + text encoder) must not spin idle threads.
    allow_spinning: bool = False
    require_accelerator: bool = False
    engine_file_path: str = ''
    force_engine_update: bool = False
    fp16: bool = True
    # No manifest.json beside the model: refuse (True) or load with a warning (False); None
    # refuses unless VLA_ROS_ALLOW_UNVERIFIED_MODEL=1 (runtime/verify.py).
    require_manifest: Optional[bool] = None
    extra: Dict[str, str] = field(default_factory=dict)


class Backend:
    """
    A loaded model: tensor specs, metadata, ``run`` on named numpy arrays.

    Subclasses check the bytes they load (``runtime.verify``; the result is kept in
    ``verification``), fill ``_inputs``, ``_outputs`` (TensorSpec lists) and ``_metadata``
    when they load, and implement ``active_providers`` and ``run``.
    """

    name = 'abstract'
    verification = None  # runtime.verify.Verification of the model file
    _inputs: List[TensorSpec] = []
    _outputs: List[TensorSpec] = []
    _metadata: Dict[str, str] = {}

    @property
    def inputs(self) -> List[TensorSpec]:
        """Return the input tensors of the loaded model."""
        return list(self._inputs)

    @property
    def outputs(self) -> List[TensorSpec]:
        """Return the output tensors of the loaded model."""
        return list(self._outputs)

    @property
    def metadata(self) -> Dict[str, str]:
        """Return the model's metadata: the key-value pairs the exporter wrote."""
        return dict(self._metadata)

    @property
    def active_providers(self) -> List[str]:
        """Return the providers / devices really in use (not merely requested)."""
        raise NotImplementedError

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one inference; returns outputs by name."""
        raise NotImplementedError
