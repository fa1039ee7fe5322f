"""The inputs of the diagnosis rules: what was observed of one process over one window.

A ``Snapshot`` is filled by ``gotel.diagnose.gather`` (``gotel diagnose``) or by the ``diagnosis``
connector (live signals); rules only read it. A signal that could not be observed is None (or empty)
and its reason is in ``missing``, so a rule that needs it says why it did not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gotel.host.procfs import CgroupStats
from gotel.proto import pprof_profile_pb2 as pb
from gotel.receivers.pprof.contention import Site
from gotel.receivers.pprof.goroutines import Goroutine


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


@dataclass
class GoroutineDump:
    t: float
    goroutines: list[Goroutine]


@dataclass
class SlowSyscall:
    """One slow syscall seen by the sched receiver (eBPF), with the Go function that made it."""

    syscall: str
    duration_s: float
    function: str
    file: str = ""
    line: int = 0


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
    goroutine_dumps: list[GoroutineDump] = field(default_factory=list)
    slow_syscalls: list[SlowSyscall] | None = None
    rpcs: list[RpcStat] | None = None
    retransmits: dict[str, int] | None = None  # peer -> retransmitted segments in the window
    missing: dict[str, str] = field(default_factory=dict)  # signal -> why it was not observed
