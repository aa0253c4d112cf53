"""
The steps of an action chunk, each released at its own time (detokenizer_node).

A chunked model predicts k consecutive steps from one camera frame, as the policy would
have chosen them one policy period apart. They are executed that way: step 0 when the
chunk arrives, step j ``j`` periods later (*due* at arrival + j * period on this node's
clock), so every step gets one whole period, as in training and in the in-process
evaluation. Each step leaves stamped ``source stamp + j * period``: its information is as
old as the frame plus the steps before it, and the interpolator's staleness rule (by
source stamp) judges every step on its own. (Scheduling by the frame stamp instead gave
step 0 only what the frame's age left of its period, and through the graph the arm fell
behind the plan.) The rules:

* a step is released once its due time has come (``tolerance`` early at most, for timer
  jitter); when several are due at once (a busy executor ran the release timer late),
  they are released together, in order, and the caller composes them all and publishes
  only the newest: with relative arm actions each step is a delta on the one before, so a
  skipped step would lose its motion for good (a missed 2.4 cm of descent is a missed
  grasp), while the robot should still never be sent to a past step's target on its own;
* a newer chunk replaces the steps left of the previous one (counted as replaced); a chunk
  from an older frame than the current one is refused (out of order); one from the same
  frame (a policy that predicted again on it, with a newer state) replaces it;
* a clock that went back (a restarted simulator, a replayed bag) starts the order afresh:
  when ``now`` is more than a period before the current chunk's stamp, the queue is reset
  before the new chunk is taken, so one bogus stamp cannot lock out every later chunk.

A single-step message is a chunk of one: released on arrival.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


@dataclass
class Step:
    """One step of a chunk: its action values, index, stamp and due time (ns)."""

    values: np.ndarray
    index: int
    stamp_ns: int
    due_ns: int


class StepQueue:
    """Steps still to release, with the counts of merged (late) and replaced ones."""

    def __init__(self, period_s: float, tolerance_s: float = 0.0):
        if not period_s > 0:
            raise ValueError(f'period must be > 0 s, found {period_s}')
        if not 0 <= tolerance_s < period_s:
            raise ValueError(f'tolerance must be in [0, period), found {tolerance_s}')
        self.period_ns = int(round(period_s * 1e9))
        self.tolerance_ns = int(round(tolerance_s * 1e9))
        self.pending: List[Step] = []
        self.source_ns: Optional[int] = None  # the current chunk's frame stamp
        self.late = 0
        self.replaced = 0
        self.resets = 0

    def reset(self):
        """Forget the pending steps and the stamps seen (after a restart or a cleanup)."""
        self.pending = []
        self.source_ns = None

    def put(self, steps: Sequence[np.ndarray], source_ns: int, now_ns: int):
        """Queue a chunk computed from the frame stamped ``source_ns``; ValueError if older."""
        if not steps:
            raise ValueError('a chunk needs at least one step')
        if self.source_ns is not None and now_ns < self.source_ns - self.period_ns:
            self.resets += 1
            self.reset()
        if self.source_ns is not None and source_ns < self.source_ns:
            raise ValueError(f'chunk from a frame stamped {source_ns * 1e-9:.3f} s is older '
                             f'than the current one ({self.source_ns * 1e-9:.3f} s): out of '
                             'order')
        self.replaced += len(self.pending)
        self.source_ns = int(source_ns)
        self.pending = [Step(np.asarray(v), j, self.source_ns + j * self.period_ns,
                             int(now_ns) + j * self.period_ns) for j, v in enumerate(steps)]

    def release(self, now_ns: int) -> List[Step]:
        """
        Return the steps due now, oldest first (empty: none due).

        Compose them all in order and publish the last; the ones before it are counted as
        ``late`` (merged into a later step rather than executed on their own).
        """
        due = [s for s in self.pending if s.due_ns <= now_ns + self.tolerance_ns]
        self.pending = self.pending[len(due):]
        self.late += max(len(due) - 1, 0)
        return due

    def next_due_ns(self) -> Optional[int]:
        """Return when the next pending step is due (None: nothing pending)."""
        return self.pending[0].due_ns if self.pending else None
