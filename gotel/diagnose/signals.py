"""The inputs of the diagnosis rules: what was observed of one process over one window.

A ``Snapshot`` is filled by ``gotel.diagnose.gather`` (``gotel diagnose``) or by the ``diagnosis``
connector (live signals); rules only read it. A signal that could not be observed is None (or empty)
and its reason is in ``missing``, so a rule that needs it says why it did not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gotel.host.procfs import CgroupStats
from gotel.proto import pprof_profile_pb2 as pb
from gotel.receivers.pprof.contention import Site
from gotel.receivers.pprof.goroutines import Bucket, BucketKey, Goroutine, bucketize


@dataclass
class ProcSample:
    """One reading of /proc and the process's cgroup (the kernel's own counters)."""

    t: float  # seconds on the window's clock (time.monotonic)
    cpu_s: float | None = None  # utime + stime
    threads: int | None = None
    run_delay_ns: int | None = None  # schedstat: runnable, waiting for a CPU (summed over live threads)
    on_cpu_ns: int | None = None  # schedstat: on a CPU
    timeslices: int | None = None
    fds: dict[str, int] | None = None  # open fds by kind (procfs.fd_kinds)
    cgroup: CgroupStats | None = None
    node_busy_s: float | None = None  # /proc/stat: CPU time of the whole node that was not idle


_MEMSTAT = re.compile(r"^# (\w+) = (.*)$")


@dataclass
class MemStats:
    """runtime.MemStats as the program itself reports it (the trailer of /debug/pprof/heap?debug=1)."""

    t: float
    num_gc: int
    last_gc_unix_ns: int
    gc_cpu_fraction: float
    pause_total_ns: int
    pause_ns: list[int]  # circular buffer of the last 256 pauses, indexed by (NumGC+255) % 256
    pause_end_unix_ns: list[int]
    # without the ring (the pprof receiver's memstats metrics): the longest and summed pauses of the cycles
    # since the previous reading of the same program
    pause_max_ns: int | None = None
    pause_sum_ns: int | None = None

    def pauses_since(self, num_gc: int) -> list[int]:
        """Pauses of cycles num_gc+1 .. NumGC still in the ring (the last 256)."""
        ring = self.pause_ns
        if len(ring) != 256:
            return []
        return [ring[(n + 255) % 256] for n in range(max(num_gc + 1, self.num_gc - 255), self.num_gc + 1)]


def parse_memstats(text: str, t: float) -> MemStats | None:
    """runtime.MemStats from the trailer of /debug/pprof/heap?debug=1 (runtime/pprof writeHeapInternal)."""
    vals: dict[str, str] = {}
    for line in text.splitlines():
        m = _MEMSTAT.match(line)
        if m:
            vals[m.group(1)] = m.group(2)
    try:
        return MemStats(
            t=t,
            num_gc=int(vals["NumGC"]),
            last_gc_unix_ns=int(vals.get("LastGC", "0")),
            gc_cpu_fraction=float(vals["GCCPUFraction"]),
            pause_total_ns=int(vals.get("PauseTotalNs", "0")),
            pause_ns=[int(x) for x in vals["PauseNs"].strip("[]").split()],
            pause_end_unix_ns=[int(x) for x in vals.get("PauseEnd", "[]").strip("[]").split()],
        )
    except (KeyError, ValueError):
        return None


@dataclass
class GoroutineDump:
    """One goroutine?debug=2 dump: its goroutines, or (from the pprof receiver's group metrics) only its
    buckets, each with one member carrying the blamed frame, and the dump's total."""

    t: float
    goroutines: list[Goroutine]
    groups: dict[BucketKey, Bucket] | None = None
    total: int | None = None

    def buckets(self) -> dict[BucketKey, Bucket]:
        if self.groups is None:
            self.groups = bucketize(self.goroutines)
        return self.groups

    def count(self) -> int:
        return self.total if self.total is not None else len(self.goroutines)


@dataclass
class SlowSyscall:
    """Slow syscalls seen by the sched receiver (eBPF), with the Go function that made them: one event
    (``gotel diagnose``) or ``calls`` of them summed over the window (the diagnosis connector)."""

    syscall: str
    duration_s: float  # of all its calls
    function: str
    file: str = ""
    line: int = 0
    calls: int = 1


@dataclass
class RpcStat:
    """Calls of one gRPC method on one side in the window (from the go_ebpf receiver's spans)."""

    method: str
    kind: str  # "server" or "client"
    calls: int
    codes: dict[str, int] = field(default_factory=dict)  # status code name -> calls
    deadline_missed: int = 0  # own deadline expired before the answer
    downstream: str = ""  # the client call that used most of the budget, when both sides are traced
    downstream_share: float = 0.0


@dataclass
class Snapshot:
    pid: int
    target: dict[str, Any] = field(default_factory=dict)  # pid, comm, exe, go_version, pprof, container, pod
    start_unix: float = 0.0
    end_unix: float = 0.0
    duration_s: float = 0.0
    cpus: int = 1  # CPUs the process may run on (affinity)
    go_version: str | None = None
    gomaxprocs: int | None = None
    gomaxprocs_source: str = ""
    process_start_unix_ns: int | None = None
    fd_limit: int | None = None
    samples: list[ProcSample] = field(default_factory=list)
    memstats: list[MemStats] = field(default_factory=list)
    cpu_profile: pb.Profile | None = None
    allocs: pb.Profile | None = None  # delta over the window
    heap: pb.Profile | None = None  # in use at the end of the window
    mutex: pb.Profile | None = None  # delta over the window
    block: pb.Profile | None = None  # delta over the window
    profile_seconds: float = 0.0  # span of the mutex/block/allocs deltas
    lock_sites: list[Site] | None = None  # already summarised sites (the pprof receiver's contention metrics)
    # already summarised allocation sites over the window (the pprof receiver's allocs metrics):
    # (function, file, line, bytes allocated in the window)
    alloc_sites: list[tuple[str, str, int, int]] | None = None
    goroutine_dumps: list[GoroutineDump] = field(default_factory=list)
    slow_syscalls: list[SlowSyscall] | None = None
    slow_syscalls_window_s: float = 0.0  # the span they were summed over, when it is not the whole window
    rpcs: list[RpcStat] | None = None
    retransmits: dict[str, int] | None = None  # peer -> retransmitted segments in the window
    missing: dict[str, str] = field(default_factory=dict)  # signal -> why it was not observed
