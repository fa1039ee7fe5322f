"""fd leak detection: a kind of fd of one process that keeps growing over a window.

A leak is growth that does not come back: over the last `window` seconds the count rose by at least
`min_growth`, seen in at least `min_samples` readings (one jump between two readings is a burst, not yet
a trend), and never fell by more than `tolerance` of that rise on the way (a pool that grows and shrinks
is not a leak; one closed fd among a hundred leaked is still one). One finding per episode: a
key is reported again only after it grew by another `min_growth` since its last finding.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

G = TypeVar("G")
K = TypeVar("K")


@dataclass(frozen=True)
class Growth(Generic[K]):
    key: K
    first: int  # count at the start of the window
    last: int
    seconds: float  # span of the samples the growth was measured over

    @property
    def growth(self) -> int:
        return self.last - self.first


class LeakDetector(Generic[G, K]):
    """Samples (time, count) per key of a group (a process); `observe` returns its new findings. A key
    a group did not have at its previous reading counted 0 then, so growth from nothing is growth."""

    def __init__(self, window: float, min_growth: int, tolerance: float = 0.1, min_samples: int = 3) -> None:
        self.window = window
        self.min_samples = min_samples
        self.min_growth = min_growth
        self.tolerance = tolerance
        self._samples: dict[G, dict[K, deque[tuple[float, int]]]] = {}
        self._last: dict[G, float] = {}
        self._reported: dict[tuple[G, K], int] = {}  # count at the last finding

    def keys(self, group: G) -> list[K]:
        return list(self._samples.get(group, ()))

    def growth(self, group: G, key: K) -> Growth[K] | None:
        s = self._samples.get(group, {}).get(key)
        if not s:
            return None
        return Growth(key, s[0][1], s[-1][1], s[-1][0] - s[0][0])

    def observe(self, now: float, group: G, counts: dict[K, int]) -> list[Growth[K]]:
        out: list[Growth[K]] = []
        samples = self._samples.setdefault(group, {})
        prev = self._last.get(group)
        self._last[group] = now
        for key in set(samples) | set(counts):
            n = counts.get(key, 0)
            s = samples.get(key)
            if s is None:
                s = samples[key] = deque()
                if prev is not None:
                    s.append((prev, 0))
            s.append((now, n))
            while len(s) > 1 and s[0][0] < now - self.window:
                s.popleft()
            if n == 0 and all(c == 0 for _, c in s):
                del samples[key]
                self._reported.pop((group, key), None)
                continue
            g = self._finding(group, key, s)
            if g is not None:
                out.append(g)
        return out

    def _finding(self, group: G, key: K, s: deque[tuple[float, int]]) -> Growth[K] | None:
        first, last = s[0][1], s[-1][1]
        rise = last - first
        if rise < self.min_growth or len(s) < self.min_samples:
            return None
        peak, worst_fall = first, 0
        for _, c in s:
            peak = max(peak, c)
            worst_fall = max(worst_fall, peak - c)
        if worst_fall > self.tolerance * rise:
            return None
        prev = self._reported.get((group, key))
        if prev is not None and last - prev < self.min_growth:
            return None
        self._reported[(group, key)] = last
        return Growth(key, first, last, s[-1][0] - s[0][0])

    def forget(self, groups: Iterable[G]) -> None:
        """Drops what is kept for these groups (exited processes)."""
        for group in groups:
            for key in self._samples.pop(group, {}):
                self._reported.pop((group, key), None)
            self._last.pop(group, None)
