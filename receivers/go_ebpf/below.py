"""go_ebpf's probes below the RPC (issue 19): context leaks and TLS handshakes, from bpf/go_ctxtls.c.

A second BPF program beside go_ebpf.c, with its own per-binary plan, maps and ring buffer, so that the
RPC probes and these evolve apart; the receiver calls add/remove/drain/metrics/logs (receivers/go_ebpf).
Everything needs only the symbol table and DWARF the RPC probes already read.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from gotel.ebpf.goprobes import Site
from gotel.ebpf.targets import entry_site, ret_addresses, struct_offset
from gotel.golang import GoBinary, analyze
from gotel.golang.binary import FileIdentity
from gotel.pdata.batch import Logs, Metrics, attrs
from gotel.receivers.go_ebpf.contexts import ContextLeaks, Sampled, SiteName
from gotel.receivers.go_ebpf.ctxsample import Memory, Windows
from gotel.receivers.go_ebpf.tls import WRAPPERS, ErrorTypes, Handshake, TlsMetrics, decode, error_type_name

SCOPE = "gotel.receivers.go_ebpf"
# gotel_go_offsets slots: the C_* indices of bpf/go_ctxtls.c
OFFSETS = ("ctx_lo", "ctx_hi", "tls.Conn.conn", "tls.Conn.vers", "tls.Conn.cipherSuite", "net.(*TCPConn).LocalAddr",
           "net.TCPConn.conn.fd", "net.netFD.raddr", "net.TCPAddr.IP", "net.TCPAddr.Port", "errors.(*errorString).Error",
           *(f"wrap Error {i}" for i in range(6)), *(f"wrap offset {i}" for i in range(6)),
           "propagateCancel child in si", "propagateCancel probe reentrant", "AfterFunc lo", "AfterFunc hi")
_TLS_CLIENT = "crypto/tls.(*Conn).clientHandshake"
_TLS_SERVER = "crypto/tls.(*Conn).serverHandshake"
_CANCEL_OWNERS = ("context.WithCancel.func", "context.WithCancelCause.func", "context.WithDeadline.func",
                  "context.WithDeadlineCause.func")


@dataclass
class BelowPlan:
    sites: list[Site]
    offsets: dict[str, int | None]
    types: ErrorTypes
    gb: GoBinary
    probe_ids: list[str] = field(default_factory=list)
    _namer: Callable[[int], SiteName] | None = None
    ctx_err: int | None = None  # context.cancelCtx.err: what sampled mode reads to see a context ended

    def namer(self) -> Callable[[int], SiteName]:
        """One per binary: its line tables are decoded once, whatever the number of its processes."""
        if self._namer is None:
            self._namer = site_namer(self.gb)
        return self._namer


_PLANS: dict[tuple[FileIdentity, bool, bool], BelowPlan] = {}


def plan_for(exe: str, *, contexts: bool, tls: bool) -> BelowPlan:
    key = (FileIdentity.of(exe), contexts, tls)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(analyze(exe), contexts, tls)
        while len(_PLANS) > 64:
            del _PLANS[next(iter(_PLANS))]
    return plan


def _plan(gb: GoBinary, contexts: bool, tls: bool) -> BelowPlan:
    fns = gb.functions
    sites: list[Site] = []
    ids: list[str] = []
    off: dict[str, int | None] = dict.fromkeys(OFFSETS)
    ctx_err = None
    if contexts:
        ctx_fns = [n for n in fns.names() if n.startswith("context.")]
        prop = next((n for n in ("context.(*cancelCtx).propagateCancel", "context.propagateCancel")
                     if fns.get(n) is not None), None)
        at = entry_site(gb, prop) if prop else None
        if ctx_fns and at is not None:
            spans = [(f.entry, f.entry + f.size) for n in ctx_fns if (f := fns.get(n)) is not None]
            off["ctx_lo"], off["ctx_hi"] = min(s for s, _ in spans), max(e for _, e in spans)
            off["propagateCancel child in si"] = int(prop == "context.(*cancelCtx).propagateCancel")
            off["propagateCancel probe reentrant"] = int(at[1])
            af = fns.get("context.AfterFunc")
            off["AfterFunc lo"], off["AfterFunc hi"] = (af.entry, af.entry + af.size) if af else (0, 0)
            sites.append(Site(at[0], "ctx_created", prop or ""))
            for n in ctx_fns:
                if n.startswith(_CANCEL_OWNERS) and "deferwrap" not in n:
                    cat = entry_site(gb, n)
                    if cat is not None:
                        sites.append(Site(cat[0], "ctx_cancel", n))
            ids.append("context.leaks")
            ctx_err = struct_offset(gb, "context.cancelCtx", "err")
    if tls:
        for sym, side in ((_TLS_CLIENT, "client"), (_TLS_SERVER, "server")):
            at = entry_site(gb, sym)
            rets = ret_addresses(gb, sym)
            if at is None or not rets:
                continue
            sites.append(Site(at[0], f"tls_{side}_start", sym))
            sites += [Site(r, f"tls_{side}_end", sym, is_return=True) for r in rets]
            ids.append(f"tls.{side}.handshake")
        if any(i.startswith("tls.") for i in ids):
            off["tls.Conn.conn"] = struct_offset(gb, "crypto/tls.Conn", "conn")
            off["tls.Conn.vers"] = struct_offset(gb, "crypto/tls.Conn", "vers")
            off["tls.Conn.cipherSuite"] = struct_offset(gb, "crypto/tls.Conn", "cipherSuite")
            off["net.(*TCPConn).LocalAddr"] = _fn(gb, "net.(*TCPConn).LocalAddr")
            off["net.TCPConn.conn.fd"] = struct_offset(gb, "net.TCPConn", "conn.fd")
            off["net.netFD.raddr"] = struct_offset(gb, "net.netFD", "raddr")
            off["net.TCPAddr.IP"] = struct_offset(gb, "net.TCPAddr", "IP")
            off["net.TCPAddr.Port"] = struct_offset(gb, "net.TCPAddr", "Port")
    if tls:
        off["errors.(*errorString).Error"] = _fn(gb, "errors.(*errorString).Error")
        for i, (method, struct_name, fld) in enumerate(WRAPPERS):
            off[f"wrap Error {i}"] = _fn(gb, method)
            off[f"wrap offset {i}"] = struct_offset(gb, struct_name, fld)
    types = ErrorTypes(_error_namer(gb), struct_offset(gb, "crypto/x509.CertificateInvalidError", "Reason"))
    return BelowPlan(sites, off, types, gb, ids, ctx_err=ctx_err)


def _fn(gb: GoBinary, name: str) -> int | None:
    f = gb.functions.get(name)
    return None if f is None else f.entry


def _error_namer(gb: GoBinary) -> Callable[[int], str]:
    """An Error method's address -> its receiver's type name, cached."""
    cache: dict[int, str] = {}

    def name(addr: int) -> str:
        got = cache.get(addr)
        if got is None:
            f = gb.functions.at(addr)
            got = cache[addr] = error_type_name(f.name) if f is not None and f.entry == addr else ""
        return got

    return name


def site_namer(gb: GoBinary) -> Callable[[int], SiteName]:
    """Return address -> the call site (function, offset, and file:line from DWARF when present), cached."""
    cache: dict[int, SiteName] = {}
    lines = _LineTable(gb)

    def name(pc: int) -> SiteName:
        got = cache.get(pc)
        if got is None:
            f = gb.functions.at(pc - 1)
            fl = lines.at(pc - 1, f.name) if f else None
            got = cache[pc] = SiteName(f.name if f else f"{pc:#x}", pc - f.entry if f else 0,
                                       fl[0] if fl else None, fl[1] if fl else None)
        return got

    return name


class _LineTable:
    """pc -> (file, line) from DWARF line programs: only the compile unit of the function's package (Go
    emits one per package, named by its import path) is decoded, once."""

    def __init__(self, gb: GoBinary) -> None:
        self.gb = gb
        self._dwarf: Any = None
        self._cus: dict[str, Any] | None = None
        self._rows: dict[str, list[tuple[int, str, int]]] = {}

    def at(self, pc: int, function: str) -> tuple[str, int] | None:
        try:
            return self._at(pc, function)
        except Exception:  # no DWARF, or a line program pyelftools cannot read: the site keeps its offset
            return None

    def _at(self, pc: int, function: str) -> tuple[str, int] | None:
        if not self.gb.has_dwarf:
            return None
        slash = function.rfind("/")
        pkg = function[: function.find(".", slash + 1)]
        if self._cus is None:
            from elftools.elf.elffile import ELFFile

            self._dwarf = ELFFile(self.gb.image.data).get_dwarf_info()  # type: ignore[arg-type]
            self._cus = {}
            for cu in self._dwarf.iter_CUs():
                name = cu.get_top_DIE().attributes.get("DW_AT_name")
                if name is not None:
                    self._cus.setdefault(name.value.decode(), cu)
        rows = self._rows.get(pkg)
        if rows is None:
            cu = self._cus.get(pkg)
            if cu is None:
                return None
            rows = self._rows[pkg] = self._decode(cu)
        i = bisect.bisect_right(rows, (pc, "\uffff", 1 << 30)) - 1
        return (rows[i][1], rows[i][2]) if i >= 0 and rows[i][1] else None

    def _decode(self, cu: Any) -> list[tuple[int, str, int]]:
        lp = self._dwarf.line_program_for_CU(cu)
        v5 = lp.header.version >= 5
        files, dirs = lp["file_entry"], lp["include_directory"]

        def path(i: int) -> str:
            fe = files[i if v5 else i - 1]
            d = fe.dir_index if v5 else fe.dir_index - 1
            name = fe.name.decode()
            return f"{dirs[d].decode()}/{name}" if 0 <= d < len(dirs) and not name.startswith("/") else name

        rows: list[tuple[int, str, int]] = []
        for e in lp.get_entries():
            st = e.state
            if st is not None:
                rows.append((st.address, "" if st.end_sequence else path(st.file), st.line))
        rows.sort()
        return rows


@dataclass(frozen=True)
class SamplingPlan:
    """context_mode: sampled: the creation probe attached `window` s every `period` s; at most `budget`
    contexts tracked per process and window; `run` attaches and detaches (the receiver's attach thread)."""

    window: float
    period: float
    budget: int = 4096
    run: Callable[[Callable[[], Any]], Future[Any]] | None = None


_CLIENT_TYPES = (2, 4)  # T_GRPC_CLIENT, T_HTTP_CLIENT (bpf/go_ebpf.c)
_HOLD_S = 10.0  # how long a failed handshake waits for the traced call it happened in to end


class SpanMarker:
    """Marks a traced client call during which a TLS handshake of the same process failed: a span event
    `gotel.tls.handshake` (error.type, side, peer, Go error type, duration) appended to the encoded span.

    The handshake runs on a dial goroutine of its own (net/http's dialConnFor, grpc's addrConn), so the
    call is found by process and time (one clock: both are CLOCK_MONOTONIC in BPF): the innermost client
    span, of the same peer when both are known, whose time covers the handshake's."""

    def __init__(self, mono_to_unix: int) -> None:
        self.mono_to_unix = mono_to_unix
        self.waiting: list[tuple[float, Handshake]] = []
        self.marked = 0

    def add(self, failed: list[Handshake], now: float) -> None:
        self.waiting += [(now + _HOLD_S, h) for h in failed if h.side == "client"]

    def mark(self, pending: list[Any], now: float) -> None:
        if not self.waiting or not pending:
            self.waiting = [(t, h) for t, h in self.waiting if t > now]
            return
        keep = []
        for until, h in self.waiting:
            start, end = h.start_ns + self.mono_to_unix, h.end_ns + self.mono_to_unix
            best = None
            for p in pending:
                if (p.pid == h.pid and p.type in _CLIENT_TYPES and p.start <= start and end <= p.end
                        and (best is None or p.start > best.start)
                        and (h.peer_port == 0 or not p.rport or p.rport == h.peer_port)):
                    best = p
            if best is None:
                if until > now:
                    keep.append((until, h))
                continue
            best.body += _event(h, end)
            self.marked += 1
        self.waiting = keep


def _event(h: Handshake, t_unix: int) -> bytes:
    """Span.events (field 11) entry, appended to an encoded span's fields."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    ev = trace_pb2.Span.Event(time_unix_nano=t_unix, name="gotel.tls.handshake")
    a: dict[str, Any] = {"error.type": h.error_type or "", "gotel.tls.side": h.side,
                         "gotel.tls.handshake.duration": max(0, h.end_ns - h.start_ns) / 1e9}
    if h.error_go_type:
        a["exception.type"] = h.error_go_type
    if h.peer:
        a["network.peer.address"] = h.peer
        a["network.peer.port"] = h.peer_port
    ev.attributes.extend(attrs(a))
    raw = ev.SerializeToString()
    return b"\x5a" + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Below:
    """The program, its attachments and what its records become."""

    def __init__(self, *, contexts: bool, tls: bool, leak_age: float, ring_pages: int, max_contexts: int,
                 log: logging.Logger, sampling: SamplingPlan | None = None) -> None:
        """sampling: sampled context tracking (the creation probe in windows); None: exact (two probes)."""
        from gotel.ebpf.goprobes import GoTargets
        from gotel.ebpf.program import BpfProgram

        self.contexts, self.tls, self.log = contexts, tls, log
        self.program = BpfProgram("go_ctxtls.c", defines={"RINGBUF_PAGES": ring_pages, "CTX_MAX": max_contexts})
        # TLS alone: one attachment per binary (a handshake is rare, so a trap in an unselected process of a
        # traced binary costs nothing worth the ~16 uprobes each process would attach and detach); contexts
        # are hot: per process, so that only selected processes pay
        self.targets = GoTargets(self.program, OFFSETS, per_process=contexts)
        self._raw: list[bytes] = []
        self.program.collect_ring_buffer("ctxtls_events", self._raw)
        self.windows: Windows | None = None
        self._own: ThreadPoolExecutor | None = None  # attaches windows when no caller's thread does
        if contexts and sampling is not None:
            run = sampling.run
            if run is None:
                self._own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="go_ebpf-ctxattach")
                run = self._own.submit
            self.windows = Windows(self.program, window=sampling.window, period=sampling.period,
                                   budget=sampling.budget, run=run, closed=lambda: self.leaks.scan(), log=log)
        self.leaks = ContextLeaks(self.program, leak_age, self.windows.scale if self.windows else None)
        self.tls_metrics = TlsMetrics()
        self.types: dict[int, ErrorTypes] = {}
        self.resources: dict[int, dict[str, Any]] = {}
        self.handshakes: list[Handshake] = []  # failed ones since the last take (span marking, logs)
        self._seen: dict[tuple[int, str], int] = {}  # (pid, site label) -> leaks named in findings so far
        self._exported: dict[tuple[int, str, str], int] = {}  # (pid, label, metric) -> last value exported
        self.start_ns = time.time_ns()
        self._mono_to_unix = time.time_ns() - time.monotonic_ns()
        self.marker = SpanMarker(self._mono_to_unix)  # the receiver sets its own offset (one clock for both)

    def add(self, pid: int, exe: str, resource: dict[str, Any]) -> list[str]:
        """Attaches to pid; returns the probe ids set (empty: nothing here to trace)."""
        plan = plan_for(exe, contexts=self.contexts, tls=self.tls)
        if not plan.sites:
            return []
        self.types[pid] = plan.types
        self.resources[pid] = resource
        sites, ids = plan.sites, list(plan.probe_ids)
        if "context.leaks" in ids and self.windows is not None:
            create = next(s for s in sites if s.fn_name == "ctx_created")  # attached in windows only
            sites = [s for s in sites if not s.fn_name.startswith("ctx_")]  # and no cancel probe
            if plan.ctx_err is None:
                ids.remove("context.leaks")
                self.log.warning("go_ebpf: pid %d (%s): no DWARF for context.cancelCtx.err: sampled context "
                                 "tracking cannot see cancels (context_mode: exact can)", pid, exe)
            else:
                self.leaks.add_process(pid, plan.namer(), Sampled(plan.ctx_err, Memory(pid)))
        elif "context.leaks" in ids:
            self.leaks.add_process(pid, plan.namer())
        if not sites and not any(i.startswith("context.") for i in ids):
            return []
        self.targets.add_process(pid, exe, sites, plan.offsets)
        if self.windows is not None and pid in self.leaks.sampled:
            self.windows.add(pid, exe, create.vaddr, create.fn_name)
        return ids

    def remove(self, pid: int, detach: Callable[[Any], object] | None = None) -> None:
        """detach: how to close the probes (the receiver's attach thread: BCC's probe table is not
        thread-safe, and closing waits for RCU grace periods)."""
        self.log.debug("go_ebpf: context/TLS probes off pid %d", pid)
        self.drain()
        if self.windows is not None:
            self.windows.remove(pid)
            (detach or self.program.detach_binary)(("ctxwindow", pid))
        self.targets.remove_process(pid, detach=detach)
        if pid in self.leaks.procs:
            self.leaks.remove_process(pid)
        self.types.pop(pid, None)
        self._exported = {k: v for k, v in self._exported.items() if k[0] != pid}
        self.tls_metrics.remove_process(pid)
        self.resources.pop(pid, None)

    def drain(self) -> list[Handshake]:
        """Reads the ring; returns the failed handshakes among the records."""
        self.program.consume()
        raw, self._raw[:] = self._raw[:], []
        failed = []
        for rec in raw:
            pid = int.from_bytes(rec[4:8], "little")
            types = self.types.get(pid)
            if types is None:
                continue
            h = decode(rec, types)
            if h is None:
                continue
            self.tls_metrics.add(h)
            if h.error_type:
                failed.append(h)
        return failed

    def metrics(self) -> Metrics | None:
        if self.contexts:
            self.leaks.scan()
        now = time.time_ns()
        b = Metrics()
        for pid, res in self.resources.items():
            hists = self.tls_metrics.hists.get(pid, {})
            sites = self.leaks.by_site(pid) if pid in self.leaks.procs else {}
            if not hists and not sites:
                continue
            rm = b.msg.resource_metrics.add()
            rm.resource.attributes.extend(attrs(res))
            sm = rm.scope_metrics.add()
            sm.scope.name = SCOPE
            if hists:
                m = sm.metrics.add(name="gotel.tls.handshake.duration", unit="s",
                                   description="Duration of TLS handshakes (crypto/tls), by side, peer and failure reason.")
                m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                for labels, h in hists.items():
                    dp = m.histogram.data_points.add(start_time_unix_nano=self.start_ns, time_unix_nano=now, count=h.n,
                                                     sum=h.total, min=h.lo, max=h.hi, explicit_bounds=h.bounds,
                                                     bucket_counts=h.counts)
                    dp.attributes.extend(attrs(dict(labels)))
            if sites:
                names = self.leaks.procs[pid].name_of
                first: dict[str, dict[str, Any]] = {}  # label -> attributes
                for pc in self.leaks.procs[pid].sites:
                    first.setdefault(names(pc).label(), names(pc).attributes())
                for metric, desc, get in (
                        ("gotel.context.leaked", "Contexts whose cancel func was never called before the GC freed "
                                                 "them or they grew older than the threshold, by creating site.",
                         lambda c: c.leaked),
                        ("gotel.context.created", "Cancelable contexts created, by creating site.",
                         lambda c: c.created)):
                    rows = [(label, self._monotonic(pid, label, metric, get(c))) for label, c in sites.items()
                            if get(c) > 0]
                    if not rows:
                        continue
                    m = sm.metrics.add(name=metric, unit="{context}", description=desc)
                    m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                    m.sum.is_monotonic = True
                    for label, n in rows:
                        dp = m.sum.data_points.add(start_time_unix_nano=self.start_ns, time_unix_nano=now, as_int=n)
                        dp.attributes.extend(attrs(first[label]))
        return b if b.msg.resource_metrics else None

    def findings(self) -> Logs | None:
        """One log record per site that leaked more contexts since the last call (after metrics())."""
        b = Logs()
        now = time.time_ns()
        for pid, p in self.leaks.procs.items():
            rl = None
            by_label = self.leaks.by_site(pid)
            for label, c in by_label.items():
                new = c.leaked - self._reported(pid, label)
                if new <= 0:
                    continue
                self._reported_set(pid, label, c.leaked)
                if rl is None:
                    rl = b.msg.resource_logs.add()
                    rl.resource.attributes.extend(attrs(self.resources.get(pid, {"process.pid": pid})))
                    sl = rl.scope_logs.add()
                    sl.scope.name = SCOPE
                site_attrs = next(p.name_of(pc).attributes() for pc in p.sites if p.name_of(pc).label() == label)
                lr = sl.log_records.add(time_unix_nano=now, observed_time_unix_nano=now,
                                        severity_number=logs_pb2.SEVERITY_NUMBER_WARN, severity_text="WARN")
                lr.body.string_value = (
                    f"context leak: {new} more context(s) created at {label} never had their cancel func called "
                    f"({c.leaked} in all: {c.freed} freed by the GC, {c.aged} older than "
                    f"{self.leaks.max_age_ns / 1e9:g}s; {c.created} created, {c.canceled} canceled)")
                lr.attributes.extend(attrs({**site_attrs, "gotel.finding": "context_leak",
                                            "gotel.context.leaked.new": new, "gotel.context.leaked.total": c.leaked}))
        return b if b.msg.resource_logs else None

    def _monotonic(self, pid: int, label: str, metric: str, n: int) -> int:
        """A sampled estimate can drop a little as its scale settles; a cumulative counter must not."""
        k = (pid, label, metric)
        n = self._exported[k] = max(n, self._exported.get(k, 0))
        return n

    def _reported(self, pid: int, label: str) -> int:
        return self._seen.get((pid, label), 0)

    def _reported_set(self, pid: int, label: str, n: int) -> None:
        self._seen[(pid, label)] = n

    def stop_sampling(self) -> None:
        """Ends the duty cycle (before the attach thread it uses stops)."""
        if self.windows is not None:
            self.windows.close()
        if self._own is not None:
            self._own.shutdown(wait=True)
            self._own = None

    def close(self) -> None:
        self.stop_sampling()
        self.targets.close()
        self.program.close()


# ---- probe specs for `gotel inspect` (ids as the agent's log names them)
def _register_specs() -> None:
    from gotel.ebpf.probespecs import FieldRef, ProbeSpec, register

    for spec in (
        ProbeSpec("context.leaks", ("context.(*cancelCtx).propagateCancel", "context.propagateCancel"), "go_ebpf",
                  "context leaks (contexts: true): every cancelable context at its creation, with its call site; "
                  "entry probes on the cancel closures (context.WithCancel.func*, ...) see cancel calls",
                  optional=True),
        ProbeSpec("tls.client.handshake", (_TLS_CLIENT,), "go_ebpf",
                  "TLS client handshakes: duration, failure reason, version and cipher", returns=True, optional=True,
                  offsets=(FieldRef("crypto/tls.Conn", "vers", "tls.protocol.version"),
                           FieldRef("crypto/tls.Conn", "cipherSuite", "tls.cipher"),
                           FieldRef("crypto/tls.Conn", "conn", "network.peer.address"),
                           FieldRef("crypto/x509.CertificateInvalidError", "Reason", "error.type=expired"),
                           FieldRef("net.OpError", "Err", "error.type of remote alerts and timeouts"))),
        ProbeSpec("tls.server.handshake", (_TLS_SERVER,), "go_ebpf",
                  "TLS server handshakes: duration, failure reason, version and cipher", returns=True, optional=True,
                  offsets=(FieldRef("crypto/tls.Conn", "vers", "tls.protocol.version"),
                           FieldRef("crypto/tls.Conn", "cipherSuite", "tls.cipher"),
                           FieldRef("crypto/tls.Conn", "conn", "network.peer.address"))),
    ):
        register(spec)


_register_specs()
