"""Lock-contention summaries from mutex/block deltas: the lock sites that made goroutines wait most.

A site is the innermost frame outside runtime/sync (the code that took or released the lock), with
the primitive it was waiting on (the innermost frame, e.g. sync.(*Mutex).Lock or runtime.chanrecv1).
In a mutex profile the stack is the *unlocker's* (who held the lock too long); in a block profile it
is the waiter's. Rates are per second of wall time between the two dumps.
"""

from __future__ import annotations

from dataclasses import dataclass

from gotel.formats import pprof
from gotel.proto import pprof_profile_pb2 as pb

_INTERNAL = ("runtime.", "sync.", "sync/atomic.", "internal/", "syscall.")
# Waits caused by profiling itself (the CPU profile request sleeping for `seconds`, StopCPUProfile):
# gotel's own scrapes must not show up as the program's contention.
_PROFILER = ("net/http/pprof.", "runtime/pprof.")


@dataclass
class Site:
    function: str
    location: str  # file:line
    primitive: str
    contentions: int
    delay_ns: int
    delay_per_second: float = 0.0
    contentions_per_second: float = 0.0


def top_sites(p: pb.Profile, seconds: float, n: int) -> list[Site]:
    try:
        ci = pprof.sample_type_index(p, "contentions")
        di = pprof.sample_type_index(p, "delay")
    except KeyError:
        return []
    res = pprof.Resolver(p)
    sites: dict[tuple[str, str, str], Site] = {}
    for s in p.sample:
        frames = res.stack(s.location_id)
        if not frames:
            continue
        if any(f.function.startswith(_PROFILER) for f in frames):
            continue
        primitive = frames[0].function
        site = next((f for f in frames if not f.function.startswith(_INTERNAL)), frames[0])
        key = (site.function, f"{site.file}:{site.line}", primitive)
        cur = sites.get(key)
        if cur is None:
            sites[key] = Site(site.function, key[1], primitive, s.value[ci], s.value[di])
        else:
            cur.contentions += s.value[ci]
            cur.delay_ns += s.value[di]
    out = sorted(sites.values(), key=lambda x: x.delay_ns, reverse=True)[:n]
    if seconds > 0:
        for x in out:
            x.delay_per_second = x.delay_ns / 1e9 / seconds
            x.contentions_per_second = x.contentions / seconds
    return out
