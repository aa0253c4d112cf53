"""Rate, period-jitter and latency statistics over a sliding window (pure numpy)."""

from collections import deque
from typing import Dict, Optional

import numpy as np


class WindowStats:
    """Keeps the last ``size`` samples; summarises them as mean/p50/p99/max."""

    def __init__(self, size: int = 1000):
        self._samples = deque(maxlen=int(size))

    def add(self, value: float):
        """Record one sample."""
        self._samples.append(float(value))

    def __len__(self):
        return len(self._samples)

    def clear(self):
        """Forget all samples."""
        self._samples.clear()

    def summary(self) -> Dict[str, float]:
        """Return count, mean, p50, p99 and max (NaN when empty)."""
        if not self._samples:
            nan = float('nan')
            return {'count': 0, 'mean': nan, 'p50': nan, 'p99': nan, 'max': nan}
        a = np.fromiter(self._samples, dtype=np.float64)
        return {'count': int(a.size), 'mean': float(a.mean()),
                'p50': float(np.percentile(a, 50)), 'p99': float(np.percentile(a, 99)),
                'max': float(a.max())}


class RateMonitor:
    """Tick timestamps → achieved rate and period jitter (|period - nominal|)."""

    def __init__(self, nominal_frequency: float, size: int = 2000):
        self.nominal_period = 1.0 / float(nominal_frequency)
        self.periods = WindowStats(size)
        self.jitter = WindowStats(size)
        self._last: Optional[float] = None

    def tick(self, now: float):
        """Record a tick at ``now`` (seconds)."""
        if self._last is not None:
            period = now - self._last
            self.periods.add(period)
            self.jitter.add(abs(period - self.nominal_period))
        self._last = now

    def summary(self) -> Dict[str, float]:
        """Rate (Hz) from the mean period, and jitter p50/p99/max in seconds."""
        p = self.periods.summary()
        j = self.jitter.summary()
        rate = 1.0 / p['mean'] if p['count'] and p['mean'] > 0 else float('nan')
        return {'rate_hz': rate, 'ticks': p['count'], 'jitter_p50': j['p50'],
                'jitter_p99': j['p99'], 'jitter_max': j['max']}


class Freshness:
    """Tracks the time of the newest sample and tells whether it is recent enough."""

    def __init__(self, max_age: float):
        if not max_age > 0:
            raise ValueError(f'max_age must be > 0 s, found {max_age}')
        self.max_age = float(max_age)
        self.stamp: Optional[float] = None

    def update(self, stamp: float):
        """Record a sample time."""
        self.stamp = float(stamp)

    def age(self, now: float) -> float:
        """Return seconds since the newest sample (inf when none)."""
        return float('inf') if self.stamp is None else now - self.stamp

    def fresh(self, now: float) -> bool:
        """
        Tell whether a sample exists and is not older than ``max_age``.

        A stamp from the future is tolerated up to ``max_age`` (clock skew between the
        camera's computer and this one); further ahead, the clock jumped or the stamp is
        garbage, and the sample counts as stale.
        """
        return -self.max_age <= self.age(now) <= self.max_age
