"""`sched` receiver: run-queue latency, off-CPU time and slow syscalls of selected processes.

Tracepoints (sched_wakeup/_new, sched_switch, raw_syscalls) aggregate into per-CPU kernel maps
(bpf/sched.c); every collection interval this reads the cumulative values (cost independent of the
event rate) and emits them per process and per cgroup. Slow syscalls (>= threshold, 10 ms by
default: where Go's sysmon hands the P away) also go out as log records with the symbolised user
stack, the slowest ones first, at most `max_slow_syscall_logs` per interval, and every one of them is
counted by the Go function that made it (the diagnosis connector's slow_syscall rule).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import Field, field_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Receiver, ReceiverFactory, RenamedKey
from gotel.config.types import Duration, format_duration
from gotel.discovery import DiscoveryConfig, ProcessInfo
from gotel.discovery.procfs import exe_path_for_reading
from gotel.host import procfs
from gotel.host.syscalls_x86_64 import NUMBERS
from gotel.host.syscalls_x86_64 import name as syscall_name
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.builders import LogsBuilder, MetricsBuilder, log2_bounds_seconds
from gotel.receiverhelper.periodic import TargetedReceiver

SCOPE = "gotel/receiver/sched"
SLOTS = 40
MAYBE_MASK = 0xFFFF  # bpf/sched.c MAYBE_MASK: the "maybe traced" filter is indexed by tid & MAYBE_MASK
TRACEFS = "/sys/kernel/tracing"

# Syscalls the Go runtime (and most programs) park in on purpose: idle Ms in futex, the netpoller in
# epoll_pwait, sysmon in nanosleep. Reported as "slow" they would drown the calls that block a P.
# Go's own nanosleep (sysmon's runtime.usleep) is told apart by where it is called from (PARK_FUNCS),
# so that a user's time-bounded nanosleep in a syscall still counts.
DEFAULT_IGNORED = [
    "futex", "futex_wait", "futex_waitv", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "rt_sigtimedwait", "rt_sigsuspend", "pause", "wait4", "waitid",
]
PARK_FUNCS = ("runtime.usleep", "runtime.usleep_no_g", "runtime.futex", "runtime.epollwait")


class Config(ComponentConfig):
    renamed_keys = MappingProxyType({"slow_syscall_threshold_ms": RenamedKey("slow_syscall_threshold", "ms")})
    collection_interval: Duration = Field(10.0, gt=0, description="time between two readings of the maps")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    slow_syscalls: bool = Field(
        True,
        description="track syscalls to find slow ones: two raw tracepoints on every syscall of the node "
        "(~100-200 ns each on a traced thread): the costliest part of this receiver on syscall-heavy loads",
    )
    slow_syscall_threshold: Duration = Field(0.01, gt=0, description="a syscall at least this long is slow")
    ignore_syscalls: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORED))
    max_slow_syscall_logs: int = Field(20, ge=0, description="log records per interval, slowest first")
    per_cgroup: bool = Field(True, description="also emit cgroup-level run-queue histograms")

    @field_validator("ignore_syscalls")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in NUMBERS]
        if bad:
            raise ValueError(f"unknown x86-64 syscall name(s): {', '.join(bad)}")
        return v


def blocked_mask(fmt_path: str = f"{TRACEFS}/events/sched/sched_switch/format") -> int:
    """The prev_state bits meaning "blocked", from the kernel's own print format of sched_switch."""
    with open(fmt_path) as f:
        text = f.read()
    flags = re.findall(r'\{\s*(0x[0-9a-fA-F]+),\s*"[A-Za-z]"\s*\}', text)
    if not flags:
        raise RuntimeError(f"cannot read task state flags from {fmt_path}")
    mask = 0
    for x in flags:
        mask |= int(x, 16)
    return mask


class _SlowEvent(ctypes.Structure):
    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("dur", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("nr", ctypes.c_uint32),
        ("stackid", ctypes.c_int32),
        ("cgid", ctypes.c_uint64),
    ]


@dataclass
class SlowSyscall:
    time_ns: int
    duration_ns: int
    pid: int
    tid: int
    syscall: str
    stack: list[str]


class CgroupNames:
    """cgroup id (kernfs inode of the v2 directory) -> path, by walking the cgroup2 mount on a miss."""

    def __init__(self) -> None:
        m = procfs.CgroupMounts.load()
        self.root = m.v2[0] if m.v2 else None
        self._names: dict[int, str] = {}
        self._last_walk = 0.0

    def name(self, cgid: int) -> str | None:
        if cgid in self._names:
            return self._names[cgid]
        if self.root is None or time.monotonic() - self._last_walk < 5.0:
            return None
        self._last_walk = time.monotonic()
        for d, _, _ in os.walk(self.root):
            try:
                ino = os.stat(d).st_ino
            except OSError:
                continue
            self._names[ino] = "/" + os.path.relpath(d, self.root).removeprefix(".")
        return self._names.get(cgid)

    def id_of(self, path: str) -> int:
        if self.root is None:
            return 0
        try:
            return os.stat(os.path.join(self.root, path.lstrip("/"))).st_ino
        except OSError:
            return 0


def _percpu_sum(values: Any, fields: tuple[str, ...] | None = None) -> Any:
    if fields is None:
        return int(sum(values))
    return tuple(int(sum(getattr(v, f) for v in values)) for f in fields)


class SchedReceiver(TargetedReceiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        super().__init__(sinks, ctx, cfg.collection_interval, cfg.discovery)
        self.cfg = cfg
        self.cgroups: CgroupNames | None = None
        self._slow: list[SlowSyscall] = []
        self._slow_lock = threading.Lock()
        # (pid, syscall, calling Go function) -> (calls, ns) of every slow-syscall event read
        self._callers: dict[tuple[int, str, str], tuple[int, int]] = {}
        self._go: dict[int, tuple[Any, int]] = {}  # pid -> (GoBinary, load bias) for Go symbols
        self._lost: Any = None
        self._dropped_logs = ctx.telemetry.counter(
            "sched_slow_syscall_logs_dropped", "Slow-syscall log records beyond max_slow_syscall_logs.", ()
        )

    # ---- life cycle ----

    def setup(self) -> None:
        from gotel.ebpf.program import BpfProgram, LostCounter

        self.cgroups = CgroupNames()
        ignored = " || ".join(f"(nr) == {NUMBERS[n]}" for n in sorted(set(self.cfg.ignore_syscalls))) or "0"
        defines: dict[str, Any] = {
            "SLOW_NS": f"{round(self.cfg.slow_syscall_threshold * 1e9)}ULL",
            "BLOCKED_MASK": hex(blocked_mask()),
            "IGNORED(nr)": f"({ignored})",
        }
        if self.cfg.slow_syscalls:
            defines["SLOW_SYSCALLS"] = 1
        self.prog = BpfProgram("sched.c", defines=defines)
        self.prog.open_ring_buffer("slow_events", self._on_slow)
        self._lost = LostCounter(self.prog, self.ctx.telemetry, "sched")
        self._start_ns = time.time_ns()

    def on_added(self, info: ProcessInfo) -> None:
        if self.prog is None:
            return
        self.prog.table("targets")[ctypes.c_uint32(info.pid)] = ctypes.c_uint8(1)
        threads = self.prog.table("threads")
        cgid = 0
        try:
            paths = procfs.proc_cgroups(info.pid)
            if "" in paths and self.cgroups is not None:
                cgid = self.cgroups.id_of(paths[""])
        except procfs.ProcessGone:
            return
        try:
            tids = procfs.thread_ids(info.pid)
        except procfs.ProcessGone:
            return
        self._set_park_ranges(info)
        maybe = self.prog.table("maybe")
        for tid in tids:
            maybe[ctypes.c_uint32(tid & MAYBE_MASK)] = ctypes.c_uint8(1)  # before `threads`: see bpf/sched.c
            leaf = threads.Leaf()
            leaf.tgid = info.pid
            leaf.cgid = cgid
            threads[ctypes.c_uint32(tid)] = leaf

    def _set_park_ranges(self, info: ProcessInfo) -> None:
        if not info.is_go:
            return
        from gotel.golang import GoAnalysisError, analyze

        path = exe_path_for_reading(info.pid)
        try:
            gb = analyze(path)
            bias = load_bias(info.pid, path)
        except (GoAnalysisError, OSError) as e:
            self.per_binary.note(logging.INFO, info.exe, info.pid,
                                 f"no functions ({e}): Go's own sleeps may show as slow syscalls")
            return
        self._go[info.pid] = (gb, bias)
        table = self.prog.table("park_ranges")
        leaf = table.Leaf()
        i = 0
        for name in PARK_FUNCS:
            f = gb.functions.get(name)
            if f is None or i >= len(leaf.lo):
                continue
            leaf.lo[i] = f.entry + bias
            leaf.hi[i] = f.entry + bias + max(f.size, 1)
            i += 1
        if i:
            table[ctypes.c_uint32(info.pid)] = leaf

    def on_removed(self, pid: int) -> None:
        if self.prog is None:
            return
        self.prog.table("targets").pop(ctypes.c_uint32(pid), None)
        self.prog.table("park_ranges").pop(ctypes.c_uint32(pid), None)
        self._go.pop(pid, None)
        threads = self.prog.table("threads")
        for k, v in list(threads.items()):
            if v.tgid == pid:
                threads.pop(k, None)

    # ---- events ----

    def _on_slow(self, addr: int, size: int) -> None:
        if size < ctypes.sizeof(_SlowEvent):
            return
        e = _SlowEvent.from_address(addr)
        stack = self._stack(e.stackid, e.tgid)
        boot_to_wall = time.time_ns() - time.monotonic_ns()
        ev = SlowSyscall(
            time_ns=e.ts + boot_to_wall - int(e.dur),
            duration_ns=int(e.dur),
            pid=e.tgid,
            tid=e.tid,
            syscall=syscall_name(e.nr),
            stack=stack,
        )
        with self._slow_lock:
            self._slow.append(ev)

    def _stack(self, stackid: int, pid: int) -> list[str]:
        """Frames named with the binary's own Go function table (works on stripped binaries through
        .gopclntab); BCC's symboliser for anything else (C libraries, non-Go programs)."""
        if stackid < 0 or self.prog is None:
            return []
        b = self.prog.bpf
        go = self._go.get(pid)
        out = []
        try:
            for addr in self.prog.table("stacks").walk(stackid):
                f = go[0].functions.at(addr - go[1]) if go is not None else None
                if f is not None:
                    out.append(f.name)
                    continue
                sym = b.sym(addr, pid, show_module=False, show_offset=False)
                out.append(sym.decode(errors="replace") if isinstance(sym, bytes) else str(sym))
        except Exception:  # the stack was evicted or the process is gone
            return out
        return out

    def _consume(self) -> None:
        if self.prog is not None:
            self.prog.consume()  # BpfProgram serialises consumers

    def drain(self) -> list[Batch]:
        self._consume()
        return []

    # ---- collection ----

    def read_maps(self) -> dict[str, Any]:
        """Cumulative figures per (process, cgroup) and per process: live threads plus exited ones."""
        hist: dict[tuple[int, int], list[int]] = {}
        totals: dict[tuple[int, int], tuple[int, int]] = {}
        off: dict[tuple[int, int], tuple[int, int]] = {}

        def add(tgid: int, cgid: int, f: Any) -> None:
            h = hist.setdefault((tgid, cgid), [0] * SLOTS)
            for i in range(SLOTS):
                h[i] += f.hist[i]
            ns, n = totals.get((tgid, cgid), (0, 0))
            totals[(tgid, cgid)] = (ns + f.rq_ns, n + f.rq_count)
            for vol in (0, 1):
                ns, n = off.get((tgid, vol), (0, 0))
                off[(tgid, vol)] = (ns + f.off_ns[vol], n + f.off_count[vol])

        for _, v in self.prog.table("threads").items():
            add(v.tgid, v.cgid, v.f)
        for k, v in self.prog.table("dead").items():
            add(k.tgid, k.cgid, v)
        slow = {(k.tgid, k.nr): _percpu_sum(v, ("ns", "count")) for k, v in self.prog.table("sc_slow").items()}
        return {"hist": hist, "totals": totals, "off": off, "slow": slow}

    def runqueue_total_ns(self, pid: int) -> tuple[int, int]:
        m = self.read_maps()
        ns = sum(v[0] for (tg, _), v in m["totals"].items() if tg == pid)
        n = sum(v[1] for (tg, _), v in m["totals"].items() if tg == pid)
        return ns, n

    def collect(self) -> list[Batch]:
        if self.prog is None:
            return []
        self._consume()
        if self._lost is not None:
            self._lost.update()
        m = self.read_maps()
        mb = MetricsBuilder(SCOPE, time_ns=time.time_ns())
        bounds = log2_bounds_seconds(SLOTS - 1)
        start = self._start_ns
        per_proc: dict[int, tuple[list[int], int]] = {}
        per_cg: dict[int, tuple[list[int], int]] = {}
        for (tgid, cgid), counts in m["hist"].items():
            ns = m["totals"].get((tgid, cgid), (0, 0))[0]
            for agg, key in ((per_proc, tgid), (per_cg, cgid)):
                c, s = agg.get(key, ([0] * SLOTS, 0))
                agg[key] = ([a + b for a, b in zip(c, counts, strict=True)], s + ns)
        for tgid, (counts, ns) in per_proc.items():
            if tgid not in self.targets or not sum(counts):
                continue
            mb.histogram(
                self._resource(tgid), "process.sched.runqueue.latency", bounds=bounds, counts=counts,
                total=ns / 1e9, unit="s", start=start,
                desc="Time threads were runnable before they got a CPU (wake-up or preemption to on-CPU).",
            )
        if self.cfg.per_cgroup and self.cgroups is not None:
            for cgid, (counts, ns) in per_cg.items():
                if not sum(counts):
                    continue
                path = self.cgroups.name(cgid) or f"id:{cgid}"
                mb.histogram(
                    {"gotel.cgroup.path": path, "gotel.cgroup.id": cgid}, "container.sched.runqueue.latency",
                    bounds=bounds, counts=counts, total=ns / 1e9, unit="s", start=start,
                    desc="Run-queue latency of the selected processes' threads in this cgroup.",
                )
        for (tgid, vol), (ns, n) in m["off"].items():
            if tgid not in self.targets:
                continue
            typ = {"gotel.offcpu.type": "voluntary" if vol else "involuntary"}
            res = self._resource(tgid)
            mb.sum(res, "process.sched.offcpu.time", ns / 1e9, unit="s", attributes=typ, start=start,
                   desc="Time threads spent off CPU: blocked (voluntary) or preempted (involuntary).")
            mb.sum(res, "process.sched.offcpu.count", n, unit="{switch}", attributes=typ, start=start)
        for (tgid, nr), (ns, n) in m["slow"].items():
            if tgid not in self.targets:
                continue
            a = {"gotel.syscall.name": syscall_name(nr)}
            res = self._resource(tgid)
            mb.sum(res, "process.syscall.slow.count", n, unit="{syscall}", attributes=a, start=start,
                   desc=f"Syscalls that took at least {format_duration(self.cfg.slow_syscall_threshold)}.")
            mb.sum(res, "process.syscall.slow.time", ns / 1e9, unit="s", attributes=a, start=start)
        evs = self._take_slow()
        self._caller_metrics(evs, mb, start)
        out: list[Batch] = [mb.batch()]
        logs = self._slow_logs(evs)
        if logs is not None:
            out.append(logs)
        return out

    def _take_slow(self) -> list[SlowSyscall]:
        with self._slow_lock:
            evs, self._slow = self._slow, []
        return evs

    def _caller_metrics(self, evs: list[SlowSyscall], mb: MetricsBuilder, start: int) -> None:
        """Slow syscalls by the Go function that made them (every event read, not only the logged ones):
        the diagnosis connector's slow_syscall rule. At most MAX_CALLERS functions per process."""
        for e in evs:
            key = (e.pid, e.syscall, caller(e.stack))
            if key not in self._callers and sum(1 for k in self._callers if k[0] == e.pid) >= MAX_CALLERS:
                key = (e.pid, e.syscall, "(other)")
            n, ns = self._callers.get(key, (0, 0))
            self._callers[key] = (n + 1, ns + e.duration_ns)
        for key in [k for k in self._callers if k[0] not in self.targets]:
            del self._callers[key]
        for (pid, name, func), (n, ns) in self._callers.items():
            a = {"gotel.syscall.name": name, "code.function.name": func}
            res = self._resource(pid)
            mb.sum(res, "process.syscall.slow.caller.count", n, unit="{syscall}", attributes=a, start=start,
                   desc="Slow syscalls by the Go function that made them (ring-buffer events).")
            mb.sum(res, "process.syscall.slow.caller.time", ns / 1e9, unit="s", attributes=a, start=start)

    def _slow_logs(self, evs: list[SlowSyscall]) -> Batch | None:
        if not evs:
            return None
        evs.sort(key=lambda e: e.duration_ns, reverse=True)
        keep = evs[: self.cfg.max_slow_syscall_logs]
        if len(evs) > len(keep):
            self._dropped_logs.inc(len(evs) - len(keep))
        lb = LogsBuilder(SCOPE)
        for e in keep:
            func = caller(e.stack)
            lb.add(
                self._resource(e.pid),
                ts=e.time_ns,
                body=f"slow syscall {e.syscall}: {e.duration_ns / 1e6:.1f} ms in {func or '?'}",
                severity="WARN",
                event_name="gotel.syscall.slow",
                attributes={
                    "gotel.syscall.name": e.syscall,
                    "gotel.syscall.duration": e.duration_ns / 1e9,
                    "thread.id": e.tid,
                    "code.function.name": func,
                    "code.stacktrace": "\n".join(e.stack),
                },
            )
        return lb.batch()


def load_bias(pid: int, path: str) -> int:
    """Where the executable is mapped minus where it asks to be (0 unless built as PIE)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        lows = [seg["p_vaddr"] for seg in ELFFile(f).iter_segments() if seg["p_type"] == "PT_LOAD"]
    if not lows:
        return 0
    want = min(lows) & ~0xFFF
    exe = os.path.realpath(f"/proc/{pid}/exe")
    with open(f"/proc/{pid}/maps") as m:
        for line in m:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == exe and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16) - want
    return 0


MAX_CALLERS = 100


def caller(stack: list[str]) -> str:
    """The Go function that made the syscall: the innermost frame outside the runtime and syscall wrappers."""
    return next((f for f in stack if not _is_runtime_frame(f)), stack[0] if stack else "")


def _is_runtime_frame(fn: str) -> bool:
    return fn.startswith(("runtime.", "syscall.", "internal/runtime/", "runtime/internal/", "internal/poll."))


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    return SchedReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="sched",
    config=Config,
    signals=frozenset({Signal.METRICS, Signal.LOGS}),
    description="Run-queue latency, off-CPU time (voluntary/involuntary) and slow syscalls with Go "
    "stacks and counts by calling Go function, per process and cgroup, from sched/raw_syscalls tracepoints "
    "aggregated in the kernel",
    create=create,
    needs_bpf=True,
)
