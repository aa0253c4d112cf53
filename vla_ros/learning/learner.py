"""An exported policy as the in-process pipeline's decider (``sim/pipeline.py``)."""

import os
from typing import List, Optional

import numpy as np

from .chunks import ChunkRunner
from ..core.action_space import ActionSpace
from ..core.model_contract import NUM_ACTION_TOKENS
from ..runtime import BackendOptions
from ..runtime.policy import Policy, PolicyFiles
from ..sim.pipeline import Observation


class LearnerDecider:
    """
    An exported policy (ONNX Runtime) as the token source (DAgger, evaluation).

    A chunked model (k steps per frame) is run by ``ChunkRunner``: one inference gives the
    next ``chunk_execute`` decisions (0: all k); call ``reset`` at each episode's start.
    """

    def __init__(self, model_dir: str, space: ActionSpace, threads: int = 2,
                 chunk_execute: int = 0):
        files = PolicyFiles.from_paths(os.path.join(model_dir, 'policy.onnx'))
        self.policy = Policy(files, space, 'onnxruntime',
                             BackendOptions(model_file_path=files.policy,
                                            intra_op_threads=threads), allow_chunks=True)
        k = self.policy.chunk_steps
        execute = chunk_execute or k
        if not 1 <= execute <= k:
            raise ValueError(f'chunk_execute must be 1 to {k} for this model, found '
                             f'{chunk_execute}')
        self.runner = ChunkRunner(self._predict, k, execute, NUM_ACTION_TOKENS)
        self.instruction: Optional[str] = None
        self.model_ms: List[float] = []

    def reset(self):
        """Start an episode: no steps left from the last one."""
        self.runner.reset()

    def _predict(self, obs: Observation) -> np.ndarray:
        pred = self.policy.predict(obs.image, self.instruction or obs.instruction, obs.state)
        self.model_ms.append(pred.model_ms)
        return pred.tokens

    def __call__(self, obs: Observation) -> np.ndarray:
        """Tokens of the policy for this observation (this step of a chunk)."""
        return self.runner(obs)

    def whole_chunk(self, obs: Observation) -> np.ndarray:
        """Return the first ``chunk_execute`` steps' tokens at once, as a served reply does."""
        return self._predict(obs)[:self.runner.execute * NUM_ACTION_TOKENS]
