"""An exported policy as the in-process pipeline's decider (``sim/pipeline.py``)."""

import os
from typing import List, Optional

import numpy as np

from ..core.action_space import ActionSpace
from ..runtime import BackendOptions
from ..runtime.policy import Policy, PolicyFiles
from ..sim.pipeline import Observation


class LearnerDecider:
    """An exported policy (ONNX Runtime) as the token source (DAgger, evaluation)."""

    def __init__(self, model_dir: str, space: ActionSpace, threads: int = 2):
        files = PolicyFiles.from_paths(os.path.join(model_dir, 'policy.onnx'))
        self.policy = Policy(files, space, 'onnxruntime',
                             BackendOptions(model_file_path=files.policy,
                                            intra_op_threads=threads))
        self.instruction: Optional[str] = None
        self.model_ms: List[float] = []

    def __call__(self, obs: Observation) -> np.ndarray:
        """Tokens of the policy for this observation."""
        pred = self.policy.predict(obs.image, self.instruction or obs.instruction, obs.state)
        self.model_ms.append(pred.model_ms)
        return pred.tokens
