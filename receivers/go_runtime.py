"""`go_runtime` receiver: every GC cycle with its stop-the-world pauses, and goroutine creations/exits.

Uprobes on the Go runtime (bpf/go_runtime.c), attached once per binary and shared by all its
processes; per-process facts (which registers carry what for this Go version) live in a BPF map.

Functions probed, Go 1.19 to 1.27:
  runtime.stopTheWorldWithSema (entry: pause start; reason in AX since 1.21),
  runtime.startTheWorldWithSema (entry: the runtime's own pause start since 1.22; every RET: the
  returned "world started" stamp ends the pause), runtime.gcMarkTermination (entry: the next
  mark-termination restart ends the cycle), runtime.gcStart / runtime.gcMarkDone (entry and RETs: the
  pause kind on Go < 1.21, which passes no reason), runtime.newproc1 (entry: a goroutine is created;
  callerpc in CX names the function with the `go` statement), runtime.goexit0 (entry, on g0: one ends),
  runtime.gcAssistAlloc (optional, entry and RETs: mark-assist time).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from gotel.component.contract import ComponentConfig, Consumer, Context, Receiver, ReceiverFactory
from gotel.config.types import Duration
from gotel.discovery import DiscoveryConfig, ProcessInfo
from gotel.discovery.procfs import exe_path_for_reading
from gotel.ebpf.targets import body_address, entry_site, ret_addresses
from gotel.golang import GoAnalysisError, GoBinary, analyze
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.builders import LogsBuilder, MetricsBuilder, log2_bounds_seconds
from gotel.receiverhelper.periodic import TargetedReceiver

SCOPE = "gotel/receiver/go_runtime"
SLOTS = 40
F_STW_REASON = 1
F_WORLDSTOP = 2
KINDS = {0: "other", 1: "sweep_termination", 2: "mark_termination"}
MIN_GO = 17  # register ABI


class Config(ComponentConfig):
    collection_interval: Duration = Field(10.0, gt=0, description="time between two readings of the maps")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    gc_logs: bool = Field(True, description="one log record per GC cycle (when a logs pipeline uses this receiver)")
    goroutine_creators: bool = Field(True, description="goroutine creations per creating function")
    mark_assist: bool = Field(False, description="time goroutines spend in GC mark assist (a hot path: off by default)")


class _GcEvent(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("sweep_ns", ctypes.c_uint64),
        ("mark_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("stws", ctypes.c_uint32),
    ]


@dataclass
class GcCycle:
    pid: int
    start_ns: int  # wall clock
    end_ns: int
    sweep_termination_ns: int
    mark_termination_ns: int
    pauses: int


@dataclass
class _Binary:
    key: Any
    path: str
    version: str | None
    flags: int
    gb: GoBinary | None = None
    pids: set[int] = field(default_factory=set)
    # live goroutine count: runtime.allgs and the g fields it needs (None: no symbols/DWARF)
    allgs: int | None = None
    g_status: int | None = None
    g_startpc: int | None = None

    def func_at(self, pc: int) -> str | None:
        f = self.gb.functions.at(pc) if self.gb is not None else None
        return f.name if f is not None else None


class NotTraceable(Exception):
    """The binary cannot be probed (not Go, too old, symbols missing): said once, never guessed."""


class GoRuntimeReceiver(TargetedReceiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        super().__init__(sinks, ctx, cfg.collection_interval, cfg.discovery)
        self.cfg = cfg
        self.binaries: dict[Any, _Binary] = {}
        self.by_pid: dict[int, _Binary] = {}
        self._gcs: list[GcCycle] = []
        self._lock = threading.Lock()
        self._last_gcs: dict[int, tuple[float, int]] = {}
        self._lost: Any = None
        self._untraceable = ctx.telemetry.counter(
            "go_runtime_untraceable_processes", "Selected processes the go_runtime receiver cannot probe.", ("reason",)
        )

    # ---- life cycle ----

    def setup(self) -> None:
        from gotel.ebpf.program import BpfProgram, LostCounter

        self.prog = BpfProgram("go_runtime.c")
        self.prog.open_ring_buffer("gc_events", self._on_gc)
        self._lost = LostCounter(self.prog, self.ctx.telemetry, "go_runtime")
        self._start_ns = time.time_ns()

    def _attach(self, info: ProcessInfo) -> _Binary:
        from gotel.ebpf.program import BinaryKey

        key = BinaryKey(info.dev, info.ino)
        b = self.binaries.get(key)
        if b is not None:
            return b
        path = exe_path_for_reading(info.pid)
        try:
            gb = analyze(path)
            vt = gb.version_tuple
        except GoAnalysisError as e:
            raise NotTraceable(str(e)) from e
        if vt is None:
            raise NotTraceable("no Go build info")
        minor = vt[1]
        if minor < MIN_GO:
            raise NotTraceable(f"{gb.go_version} is older than go1.{MIN_GO} (no register ABI)")

        def entry(name: str) -> int:
            # past the stack-check prologue: a probe at the entry fires twice when the stack grows
            a = body_address(gb, name)
            if a is None:
                raise NotTraceable(f"{name} not found in the {gb.go_version} binary")
            return a

        def g0_entry(name: str) -> int:
            # Per-goroutine functions run on the system stack, whose check never sends them to morestack:
            # the check's own branch is a site the kernel emulates (on Go <= 1.20 the instruction after
            # it is single-stepped, 10+ us a goroutine in a VM) and it fires once per call there.
            at = entry_site(gb, name)
            return at[0] if at is not None else entry(name)

        # goexit0 (reached through mcall, on g0) rather than goexit1 (on the exiting goroutine's stack)
        exit_fn = "runtime.goexit0" if gb.functions.get("runtime.goexit0") is not None else None

        def rets(name: str) -> list[int]:
            r = ret_addresses(gb, name)
            if not r:
                raise NotTraceable(f"no RET found in {name}")
            return r

        flags = (F_STW_REASON if minor >= 21 else 0) | (F_WORLDSTOP if minor >= 22 else 0)
        plan: list[tuple[int, str]] = [
            (entry("runtime.stopTheWorldWithSema"), "stw_stop"),
            (entry("runtime.startTheWorldWithSema"), "stw_start_entry"),
            (entry("runtime.gcMarkTermination"), "mark_termination"),
            (g0_entry("runtime.newproc1"), "newproc1"),
            (g0_entry(exit_fn) if exit_fn else entry("runtime.goexit1"), "goexit1"),
        ]
        plan += [(a, "stw_start_ret") for a in rets("runtime.startTheWorldWithSema")]
        if minor < 21:
            plan += [(entry("runtime.gcStart"), "gcstart_entry"), (entry("runtime.gcMarkDone"), "gcmarkdone_entry")]
            plan += [(a, "gcstart_ret") for a in rets("runtime.gcStart")]
            plan += [(a, "gcmarkdone_ret") for a in rets("runtime.gcMarkDone")]
        if self.cfg.mark_assist:
            plan += [(entry("runtime.gcAssistAlloc"), "assist_entry")]
            plan += [(a, "assist_ret") for a in rets("runtime.gcAssistAlloc")]
        try:
            for addr, prog_fn in plan:
                self.prog.attach_uprobe(path, addr, prog_fn, key)
        except Exception:
            self.prog.detach_binary(key)
            raise
        b = _Binary(key=key, path=path, version=gb.go_version, flags=flags, gb=gb)
        if (why := self._goroutine_layout(b)) is not None:
            self.per_binary.note(logging.INFO, info.exe, info.pid, why)
        self.binaries[key] = b
        self.per_binary.note(logging.INFO, info.exe, info.pid,
                             f"{len(plan)} probes ({gb.go_version}, functions from {gb.functions.source})")
        return b

    def _goroutine_layout(self, b: _Binary) -> str | None:
        """Where runtime.allgs is and the offsets of g.atomicstatus/g.startpc, for the live count."""
        assert b.gb is not None
        try:
            b.g_status = b.gb.struct_offset("runtime.g", "atomicstatus")
            b.g_startpc = b.gb.struct_offset("runtime.g", "startpc")
            symtab = b.gb.image.elf.get_section_by_name(".symtab")
            if symtab is None:
                return None
            syms = symtab.get_symbol_by_name("runtime.allgs")  # type: ignore[attr-defined]  # pyelftools types the section as Section; it is a SymbolTableSection here
            if syms:
                b.allgs = int(syms[0]["st_value"])
        except GoAnalysisError as e:
            return f"no live goroutine count: {e}"
        return None

    def live_goroutines(self, pid: int) -> int | None:
        """Goroutines alive now, as runtime.NumGoroutine counts them: every g in runtime.allgs that is
        neither idle nor dead, less system goroutines (started in a runtime.* function other than
        runtime.main). Read from the process's memory; None without symbols and DWARF."""
        b = self.by_pid.get(pid)
        if b is None or b.allgs is None or b.g_status is None or b.g_startpc is None or b.gb is None:
            return None
        import struct

        try:
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                mem.seek(b.allgs)
                ptr, n, _cap = struct.unpack("<QQQ", mem.read(24))
                if n > 1_000_000:
                    return None
                mem.seek(ptr)
                gs = struct.unpack(f"<{n}Q", mem.read(8 * n))
                live = 0
                for g in gs:
                    mem.seek(g + b.g_status)
                    status = struct.unpack("<I", mem.read(4))[0] & ~0x1000  # _Gscan bit
                    if status in (0, 6):  # _Gidle, _Gdead
                        continue
                    mem.seek(g + b.g_startpc)
                    f = b.gb.functions.at(struct.unpack("<Q", mem.read(8))[0])
                    if f is not None and f.name.startswith("runtime.") and f.name != "runtime.main":
                        continue
                    live += 1
                return live
        except (OSError, struct.error):
            return None

    def on_added(self, info: ProcessInfo) -> None:
        if self.prog is None:
            return
        try:
            b = self._attach(info)
        except NotTraceable as e:
            self._untraceable.labels(str(e).split(":")[0][:60]).inc()
            self.per_binary.note(logging.WARNING, info.exe, info.pid, f"not tracing: {e}")
            return
        b.pids.add(info.pid)
        self.by_pid[info.pid] = b
        leaf = self.prog.table("procs").Leaf()
        leaf.flags = b.flags
        self.prog.table("procs")[ctypes.c_uint32(info.pid)] = leaf

    def on_removed(self, pid: int) -> None:
        if self.prog is None:
            return
        for name in ("procs", "gcstate", "counts"):
            self.prog.table(name).pop(ctypes.c_uint32(pid), None)
        b = self.by_pid.pop(pid, None)
        if b is not None:
            b.pids.discard(pid)
            if not b.pids:
                self.prog.detach_binary(b.key)
                self.binaries.pop(b.key, None)
        self._last_gcs.pop(pid, None)

    # ---- events ----

    def _on_gc(self, addr: int, size: int) -> None:
        if size < ctypes.sizeof(_GcEvent):
            return
        e = _GcEvent.from_address(addr)
        off = time.time_ns() - time.monotonic_ns()
        with self._lock:
            self._gcs.append(GcCycle(pid=e.tgid, start_ns=e.start + off if e.start else 0, end_ns=e.end + off,
                                     sweep_termination_ns=e.sweep_ns, mark_termination_ns=e.mark_ns, pauses=e.stws))

    def _consume(self) -> None:
        if self.prog is not None:
            self.prog.consume()  # BpfProgram serialises consumers

    def drain(self) -> list[Batch]:
        self._consume()
        return []

    # ---- reading ----

    def read_counts(self, pid: int) -> dict[str, Any]:
        """Cumulative figures for one process since it was selected (summed over CPUs)."""
        c = self.prog.table("counts").get(ctypes.c_uint32(pid))
        out: dict[str, Any] = {"gcs": 0, "created": 0, "exited": 0, "stw_ns": [0, 0, 0], "stw_count": [0, 0, 0],
                               "assist_ns": 0, "assists": 0}
        if c is None:
            return out
        for v in c:
            out["gcs"] += v.gcs
            out["created"] += v.created
            out["exited"] += v.exited
            out["assist_ns"] += v.assist_ns
            out["assists"] += v.assists
            for i in range(3):
                out["stw_ns"][i] += v.stw_ns[i]
                out["stw_count"][i] += v.stw_count[i]
        return out

    def creators(self, pid: int) -> dict[str, int]:
        b = self.by_pid.get(pid)
        out: dict[str, int] = {}
        for k, v in self.prog.table("creators").items():
            if k.tgid != pid:
                continue
            name = (b.func_at(k.pc) if b else None) or f"0x{k.pc:x}"
            out[name] = out.get(name, 0) + int(sum(v))
        return out

    def gc_cycles(self) -> list[GcCycle]:
        """GC cycles seen since the last call (drains the ring buffer first)."""
        self._consume()
        with self._lock:
            out, self._gcs = self._gcs, []
        return out

    def _resource(self, pid: int) -> dict[str, Any]:
        res = super()._resource(pid)
        b = self.by_pid.get(pid)
        if b is not None and b.version:
            res["process.runtime.name"] = "go"
            res["process.runtime.version"] = b.version
        return res

    def collect(self) -> list[Batch]:
        if self.prog is None:
            return []
        cycles = self.gc_cycles()
        if self._lost is not None:
            self._lost.update()
        mb = MetricsBuilder(SCOPE, time_ns=time.time_ns())
        start = self._start_ns
        hist: dict[tuple[int, int], list[int]] = {}
        for k, v in self.prog.table("pauses").items():
            hist.setdefault((k.tgid, k.kind), [0] * SLOTS)[min(k.slot, SLOTS - 1)] += int(sum(v))
        bounds = log2_bounds_seconds(SLOTS - 1)
        now = time.monotonic()
        for pid in sorted(self.by_pid):
            res = self._resource(pid)
            c = self.read_counts(pid)
            mb.sum(res, "go.gc.cycles", c["gcs"], unit="{gc_cycle}", start=start,
                   desc="Completed GC cycles (mark termination finished).")
            last = self._last_gcs.get(pid)
            if last is not None and now > last[0]:
                mb.gauge(res, "go.gc.cycle.rate", (c["gcs"] - last[1]) / (now - last[0]), unit="{gc_cycle}/s",
                         desc="GC cycles per second over the last collection interval.")
            self._last_gcs[pid] = (now, c["gcs"])
            for kind in (1, 2, 0):
                counts = hist.get((pid, kind))
                if counts is None:
                    continue
                name = "go.stw.pause.duration" if kind == 0 else "go.gc.pause.duration"
                attrs = {} if kind == 0 else {"go.gc.pause.phase": KINDS[kind]}
                mb.histogram(res, name, bounds=bounds, counts=counts, total=c["stw_ns"][kind] / 1e9, unit="s",
                             attributes=attrs, start=start,
                             desc="Stop-the-world pauses (GC: by phase; go.stw: for other reasons).")
            mb.sum(res, "go.goroutine.created", c["created"], unit="{goroutine}", start=start,
                   desc="Goroutines created (runtime.newproc1).")
            if self.cfg.goroutine_creators:
                for fn, n in self.creators(pid).items():
                    mb.sum(res, "go.goroutine.created.by_function", n, unit="{goroutine}", start=start,
                           attributes={"code.function.name": fn},
                           desc="Goroutines created, by the function holding the go statement.")
            mb.sum(res, "go.goroutine.exited", c["exited"], unit="{goroutine}", start=start,
                   desc="Goroutines that returned or called runtime.Goexit (runtime.goexit0).")
            live = self.live_goroutines(pid)
            if live is not None:
                mb.sum(res, "go.goroutine.count", live, unit="{goroutine}", monotonic=False,
                       desc="Live goroutines (runtime.NumGoroutine's count), read from the process's memory.")
            mb.sum(res, "go.goroutine.net_change", c["created"] - c["exited"], unit="{goroutine}",
                   monotonic=False, start=start,
                   desc="Goroutines created minus exited since the receiver started tracing the process.")
            if self.cfg.mark_assist:
                mb.sum(res, "go.gc.assist.time", c["assist_ns"] / 1e9, unit="s", start=start,
                       desc="Time goroutines spent assisting the GC mark phase.")
        out: list[Batch] = [mb.batch()]
        if self.cfg.gc_logs and cycles:
            lb = LogsBuilder(SCOPE)
            for g in cycles:
                if g.pid not in self.by_pid:
                    continue
                lb.add(
                    self._resource(g.pid),
                    ts=g.start_ns or g.end_ns,
                    body=(f"GC cycle: {(g.end_ns - g.start_ns) / 1e6:.2f} ms, stop-the-world "
                          f"sweep termination {g.sweep_termination_ns / 1e3:.0f} us, "
                          f"mark termination {g.mark_termination_ns / 1e3:.0f} us"),
                    event_name="go.gc.cycle",
                    attributes={
                        "go.gc.start": g.start_ns,
                        "go.gc.end": g.end_ns,
                        "go.gc.duration": (g.end_ns - g.start_ns) / 1e9 if g.start_ns else None,
                        "go.gc.pause.sweep_termination": g.sweep_termination_ns / 1e9,
                        "go.gc.pause.mark_termination": g.mark_termination_ns / 1e9,
                        "go.gc.pause.count": g.pauses,
                    },
                )
            out.append(lb.batch())
        return out


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    return GoRuntimeReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="go_runtime",
    config=Config,
    signals=frozenset({Signal.METRICS, Signal.LOGS}),
    description="GC cycles with stop-the-world pauses (as events and histograms) and goroutine creations/exits "
    "per process, from uprobes on the Go runtime",
    create=create,
    needs_bpf=True,
    malloc_arenas=1,  # a few GC events a second: nothing allocates at a high rate
)
