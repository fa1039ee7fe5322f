"""Goroutine diagnostics from ``/debug/pprof/goroutine?debug=2`` dumps (runtime.Stack text).

The dump is the only view with per-goroutine state, wait reason, wait minutes and creating
location. Goroutines are grouped into buckets by (state, wait reason, normalised stack, creating
location); a bucket that grows over K consecutive dumps, or goroutines blocked on a channel, lock or
sync primitive for longer than a threshold, become findings. Format reference: runtime/traceback.go
(goroutineheader, printcreatedby).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

_HEADER = re.compile(r"^goroutine (\d+)(?: gp=\S+ m=\S+(?: mp=\S+)?)? \[(.*)\]:\s*$")
_FILE = re.compile(r"^\t(.+?):(\d+)(?: \+0x[0-9a-f]+)?(?: fp=.*)?$")
_CREATED = re.compile(r"^created by (.+?)(?: in goroutine (\d+))?$")
_MINUTES = re.compile(r"^(\d+) minutes?$")

RUN_STATES = {"running", "runnable", "syscall", "idle", "dead", "copystack", "preempted", "waiting", "moribund"}

# wait reason -> category (runtime2.go waitReasonStrings; older runtimes report mutex waits as semacquire)
_CATEGORY = {
    "chan receive": "channel", "chan send": "channel",
    "chan receive (durable)": "channel", "chan send (durable)": "channel",
    "chan receive (nil chan)": "nil_channel", "chan send (nil chan)": "nil_channel",
    "select (no cases)": "nil_channel",
    "select": "select", "select (durable)": "select",
    "sync.Mutex.Lock": "mutex", "sync.RWMutex.RLock": "mutex", "sync.RWMutex.Lock": "mutex",
    "semacquire": "mutex",
    "sync.Cond.Wait": "sync", "sync.WaitGroup.Wait": "sync", "sync.WaitGroup.Wait (durable)": "sync",
    "IO wait": "io",
    "sleep": "sleep",
    "GC assist marking": "gc", "GC assist wait": "gc", "GC sweep wait": "gc", "GC scavenge wait": "gc",
    "GC worker (idle)": "gc", "GC worker (active)": "gc", "garbage collection": "gc",
    "garbage collection scan": "gc", "wait for GC cycle": "gc", "GC mark termination": "gc",
    "GC weak to strong wait": "gc", "force gc (idle)": "gc", "finalizer wait": "gc", "cleanup wait": "gc",
}
# categories where being blocked for a long time means something waits for a wake-up that may never come
STUCK_CATEGORIES = frozenset({"channel", "nil_channel", "mutex", "sync"})


def wait_category(reason: str) -> str:
    if not reason:
        return ""
    return _CATEGORY.get(reason, "other")


@dataclass(slots=True)
class Goroutine:
    id: int
    state: str  # running, runnable, syscall, waiting, ...
    wait_reason: str  # exact runtime wait reason, "" when not waiting
    minutes: int  # blocked for at least this many minutes (0 = under a minute or unknown)
    locked: bool
    leaked: bool  # marked "(leaked)" by the runtime's goroutine leak detector (Go >= 1.26)
    frames: list[tuple[str, str, int]] = field(default_factory=list)  # (function, file, line), innermost first
    created_by: str = ""
    created_at: str = ""  # file:line of the go statement
    parent: int = 0
    elided: bool = False

    @property
    def category(self) -> str:
        return wait_category(self.wait_reason) if self.state == "waiting" else self.state


def _parse_status(s: str) -> tuple[str, str, int, bool, bool]:
    parts = [p.strip() for p in s.split(", ")]
    status = parts[0]
    minutes = 0
    locked = False
    for p in parts[1:]:
        m = _MINUTES.match(p)
        if m:
            minutes = int(m.group(1))
        elif p == "locked to thread":
            locked = True
    leaked = " (leaked)" in status
    status = status.replace(" (leaked)", "").replace(" (scan)", "")
    if status.endswith(" (durable)") and status.removesuffix(" (durable)") not in _CATEGORY:
        status = status.removesuffix(" (durable)")
    if status in RUN_STATES:
        return status, "", minutes, locked, leaked
    return "waiting", status, minutes, locked, leaked


def _func_name(line: str) -> str:
    """'main.(*T).run(0xc000010000, {0x1, 0x2})' -> 'main.(*T).run'."""
    line = line.strip()
    if line.endswith(")"):
        depth = 0
        for i in range(len(line) - 1, -1, -1):
            c = line[i]
            if c == ")":
                depth += 1
            elif c == "(":
                depth -= 1
                if depth == 0:
                    return line[:i]
    return line


def parse_dump(text: str) -> list[Goroutine]:
    """Forgiving: unknown lines are skipped; a truncated dump yields the goroutines read so far."""
    out: list[Goroutine] = []
    cur: Goroutine | None = None
    pending_func: str | None = None
    in_created = False
    for raw in text.splitlines():
        if not raw.strip():
            cur = None
            pending_func = None
            in_created = False
            continue
        h = _HEADER.match(raw)
        if h:
            state, reason, minutes, locked, leaked = _parse_status(h.group(2))
            cur = Goroutine(int(h.group(1)), state, reason, minutes, locked, leaked)
            out.append(cur)
            pending_func = None
            in_created = False
            continue
        if cur is None:
            continue
        if raw.startswith("\t"):
            fm = _FILE.match(raw)
            if fm:
                if in_created:
                    cur.created_at = f"{fm.group(1)}:{fm.group(2)}"
                    in_created = False
                elif pending_func is not None:
                    cur.frames.append((pending_func, fm.group(1), int(fm.group(2))))
                pending_func = None
            continue
        cm = _CREATED.match(raw)
        if cm:
            cur.created_by = cm.group(1)
            cur.parent = int(cm.group(2) or 0)
            in_created = True
            pending_func = None
            continue
        if raw.startswith("...additional frames elided"):
            cur.elided = True
            continue
        if raw.startswith("goroutine running on other thread") or raw.startswith("[originating from"):
            continue
        pending_func = _func_name(raw)
    return out


BucketKey = tuple[str, str, tuple[tuple[str, int], ...], str, str]


@dataclass
class Bucket:
    key: BucketKey
    count: int
    max_minutes: int
    leaked: int
    sample: Goroutine  # one member, for its stack with file names

    @property
    def state(self) -> str:
        return self.key[0]

    @property
    def wait_reason(self) -> str:
        return self.key[1]

    @property
    def category(self) -> str:
        return wait_category(self.key[1]) if self.key[0] == "waiting" else self.key[0]

    @property
    def top_function(self) -> str:
        """The innermost frame outside the runtime: where user code is stuck."""
        for fn, _f, _l in self.sample.frames:
            if not fn.startswith(("runtime.", "internal/", "sync.", "sync/atomic.")):
                return fn
        return self.sample.frames[0][0] if self.sample.frames else "?"

    def stack_text(self, max_frames: int = 32) -> str:
        lines = [f"{fn}\n\t{f}:{ln}" for fn, f, ln in self.sample.frames[:max_frames]]
        if len(self.sample.frames) > max_frames or self.sample.elided:
            lines.append("...")
        if self.sample.created_by:
            lines.append(f"created by {self.sample.created_by}\n\t{self.sample.created_at}")
        return "\n".join(lines)


def bucketize(gs: Iterable[Goroutine]) -> dict[BucketKey, Bucket]:
    out: dict[BucketKey, Bucket] = {}
    for g in gs:
        key: BucketKey = (g.state, g.wait_reason, tuple((fn, ln) for fn, _f, ln in g.frames), g.created_by, g.created_at)
        b = out.get(key)
        if b is None:
            out[key] = Bucket(key, 1, g.minutes, int(g.leaked), g)
        else:
            b.count += 1
            b.max_minutes = max(b.max_minutes, g.minutes)
            b.leaked += int(g.leaked)
    return out


AGE_BOUNDS_MIN = (1.0, 5.0, 15.0, 30.0, 60.0, 180.0, 720.0, 1440.0)


@dataclass
class Finding:
    kind: str  # "growth", "blocked", "leaked"
    bucket: Bucket
    growth: int = 0
    scrapes: int = 0
    history: tuple[int, ...] = ()

    def message(self) -> str:
        b = self.bucket
        where = f"{b.top_function}"
        created = f"created by {b.sample.created_by} at {b.sample.created_at}" if b.sample.created_by else "no creator (main goroutine)"
        reason = b.wait_reason or b.state
        if self.kind == "growth":
            return (f"goroutine leak suspected: {b.count} goroutines blocked in {reason} at {where}, {created}; "
                    f"+{self.growth} over the last {self.scrapes} dumps ({' -> '.join(map(str, self.history))})")
        if self.kind == "leaked":
            return (f"goroutine leak detected by the Go runtime: {b.leaked} goroutines in {reason} at {where}, "
                    f"{created}")
        return (f"{b.count} goroutines blocked in {reason} for at least {b.max_minutes} minutes at {where}, "
                f"{created}")


class LeakDetector:
    """Per-target bucket history. Memory is bounded by ``max_buckets`` (the largest are kept)."""

    def __init__(self, k: int = 3, min_goroutines: int = 5, blocked_minutes: float = 30,
                 max_buckets: int = 2000) -> None:
        self.k = max(1, k)
        self.min_goroutines = min_goroutines
        self.blocked_minutes = blocked_minutes
        self.max_buckets = max_buckets
        self._hist: dict[BucketKey, deque[int]] = {}
        self._reported_growth: set[BucketKey] = set()
        self._reported_blocked: set[BucketKey] = set()
        self._reported_leaked: dict[BucketKey, int] = {}
        self.dumps = 0

    def observe(self, buckets: dict[BucketKey, Bucket]) -> list[Finding]:
        self.dumps += 1
        findings: list[Finding] = []
        keys = set(self._hist) | set(buckets)
        if len(keys) > self.max_buckets:
            ranked = sorted(keys, key=lambda k: buckets[k].count if k in buckets else 0, reverse=True)
            keys = set(ranked[: self.max_buckets])
            for k in list(self._hist):
                if k not in keys:
                    del self._hist[k]
        for k in keys:
            b = buckets.get(k)
            n = b.count if b else 0
            h = self._hist.get(k)
            if h is None:
                # a bucket first seen now started from zero, unless this is the first dump
                h = self._hist[k] = deque([0] if self.dumps > 1 else [], maxlen=self.k + 1)
            h.append(n)
            if n == 0 and all(x == 0 for x in h):
                del self._hist[k]
                self._reported_growth.discard(k)
                self._reported_blocked.discard(k)
                self._reported_leaked.pop(k, None)
                continue
            growing = len(h) == self.k + 1 and all(h[i + 1] > h[i] for i in range(self.k))
            if b is not None and growing and n >= self.min_goroutines and b.state == "waiting":
                if k not in self._reported_growth:
                    self._reported_growth.add(k)
                    findings.append(Finding("growth", b, growth=h[-1] - h[0], scrapes=self.k, history=tuple(h)))
            elif not growing and len(h) >= 2 and h[-1] <= h[-2]:
                self._reported_growth.discard(k)  # re-arm once the episode is over
            if (b is not None and b.category in STUCK_CATEGORIES and self.blocked_minutes > 0
                    and b.max_minutes >= self.blocked_minutes and k not in self._reported_blocked):
                self._reported_blocked.add(k)
                findings.append(Finding("blocked", b))
            if b is not None and b.leaked > self._reported_leaked.get(k, 0):
                self._reported_leaked[k] = b.leaked
                findings.append(Finding("leaked", b))
        return findings


def summary(gs: list[Goroutine]) -> tuple[dict[tuple[str, str, str], int], list[int], float]:
    """(count per (state, wait reason, category), age histogram counts of waiting goroutines, sum of ages)."""
    counts: dict[tuple[str, str, str], int] = {}
    hist = [0] * (len(AGE_BOUNDS_MIN) + 1)
    total = 0.0
    for g in gs:
        k = (g.state, g.wait_reason, g.category if g.state == "waiting" else "")
        counts[k] = counts.get(k, 0) + 1
        if g.state == "waiting":
            i = 0
            while i < len(AGE_BOUNDS_MIN) and g.minutes > AGE_BOUNDS_MIN[i]:
                i += 1
            hist[i] += 1
            total += g.minutes
    return counts, hist, total
