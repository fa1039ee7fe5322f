"""The `go_ebpf` receiver: gRPC and net/http spans and RED metrics from uprobes on unmodified Go programs.

    receivers:
      go_ebpf:
        discovery: {exe_paths: ["*/grpcapp"]}
        legacy_grpc_status_code: false
        stitch_window: 500ms
        sampling: {fraction: 0.01, slow_threshold: 500ms}   # default: every call is a span
        tls: true              # gotel.tls.handshake.duration
        contexts: false        # context leak findings (logs) and gotel.context.leaked
        context_mode: sampled  # or exact (every context: ~1.5 us each)
        inject_traceparent: false  # writes into the target's memory: read docs/go_ebpf.md first

See docs/go_ebpf.md for the attributes, versions handled and what degrades without DWARF.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, ReceiverFactory
from gotel.config.types import Duration
from gotel.discovery import DiscoveryConfig, ProcessAdded, ProcessInfo, ProcessRemoved, ProcessWatcher
from gotel.discovery.procfs import is_alive
from gotel.ebpf.streaming import RingBufferReceiver
from gotel.pdata.batch import Signal
from gotel.receivers.go_ebpf import probes as _probes  # noqa: F401  (registers probe specs for `gotel inspect`)
from gotel.receivers.go_ebpf.events import Assembler
from gotel.receivers.go_ebpf.flowcontrol import FLOW_TYPE_MIN, FlowControl
from gotel.receivers.go_ebpf.inject import INJECT_RESULTS, write_user_refused
from gotel.receivers.go_ebpf.layout import grpc_losses, traced_losses
from gotel.receivers.go_ebpf.red import KernelRed, SamplingConfig
from gotel.receivers.go_ebpf.selffilter import SelfFilter
from gotel.telemetry.logs import PerBinary


class Config(ComponentConfig):
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig, description="which Go processes to trace")
    grpc: bool = Field(True, description="trace gRPC servers and clients")
    http: bool = Field(True, description="trace net/http servers and clients")
    legacy_grpc_status_code: bool = Field(False, description="also emit the integer rpc.grpc.status_code")
    poll_interval: Duration = Field(
        0.25, gt=0, le=5,
        description="least time between ring-buffer drains while records flow (a drain of >= 2048 records "
                    "is followed by another at once; spans leave every flush_interval anyway)")
    flush_interval: Duration = Field(0.5, gt=0, description="time between pushes of spans")
    export_interval: Duration = Field(10.0, gt=0, description="time between pushes of metrics")
    stitch_window: Duration = Field(0.5, ge=0, description="how long a finished span waits for its remote parent")
    ring_buffer_pages: int = Field(2048, ge=1, description="ring buffer size in 4 KiB pages (a power of two)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description=(
        "spans kept, decided in BPF at each call's end: every error, deadline miss, slow call and call "
        "under a sampled traceparent, and `fraction` of the rest; RED metrics count every call"))
    flow_control: bool = Field(True, description="gRPC flow control and stream limits: stream-quota and "
                               "window waits, RST_STREAM, GOAWAY, refused streams, stream age (issue 19)")
    stream_quota_event_threshold: Duration = Field(
        0.01, ge=0, description="a client stream that waited at least this long for the connection's stream quota "
                                "gets a span event (gotel.grpc.stream_quota.wait) on its call's span")
    inject_traceparent: bool = Field(
        False, description="write a traceparent into outgoing HTTP/1.1 client requests that have none (appended "
                           "to the request's buffered headers with bpf_probe_write_user: writes into the traced "
                           "program's memory, needs CAP_SYS_ADMIN, logs a kernel warning, refused under "
                           "lockdown; HTTP/2 is not injected; docs/go_ebpf.md)")
    # ---- below the RPC (issue 19; receivers/go_ebpf/below.py, docs/go_ebpf_below.md)
    tls: bool = Field(True, description="gotel.tls.handshake.duration from uprobes on crypto/tls handshakes")
    contexts: bool = Field(
        False, description="context leak findings and gotel.context.leaked by creating site (context_mode "
                           "says how they are found and what it costs)")
    context_mode: Literal["sampled", "exact"] = Field(
        "sampled", description="sampled: the creation probe attached context_window every context_period, "
                               "cancels read from the contexts' memory, counts estimated (tens of ns per "
                               "context); exact: probes on every creation and cancel, exact (~1.5 us each)")
    context_window: Duration = Field(0.25, gt=0, description="sampled: how long each window traces creations")
    context_period: Duration = Field(5.0, gt=0, description="sampled: one window every this long")
    context_leak_age: Duration = Field(30.0, gt=0, description="a context older than this whose cancel func "
                                                                "was never called counts as leaked")
    context_max_tracked: int = Field(131072, ge=1024, le=4194304,
                                     description="live contexts tracked at once (kernel table; more are counted, "
                                                 "not tracked)")

    @model_validator(mode="after")
    def _window_fits(self) -> Config:
        if self.context_window >= self.context_period:
            raise ValueError(f"context_window ({self.context_window:g}s) must be shorter than context_period "
                             f"({self.context_period:g}s)")
        return self

    @field_validator("ring_buffer_pages")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"ring_buffer_pages must be a power of two, not {v}")
        return v


class GoEbpfReceiver(RingBufferReceiver[Config]):
    ring = "go_events"

    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        self.cfg = cfg
        self.sinks = sinks
        self.ctx = ctx
        self.log = ctx.logger or logging.getLogger(__name__)
        self.asm = Assembler(legacy_status_code=cfg.legacy_grpc_status_code, stitch_window=cfg.stitch_window)
        self.asm.self_filter = SelfFilter(ctx.telemetry)  # gotel's own scrapes are not the target's requests
        self.flow = FlowControl(self.asm, event_threshold=cfg.stream_quota_event_threshold)  # issue 19
        self.program: Any = None
        self.targets: Any = None
        self.watcher: ProcessWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._raw: list[bytes] = []
        self._images: dict[int, Any] = {}  # pid -> BinaryKey of the executable its probes were set up for
        self._lost: Any = None
        self._mono_to_unix = time.time_ns() - time.monotonic_ns()
        self.attached_pids: set[int] = set()
        self.events_seen = 0
        self._attach_failures = ctx.telemetry.counter(
            "go_ebpf_attach_failures", "Processes go_ebpf could not attach to.", ("reason",))
        self._unmatched_seen = [0, 0]
        self._unmatched = ctx.telemetry.counter(
            "go_ebpf_unmatched_calls", "Calls seen only in part (span lost): the end without the start "
            "(start_not_seen), or a goroutine that ended before the call's end (end_not_seen).", ("reason",))
        self._said: set[int] = set()  # plans (one per binary) whose losses were logged
        self.red: KernelRed | None = None
        self._sampled_seen = (0, 0)
        self._sampled = ctx.telemetry.counter(
            "go_ebpf_sampled_calls", "Calls that ended, by the sampling decision made in BPF (kept: a span; "
            "dropped: counted in the RED metrics only).", ("decision",))
        self._inject_seen = [0] * len(INJECT_RESULTS)
        self.inject_refused: str | None = None  # why the kernel refused inject_traceparent
        self._injections = ctx.telemetry.counter(
            "go_ebpf_traceparent_injections", "HTTP/1 client requests inject_traceparent wrote a traceparent "
            "into (injected), or skipped: no_room (the write buffer's free part was too small), header_present "
            "(the request had one), write_refused (the kernel refused the write), writer_unknown.", ("result",))
        self._degraded = ctx.telemetry.counter(
            "go_ebpf_degraded_processes", "Traced processes whose binary lacks DWARF (fewer attributes).", ())
        self.notes = PerBinary(self.log, "go_ebpf")  # per-process messages, summarised per binary
        # attaching and detaching, one at a time and off the event loop: BCC's probe table is not
        # thread-safe, and closing a process's probes waits ~0.1 s per RCU grace period
        self._attacher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="go_ebpf-attach")
        self.below: Any = None  # receivers/go_ebpf/below.Below: context and TLS probes, when configured

    async def start(self) -> None:
        from gotel.ebpf.goprobes import GoTargets
        from gotel.ebpf.program import BpfProgram, LostCounter
        from gotel.receivers.go_ebpf.layout import offset_names

        loop = asyncio.get_running_loop()
        defines = {"RINGBUF_PAGES": self.cfg.ring_buffer_pages}
        if self.cfg.inject_traceparent:
            self.inject_refused = await loop.run_in_executor(None, write_user_refused)
            if self.inject_refused:
                self.log.error("go_ebpf: inject_traceparent: %s; no traceparent is written (everything else is "
                               "traced)", self.inject_refused)
            else:
                defines["INJECT_TP"] = 1
        self.program = await loop.run_in_executor(None, lambda: BpfProgram("go_ebpf.c", defines=defines))
        if self.cfg.tls or self.cfg.contexts:
            from gotel.receivers.go_ebpf.below import Below, SamplingPlan

            sampling = None if self.cfg.context_mode == "exact" else SamplingPlan(
                self.cfg.context_window, self.cfg.context_period, run=self._attacher.submit)
            self.below = await loop.run_in_executor(None, lambda: Below(
                contexts=self.cfg.contexts, tls=self.cfg.tls, leak_age=self.cfg.context_leak_age, ring_pages=64,
                max_contexts=self.cfg.context_max_tracked, log=self.log, sampling=sampling))
            self.below.marker.mono_to_unix = self._mono_to_unix
        self.targets = GoTargets(self.program, offset_names())
        from gotel.receivers.go_ebpf.red import configure

        configure(self.program, self.cfg.sampling, self._mono_to_unix)
        self.red = KernelRed(self.program, self.asm)
        self.asm.kernel_metrics = True
        self.program.collect_ring_buffer(self.ring, self._raw)
        self._lost = LostCounter(self.program, self.ctx.telemetry, "go_ebpf")
        self.watcher = ProcessWatcher(self.cfg.discovery)
        await self.watcher.start()
        self._start_tasks()

    async def _watch(self) -> None:
        assert self.watcher is not None
        loop = asyncio.get_running_loop()
        async for ev in self.watcher.events():
            try:
                if isinstance(ev, ProcessAdded):
                    await loop.run_in_executor(self._attacher, self._add, ev.info)
                elif isinstance(ev, ProcessRemoved):
                    if self._same_image(ev.pid):
                        # Discovery reports an exec it had already seen (its /proc rescan can select the new
                        # image before the exec event is read) as remove + add. Dropping the pid's probes
                        # until the re-add (~10 ms of analysis) lost the calls made meanwhile, unrecorded.
                        # Checked again later in case the process was only on its way out.
                        loop.call_later(1.0, self._recheck, ev.pid)
                        continue
                    self._remove(ev.pid)
            except Exception:
                self.log.exception("go_ebpf: handling %s", ev)

    def _remove(self, pid: int) -> None:
        self._drain_once()
        self.targets.remove_process(pid, detach=lambda key: self._attacher.submit(self.program.detach_binary, key))
        if self.red is not None:
            self.red.forget(pid)  # its last counts first
        if self.below is not None:
            below = self.below
            below.remove(pid, detach=lambda key: self._attacher.submit(below.program.detach_binary, key))
        self.asm.remove_process(pid)
        self.attached_pids.discard(pid)
        self._images.pop(pid, None)

    def _recheck(self, pid: int) -> None:
        if self.program is not None and pid in self._images and not self._same_image(pid):
            try:
                self._remove(pid)
            except Exception:
                self.log.exception("go_ebpf: removing pid %d", pid)

    def _same_image(self, pid: int) -> bool:
        """pid is alive and still runs the binary it was attached with (so its probes and offsets apply)."""
        from gotel.ebpf.program import BinaryKey

        key = self._images.get(pid)
        if key is None:
            return False
        try:
            return BinaryKey.of(f"/proc/{pid}/exe") == key
        except OSError:
            return False  # exited (or a zombie: no exe any more)

    def trace_pid(self, pid: int, exe: str, service_name: str | None = None) -> None:
        """Registers a process by hand (selectors bypassed), e.g. one that is about to exec `exe`: its
        earliest calls are traced, which discovery (milliseconds after exec) can miss."""
        import os

        name = os.path.basename(exe)
        info = ProcessInfo(pid=pid, exe=exe, cmdline=[exe], is_go=True, service_name=service_name or name)
        # on the attach thread, as discovery's adds and removes are: BCC's probe table is not thread-safe, and
        # an attach made beside a detach there failed ("cannot attach uprobe, probe entry may not exist")
        self._attacher.submit(self._add, info, exe).result()

    def _add(self, info: ProcessInfo, exe_path: str | None = None) -> None:
        from gotel.receivers.go_ebpf.probes import plan_for

        exe = exe_path or f"/proc/{info.pid}/exe"
        if info.pid in self.attached_pids and exe_path is None:
            return  # registered by trace_pid before its exec
        try:
            plan = plan_for(exe, grpc=self.cfg.grpc, http=self.cfg.http, flow=self.cfg.flow_control,
                            inject=self._inject_on())
        except Exception as e:
            if not is_alive(info.pid):  # short-lived (a `go build` step): exited before it was analysed
                self.log.debug("go_ebpf: pid %d exited before it was analysed: %s", info.pid, e)
                self._attach_failures.labels("exited").inc()
                return
            self.notes.note(logging.WARNING, info.exe, info.pid, f"cannot analyse: {e}")
            self._attach_failures.labels("analysis").inc()
            return
        resource = {
            "service.name": info.service_name,
            "process.pid": info.pid,
            "process.executable.name": info.exe_name,
            "process.executable.path": info.exe.removesuffix(" (deleted)"),
            "process.runtime.name": "go",
            "process.runtime.version": plan.go_version or "",
        }
        if not plan.sites:
            if self._add_below(info, exe, resource):
                self.attached_pids.add(info.pid)
            else:
                self.notes.note(logging.INFO, info.exe, info.pid, "has no gRPC or net/http functions to trace")
            return
        # resource first: events may arrive as soon as the probes are on
        self.asm.add_process(info.pid, resource, grpc_missing=", ".join(grpc_losses(plan.layout.missing)),
                             netns=_netns(info.pid))
        self.flow.set_streaming(info.pid, plan.streaming)
        try:
            self._images[info.pid] = self.targets.add_process(info.pid, exe, plan.sites, plan.layout.offsets,
                                                              plan.layout.flags)
        except Exception as e:
            exited = not is_alive(info.pid)
            self._attach_failures.labels("exited" if exited else "attach").inc()
            if exited:
                self.log.debug("go_ebpf: pid %d exited before it was attached: %s", info.pid, e)
            else:
                self.notes.note(logging.WARNING, info.exe, info.pid, f"cannot attach: {e}")
            self.asm.remove_process(info.pid)
            return
        self.log.info("go_ebpf: traced pid %d (%s, %s): %s", info.pid, info.exe, plan.go_version,
                      ", ".join(plan.probe_ids))
        self._add_below(info, exe, resource)  # after the RPC probes: they are what most callers wait for
        if plan.layout.missing and not plan.has_dwarf:
            self._degraded.labels().inc()
        if id(plan) not in self._said:  # once per binary, DWARF or not
            self._said.add(id(plan))
            for note in plan.layout.notes:
                self.log.warning("go_ebpf: pid %d (%s): %s", info.pid, info.exe, note)
            lost = traced_losses(plan.layout.missing, plan.probe_ids)
            if lost:
                why = "lacks DWARF" if not plan.has_dwarf else "has DWARF but not every field go_ebpf reads"
                self.log.warning("go_ebpf: pid %d (%s, grpc %s) %s; missing: %s", info.pid, info.exe,
                                 plan.layout.grpc_version or "unknown", why, ", ".join(lost))
        self.attached_pids.add(info.pid)  # last: whoever waits for it also sees what was said about it

    def _add_below(self, info: ProcessInfo, exe: str, resource: dict[str, Any]) -> list[str]:
        """Context and TLS probes (a program of their own); a failure there costs only them."""
        if self.below is None:
            return []
        try:
            ids = self.below.add(info.pid, exe, resource)
        except Exception as e:
            if is_alive(info.pid):
                self.notes.note(logging.WARNING, info.exe, info.pid, f"cannot attach context/TLS probes: {e}")
            return []
        if ids:
            self.log.info("go_ebpf: pid %d (%s): %s", info.pid, info.exe, ", ".join(ids))
        return list(ids)

    def _drain_once(self) -> int:
        if self.program is None:
            return 0
        failed = self.below.drain() if self.below is not None else []
        self.program.consume()
        raw, self._raw[:] = self._raw[:], []
        now = time.monotonic()
        add, mono_to_unix = self.asm.add, self._mono_to_unix
        for rec in raw:
            try:
                if rec[20] >= FLOW_TYPE_MIN:  # a flow-control record (issue 19): its own decoder
                    if not self.flow.add(rec, mono_to_unix, now):
                        self.ctx.telemetry.dropped(Signal.METRICS, 1, "bad_record")
                    continue
                if not add(rec, mono_to_unix, now):
                    self.ctx.telemetry.dropped(Signal.TRACES, 1, "short_record")
            except Exception:  # a malformed record must not cost the rest of the batch
                self.log.exception("go_ebpf: cannot turn a record into a span")
                self.ctx.telemetry.dropped(Signal.TRACES, 1, "bad_record")
        self.events_seen += len(raw)
        self.flow.expire(now, mono_to_unix)
        if self.below is not None:  # a failed TLS handshake marks the traced call it happened in
            self.below.marker.add(failed, now)
            self.below.marker.mark(self.asm.pending, now)
        if self.asm.unknown_process:
            self.ctx.telemetry.dropped(Signal.TRACES, self.asm.unknown_process, "unknown_process")
            self.asm.unknown_process = 0
        return len(raw)

    def unmatched(self, which: int = 0) -> int:
        """Calls lost since load: 0, the end seen without the start; 1, the goroutine gone before the end."""
        if self.program is None:
            return self._unmatched_seen[which]
        return int(sum(self.program.table("go_unmatched")[ctypes.c_int(which)]))

    def injections(self) -> dict[str, int]:
        """inject_traceparent's counts since load, by result (all 0 when the option is off)."""
        if self.program is None or not self._inject_on():
            return dict(zip(INJECT_RESULTS, self._inject_seen, strict=True))
        t = self.program.table("inj_counts")
        return {r: int(sum(t[ctypes.c_int(i)])) for i, r in enumerate(INJECT_RESULTS)}

    def _inject_on(self) -> bool:
        return self.cfg.inject_traceparent and self.inject_refused is None

    def _count_injections(self) -> None:
        if not self._inject_on():
            return
        for i, (r, n) in enumerate(self.injections().items()):
            if n > self._inject_seen[i]:
                self._injections.labels(r).inc(n - self._inject_seen[i])
                self._inject_seen[i] = n

    def _count_unmatched(self) -> None:
        for which, reason in enumerate(("call_start_not_seen", "call_end_not_seen")):
            n = self.unmatched(which)
            if n > self._unmatched_seen[which]:
                self._unmatched.labels(reason.removeprefix("call_")).inc(n - self._unmatched_seen[which])
                self.ctx.telemetry.dropped(Signal.TRACES, n - self._unmatched_seen[which], reason)
                self._unmatched_seen[which] = n

    def _after_drain(self) -> None:
        super()._after_drain()
        self._count_unmatched()
        self._count_injections()
        if self.red is not None and (self.cfg.sampling.fraction < 1.0 or self.cfg.sampling.slow_threshold):
            kept, dropped = self.sampled()
            self._sampled.labels("kept").inc(kept - self._sampled_seen[0])
            self._sampled.labels("dropped").inc(dropped - self._sampled_seen[1])
            self._sampled_seen = (kept, dropped)

    def sampled(self) -> tuple[int, int]:
        """(kept, dropped) calls by the sampling decided in BPF since load ((0, 0) without sampling)."""
        return self.red.sampled() if self.red is not None and self.program is not None else self._sampled_seen

    def read_metrics(self) -> None:
        """Folds the RED counts the kernel added since the last read (each export, and for tests)."""
        if self.red is not None and self.program is not None:
            self.red.read()

    async def _flush(self, final: bool = False) -> None:
        await self._push(Signal.TRACES, self.asm.take_traces(time.monotonic(), flush_all=final))

    async def _export(self) -> None:
        self.read_metrics()
        await self._push(Signal.METRICS, self.asm.take_metrics())
        if self.program is not None:  # the ages of the streams still open (issue 19)
            await self._push(Signal.METRICS, self.flow.open_stream_ages(self.program))
        if self.below is not None:
            await self._push(Signal.METRICS, self.below.metrics())
            await self._push(Signal.LOGS, self.below.findings())

    def _holding(self) -> bool:
        return bool(self.asm.pending)

    def _detach(self) -> None:
        if self.below is not None:
            self.below.stop_sampling()  # its windows attach on the attach thread
        self._attacher.shutdown(wait=True)  # detaches still queued run before the program closes
        if self.targets is not None:
            self.targets.close()
        if self.below is not None:
            self.below.close()
            self.below = None

def _netns(pid: int) -> int:
    """The inode of the process's network namespace (0 when unreadable: loopback joins then assume one)."""
    import os

    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def _create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> GoEbpfReceiver:
    return GoEbpfReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="go_ebpf",
    config=Config,
    signals=frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS}),
    description="gRPC and net/http spans and RED metrics from uprobes on Go programs (eBPF)",
    create=_create,
    needs_bpf=True,
)
