"""Client-side deltas of Go's cumulative profiles (heap/allocs alloc_*, mutex and block
contentions/delay), with restart detection.

Samples are keyed by a hash of their instruction addresses (location ids are renumbered in every
dump) and labels; duplicates are summed. Only the previous cumulative values per key are kept, so
state costs about ``BYTES_PER_STACK`` bytes per distinct stack, capped by ``max_stacks``.

A restart (new pid or process start time, a different main mapping, the cumulative total going
down, or most stacks going down at once) makes the current dump the new baseline and nothing is
emitted for it: a delta is never negative. A single stack going down without a restart (Go scales
sampled heap values by the average object size, which can shift) is clamped to zero and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gotel.formats import pprof
from gotel.proto import pprof_profile_pb2 as pb

CUMULATIVE: dict[str, frozenset[str]] = {
    "heap": frozenset({"alloc_objects", "alloc_space"}),
    "allocs": frozenset({"alloc_objects", "alloc_space"}),
    "mutex": frozenset({"contentions", "delay"}),
    "block": frozenset({"contentions", "delay"}),
}
BYTES_PER_STACK = 200  # measured by bench/pprof/run.py (dict slot + int key + tuple of two ints)


@dataclass
class DeltaResult:
    profile: pb.Profile | None  # None for a baseline
    reason: str  # "delta", "baseline", "restart"
    clamped: int = 0  # stacks whose value went down without a restart (set to 0)
    dropped_stacks: int = 0  # stacks beyond max_stacks, not tracked


class DeltaState:
    def __init__(self, profile_type: str, max_stacks: int = 20000) -> None:
        self.cum_names = CUMULATIVE[profile_type]
        self.max_stacks = max_stacks
        self.prev: dict[int, tuple[int, ...]] | None = None
        self.prev_time = 0
        self.identity: tuple[Any, ...] | None = None

    def stacks(self) -> int:
        return len(self.prev or ())

    def reset(self) -> None:
        self.prev = None
        self.identity = None

    def apply(self, p: pb.Profile, identity: tuple[Any, ...] = ()) -> DeltaResult:
        """Consumes p when a delta is returned (its samples are moved into the result)."""
        names = [t for t, _u in pprof.sample_type_names(p)]
        cum = [i for i, t in enumerate(names) if t in self.cum_names]
        st = p.string_table
        # location id -> stable key: the address, or function names + lines when there is none
        fn_names = {f.id: st[f.name] for f in p.function}
        loc_key: dict[int, Any] = {}
        for loc in p.location:
            loc_key[loc.id] = loc.address or tuple((fn_names.get(ln.function_id, ""), ln.line) for ln in loc.line)
        main = p.mapping[0] if p.mapping else None
        ident = identity + ((main.memory_start, st[main.filename], st[main.build_id]) if main is not None else ())

        cur: dict[int, list[int]] = {}
        rep: dict[int, Any] = {}
        ncols = len(names)
        lk = loc_key.__getitem__
        for s in p.sample:
            if s.label:
                lab = tuple((st[lb.key], st[lb.str], lb.num) for lb in s.label)
                k = hash((tuple(map(lk, s.location_id)), lab))
            else:
                k = hash(tuple(map(lk, s.location_id)))
            row = cur.get(k)
            if row is None:
                cur[k] = list(s.value)
                rep[k] = s
            else:
                for i in range(ncols):
                    row[i] += s.value[i]

        dropped = 0
        if len(cur) > self.max_stacks:
            # keep the heaviest stacks by the first cumulative column; the rest are not tracked
            c0 = cum[0] if cum else 0
            keep = sorted(cur, key=lambda k: cur[k][c0], reverse=True)[: self.max_stacks]
            dropped = len(cur) - len(keep)
            cur = {k: cur[k] for k in keep}

        new_state = {k: tuple(row[i] for i in cum) for k, row in cur.items()}
        prev = self.prev
        first = prev is None
        restarted = not first and self.identity != ident
        if not first and not restarted and prev is not None:
            restarted = self._looks_restarted(prev, new_state)
        if first or restarted:
            self.prev, self.identity, self.prev_time = new_state, ident, p.time_nanos
            return DeltaResult(None, "baseline" if first else "restart", 0, dropped)

        assert prev is not None
        clamped = 0
        zero = (0,) * len(cum)
        keep = []
        pairs = list(enumerate(cum))
        for k, row in cur.items():
            old = prev.get(k, zero)
            neg = False
            for j, i in pairs:
                d = row[i] - old[j]
                if d < 0:
                    d = 0
                    neg = True
                row[i] = d
            clamped += neg
            if not any(row):
                continue
            r = rep[k]  # the dump's own sample, rewritten in place: no per-sample copy in Python
            r.value[:] = row
            keep.append(r)
        out = pb.Profile()
        samples = list(p.sample) if len(keep) == len(p.sample) else keep
        del p.sample[:]
        out.CopyFrom(p)
        out.sample.extend(samples)
        if self.prev_time and p.time_nanos > self.prev_time:
            out.time_nanos = self.prev_time
            out.duration_nanos = p.time_nanos - self.prev_time
        self.prev, self.prev_time = new_state, p.time_nanos
        return DeltaResult(out, "delta", clamped, dropped)

    @staticmethod
    def _looks_restarted(prev: dict[int, tuple[int, ...]], cur: dict[int, tuple[int, ...]]) -> bool:
        if not prev:
            return False
        ncum = len(next(iter(prev.values())))
        for j in range(ncum):
            if sum(v[j] for v in cur.values()) < sum(v[j] for v in prev.values()):
                return True
        common = down = 0
        for k, old in prev.items():
            new = cur.get(k)
            if new is None:
                continue
            common += 1
            if new[0] < old[0]:
                down += 1
        return common >= 4 and down * 2 > common
