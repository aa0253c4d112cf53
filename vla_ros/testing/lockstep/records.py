"""What the lock-step driver shares: its constants, errors and the records it keeps."""

from typing import List

from ...graph import PIPELINE

PIPELINE_NODES = tuple(name for _, name in PIPELINE)
NS = 1_000_000_000
CLOCK_PREFIX = '/vla_lockstep/clock/'


class NodeDied(RuntimeError):
    """A node process exited while the driver needed it."""


class NotQuiet(RuntimeError):
    """The graph kept producing messages, or a node did not answer a barrier in time."""


def period_grid(ns: int, period_ns: int) -> int:
    """Return the first multiple of ``period_ns`` strictly after ``ns``."""
    return (ns // period_ns + 1) * period_ns


class Records:
    """What the driver received, attributed to the sim time (ns) it arrived at."""

    def __init__(self):
        """Start empty."""
        self.images: List[dict] = []
        self.tokens: List[dict] = []
        self.targets: List[dict] = []
        self.arm: List[dict] = []
        self.base: List[dict] = []
        self.gripper: List[dict] = []

    def clear(self):
        """Forget everything received so far."""
        self.__init__()
