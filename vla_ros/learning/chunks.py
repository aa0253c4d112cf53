"""
Action chunks: k consecutive steps predicted per decision, executed one per control tick.

Labels (``chunk_labels``): each frame's next k expert labels from the same episode, the
last one repeated past its end. Execution (``ChunkRunner``): predict k steps, execute the
first m of them open loop, one per decision, then predict again (m = k by default: the
oracle measured that re-deciding after 2 of 4 steps loses most of the gain). Relative arm
labels stay relative to the previous commanded target, which after step j - 1 is where
the expert's target was when it chose step j; so a chunk's steps chain as the expert's did.
"""

from typing import List

import numpy as np


def chunk_labels(y: np.ndarray, episode: np.ndarray, k: int) -> np.ndarray:
    """
    Return each frame's next ``k`` labels side by side, (N, k * 11).

    Steps past the end of an episode repeat its last label (the expert's final action).
    """
    if k <= 1:
        return y
    n = len(y)
    out = np.empty((n, k, y.shape[1]), y.dtype)
    last = np.empty(n, np.int64)  # index of each frame's episode's last frame
    ends = np.flatnonzero(np.append(episode[1:] != episode[:-1], True))
    starts = np.append(0, ends[:-1] + 1)
    for s, e in zip(starts, ends):
        last[s:e + 1] = e
    for j in range(k):
        out[:, j] = y[np.minimum(np.arange(n) + j, last)]
    return out.reshape(n, k * y.shape[1])


class ChunkRunner:
    """Run a chunked policy: predict ``k`` steps, execute the first ``execute``, predict again."""

    def __init__(self, policy, k: int, execute: int, width: int = 11):
        self.policy, self.k, self.execute, self.width = policy, k, execute, width
        self.queue: List[np.ndarray] = []

    def reset(self):
        """Forget the steps left from the last episode."""
        self.queue = []

    def __call__(self, observation) -> np.ndarray:
        """Return the tokens of this step (``observation`` goes to the policy)."""
        if not self.queue:
            steps = self.policy(observation).reshape(self.k, self.width)
            self.queue = list(steps[:self.execute])
        return self.queue.pop(0)
