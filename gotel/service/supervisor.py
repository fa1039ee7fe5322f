"""Receiver processes: start, watch, restart with backoff, forward logs, report state (DESIGN.md §1).

Each receiver whose factory is not ``in_process`` runs as
``gotel receiver TYPE/NAME --internal --endpoint unix:///<runtime dir>/otlp.sock``, forked from the
fork server (gotel.service.forkserver: shared import pages) or, without one, exec'd as ``python -m gotel ...``.
Light receivers (factory ``shares_process``: no BPF, no high-rate draining) share one such process
(``gotel receiver process+pprof ...``) unless service::supervisor::own_process names them: one
process's memory less, at the price of restarting them together when it crashes. Each keeps its own
id, sinks, telemetry, state and restart account; only the process (pid, exit, backoff) is common.
Its validated config reaches it on stdin as JSON (never argv or environment: they are readable by
other users through /proc and may hold secrets). The child pushes OTLP to the pipeline's internal
otlp receiver with metadata ``gotel-receiver: <id>``; every few seconds it also pushes its own
metrics registry, marked ``gotel-telemetry: 1``, which the pipeline merges into its endpoint.

A child dies with the pipeline process (PR_SET_PDEATHSIG) and runs in its own session, so a
Ctrl-C in a terminal reaches the pipeline, which then stops receivers first, in order.

Counters survive restarts: the pipeline keeps each receiver's last snapshot and, when a new process
of that receiver reports (another process.pid), adds the previous process's totals to everything the
new one counts (CounterCarry). A process that dies (killed, crashed) loses what its sink held for the
pipeline; the supervisor counts it as dropped with reason ``receiver_exit``: the items the process
had accepted by its last snapshot, less those it dropped itself and those the pipeline received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from gotel.component.contract import EXIT_CANNOT_RUN, ComponentID, Kind, ReceiverFactory
from gotel.config.model import ComponentEntry, SupervisorConfig
from gotel.pdata.batch import Metrics, Signal, attr_dict
from gotel.service.forkserver import ForkedProcess, ForkServerClient
from gotel.service.forkserver import enabled as forkserver_enabled
from gotel.service.forkserver import kept as forkserver_kept
from gotel.telemetry.counters import ComponentTelemetry, Telemetry
from gotel.telemetry.logs import LOG_LINE

log = logging.getLogger("gotel.service.supervisor")


def _reveal(v: Any) -> Any:
    if isinstance(v, SecretStr | SecretBytes):
        s = v.get_secret_value()
        return s.decode() if isinstance(s, bytes) else s
    if isinstance(v, BaseModel):
        return _reveal(v.model_dump(mode="python", round_trip=True))
    if isinstance(v, dict):
        return {k: _reveal(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_reveal(x) for x in v]
    return v


def config_to_json(cfg: BaseModel) -> Any:
    """The config as plain JSON values with secrets revealed (it travels over a private pipe)."""
    json_safe = json.loads(cfg.model_dump_json(round_trip=True))
    revealed = _reveal(cfg)

    def merge(a: Any, b: Any) -> Any:
        # Take JSON-safe encodings (durations, enums) but the revealed value wherever a secret was masked.
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge(a.get(k), b.get(k)) for k in a}
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            return [merge(x, y) for x, y in zip(a, b, strict=True)]
        if isinstance(a, str) and a.startswith("**") and isinstance(b, str):
            return b
        return a

    return merge(json_safe, revealed)


# Wait after a child died before its in-flight account is taken (its last requests may be mid-consume).
IN_FLIGHT_SETTLE_S = 0.2

_Key = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted attributes)


@dataclass
class _Carried:
    pid: Any = None
    start_ns: int = 0
    base: dict[_Key, float] = field(default_factory=dict)  # totals of the processes before this one
    last: dict[_Key, float] = field(default_factory=dict)  # this process's latest values, as it sent them


class CounterCarry:
    """Monotonic counters of receiver processes, continued across restarts (see the module docstring).

    Gauges pass unchanged. Increments a killed process made after its last snapshot (at most one
    telemetry interval) are unknown to the pipeline and stay uncounted; a clean exit sends a final one.
    """

    def __init__(self) -> None:
        self._by_receiver: dict[str, _Carried] = {}

    def apply(self, rid: str, batch: Metrics) -> Metrics:
        st = self._by_receiver.setdefault(rid, _Carried())
        for rm in batch.msg.resource_metrics:
            pid = attr_dict(rm.resource.attributes).get("process.pid")
            if pid != st.pid:
                if st.pid is not None:  # a new process of this receiver: the old one's totals carry over
                    for key, total in st.last.items():
                        st.base[key] = st.base.get(key, 0.0) + total
                    st.last = {}
                st.pid = pid
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.WhichOneof("data") != "sum" or not m.sum.is_monotonic:
                        continue
                    for dp in m.sum.data_points:
                        k: _Key = (m.name, tuple(sorted((a, str(v)) for a, v in attr_dict(dp.attributes).items())))
                        v = dp.as_double if dp.HasField("as_double") else float(dp.as_int)
                        st.last[k] = v
                        if not st.start_ns:
                            st.start_ns = dp.start_time_unix_nano
                        dp.start_time_unix_nano = st.start_ns
                        dp.as_double = v + st.base.get(k, 0.0)
        return batch

    def in_flight(self, rid: str, received: Mapping[str, int]) -> dict[str, int]:
        """Per signal: what the current process of `rid` had accepted by its last snapshot and neither
        dropped itself nor delivered (`received`: what the pipeline got from it since it started)."""
        st = self._by_receiver.get(rid)
        if st is None:
            return {}
        accepted: dict[str, float] = {}
        dropped: dict[str, float] = {}
        for (name, labels), v in st.last.items():
            lab = dict(labels)
            sig = lab.get("signal", "")
            if name == "gotel_receiver_accepted_items" and lab.get("component") == rid:
                accepted[sig] = accepted.get(sig, 0.0) + v
            elif name == "gotel_dropped_items" and lab.get("component", "").endswith("/sink"):
                dropped[sig] = dropped.get(sig, 0.0) + v
        out = {}
        for sig, n in accepted.items():
            lost = int(n - dropped.get(sig, 0.0) - received.get(sig, 0))
            if lost > 0:
                out[sig] = lost
        return out


@dataclass
class Child:
    """One receiver: its telemetry, state and restart account (shared with no other receiver)."""

    entry: ComponentEntry[ReceiverFactory]
    signals: list[Signal]
    tel: ComponentTelemetry
    proc: asyncio.subprocess.Process | ForkedProcess | None = None
    up: bool = False
    restarts: int = 0
    received_at_start: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> ComponentID:
        return self.entry.id


@dataclass
class Unit:
    """One receiver process: one receiver, or light receivers (``shares_process``) sharing it."""

    members: list[Child]
    proc: asyncio.subprocess.Process | ForkedProcess | None = None
    started_at: float = 0.0
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        """The process's name: its receiver's id, or theirs joined by '+' (argv, ps -o comm)."""
        return "+".join(str(c.id) for c in self.members)

    @property
    def says(self) -> str:
        """How log lines name it: 'receiver pprof', 'receivers process, pprof (one process)'."""
        if len(self.members) == 1:
            return f"receiver {self.members[0].id}"
        return "receivers " + ", ".join(str(c.id) for c in self.members) + " (one process)"


def _unit(u: Unit | Child) -> Unit:
    return u if isinstance(u, Unit) else Unit([u])


class Supervisor:
    def __init__(
        self,
        endpoint: str,
        cfg: SupervisorConfig,
        tel: Telemetry,
        log_level: str = "info",
        telemetry_interval: float = 5.0,
        carry: CounterCarry | None = None,
        received: Callable[[str], dict[str, int]] | None = None,
        profiling: dict[str, Any] | None = None,
    ) -> None:
        self.profiling = profiling  # service::telemetry::profiling, for each receiver process's own profiler
        self.relog: Callable[[str], None] | None = None  # set: child log lines go through our logging
        self.endpoint = endpoint
        self.cfg = cfg
        self.tel = tel
        self.log_level = log_level
        self.telemetry_interval = telemetry_interval
        self.children: dict[ComponentID, Child] = {}
        self.units: list[Unit] = []
        self._stopping = asyncio.Event()
        self.carry = carry or CounterCarry()
        # items the pipeline received from a receiver, per signal (the internal entry point's routers)
        self.received = received or (lambda _rid: {})
        # receiver processes forked from one that imported their modules (gotel.service.forkserver): their
        # import pages are shared; None, or not alive, and they are exec'd fresh
        self.forkserver: ForkServerClient | None = None
        self._first_spawns = 0
        self._retiring: asyncio.Task[None] | None = None

    def add(self, entry: ComponentEntry[ReceiverFactory], signals: list[Signal]) -> None:
        t = self.tel.component(entry.id, Kind.RECEIVER)
        t.set_up(False)
        self.tel.restarts.labels(str(entry.id), Kind.RECEIVER.value)  # exposed as 0 from the start
        self.children[entry.id] = Child(entry, sorted(signals), t)

    def group(self) -> list[Unit]:
        """The receiver processes: the light receivers (factory ``shares_process``, not named in
        own_process) together in one, every other receiver alone in its own."""
        alone = {str(ComponentID.parse(r)) for r in self.cfg.own_process}
        light = sorted((c for c in self.children.values() if c.entry.factory.shares_process and str(c.id) not in alone),
                       key=lambda c: c.id)
        units = [Unit([c]) for c in self.children.values() if len(light) < 2 or c not in light]
        if len(light) >= 2:
            units.append(Unit(light))
        return units

    def all_up(self) -> bool:
        return all(c.up for c in self.children.values())

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            str(c.id): {"up": c.up, "pid": c.proc.pid if c.proc and c.up else None, "restarts": c.restarts}
            for c in self.children.values()
        }

    def command(self, unit: Unit | Child) -> list[str]:
        return [sys.executable, "-m", "gotel", "--log-level", self.log_level, "receiver", _unit(unit).name,
                "--internal", "--endpoint", self.endpoint]

    def spec(self, unit: Unit | Child, parent_pid: int | None = None) -> bytes:
        return json.dumps({
            "receivers": [{"id": str(c.id), "type": c.entry.factory.type, "config": config_to_json(c.entry.config),
                           "signals": [s.value for s in c.signals]} for c in _unit(unit).members],
            "telemetry_interval": self.telemetry_interval,
            # The child sets PR_SET_PDEATHSIG itself and checks that this is still its parent: no
            # preexec_fn, so the spawn is a plain fork+exec that gRPC's fork handlers never see.
            "parent_pid": os.getpid() if parent_pid is None else parent_pid,
            **({"profiling": self.profiling} if self.profiling else {}),
        }).encode()

    async def start(self) -> None:
        if forkserver_enabled() and self.children:
            fs = ForkServerClient()
            try:
                await fs.start(sorted({c.entry.factory.type for c in self.children.values()}))
                self.forkserver = fs
            except OSError as e:
                log.warning("no fork server (%s): receiver processes start as fresh interpreters", e)
        self.units = self.group()
        self._first_spawns = len(self.units)
        for unit in self.units:
            unit.task = asyncio.create_task(self._watch(unit), name=f"supervise-{unit.name}")

    def _spawned_once(self) -> None:
        """After every receiver's first process: the fork server retires (unless GOTEL_KEEP_FORKSERVER=1).
        Its private memory served only restarts, which then start fresh interpreters."""
        self._first_spawns -= 1
        if self._first_spawns == 0 and self.forkserver is not None and not forkserver_kept():
            log.debug("every receiver process started: the fork server retires")
            self._retiring = asyncio.create_task(self.forkserver.stop(), name="forkserver-retire")

    async def _spawn(self, unit: Unit) -> asyncio.subprocess.Process | ForkedProcess:
        fs, cmd = self.forkserver, self.command(unit)
        if fs is not None and fs.alive and cmd[:3] == [sys.executable, "-m", "gotel"]:
            try:
                # forked twice, the child becomes ours (we are its subreaper) and checks that we are its parent
                return await fs.spawn(cmd[3:], self.spec(unit), 1 << 20)
            except OSError as e:
                log.warning("the fork server cannot start %s (%s): starting a fresh interpreter", unit.says, e)
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=1 << 20,
        )
        assert proc.stdin is not None
        proc.stdin.write(self.spec(unit))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        return proc

    async def _forward(self, unit: Unit, stream: asyncio.StreamReader) -> None:
        """Child log lines (already prefixed with [receiver id]) go to our stderr as they come."""
        out = sys.stderr
        shown = True  # whether the line in progress (when longer than the limit) is being shown
        head = True  # at the start of a line
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                line = e.partial  # end of stream
            except asyncio.LimitOverrunError as e:
                # A line longer than the stream's limit: pass it on in pieces (nothing lost) so
                # that the child never blocks on a full stderr pipe.
                piece = await stream.read(max(1, e.consumed))
                if head:
                    shown = bool(LOG_LINE.match(piece)) or log.isEnabledFor(logging.DEBUG)
                head = False
                if shown:
                    out.write(piece.decode("utf-8", "replace"))
                continue
            if not line:
                return
            continued, head = not head, True
            text = line.decode("utf-8", "replace").rstrip("\n")
            unit.last_lines.append(text)
            if not (shown if continued else LOG_LINE.match(line)) and not log.isEnabledFor(logging.DEBUG):
                # raw output of a C library (BCC, LLVM, grpc core) or of a crash: kept for the exit
                # message (last_lines); the console shows it at --log-level debug
                continue
            if self.relog is not None:
                self.relog(text)
                continue
            out.write(text + "\n")
            out.flush()

    async def _watch(self, unit: Unit) -> None:
        backoff = self.cfg.initial_backoff
        first = True
        while not self._stopping.is_set():
            unit.started_at = time.monotonic()
            try:
                proc = await self._spawn(unit)
            except OSError as e:
                log.error("cannot start %s: %s", unit.says, e)
                code: int | None = None
            else:
                if first:
                    first = False
                    self._spawned_once()
                unit.proc = proc
                for child in unit.members:
                    child.proc = proc
                    child.received_at_start = self.received(str(child.id))
                    child.up = True
                    child.tel.set_up(True)
                log.info("%s started (pid %d)", unit.says, proc.pid)
                assert proc.stderr is not None
                fwd = asyncio.create_task(self._forward(unit, proc.stderr))
                code = await proc.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fwd, 2.0)
                for child in unit.members:
                    child.up = False
                    child.tel.set_up(False)
                if code != 0:
                    # requests the pipeline was still handling when the child died complete first
                    await asyncio.sleep(IN_FLIGHT_SETTLE_S)
                for child in unit.members:
                    self._count_in_flight(child)
            if self._stopping.is_set():
                return
            ran = time.monotonic() - unit.started_at
            if ran >= self.cfg.stable_after:
                backoff = self.cfg.initial_backoff
            if code == EXIT_CANNOT_RUN:
                backoff = self.cfg.max_backoff
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            last = unit.last_lines[-1] if unit.last_lines else ""
            log.error("%s %s after %.1fs; restarting in %.1fs%s", unit.says, how, ran, backoff,
                      f" (last output: {last})" if last else "")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            if self._stopping.is_set():
                return
            backoff = min(backoff * 2, self.cfg.max_backoff)
            for child in unit.members:
                child.restarts += 1
                child.tel.restarted()

    def _count_in_flight(self, child: Child) -> None:
        """What a process that ended still held for the pipeline: counted, and said once."""
        now = self.received(str(child.id))
        since = {s: n - child.received_at_start.get(s, 0) for s, n in now.items()}
        lost = self.carry.in_flight(str(child.id), since)
        for sig, n in lost.items():
            child.tel.dropped(sig, n, "receiver_exit")
        if lost:
            log.warning("receiver %s ended with %s in flight to the pipeline: counted as dropped (receiver_exit)",
                        child.id, ", ".join(f"{n} {s}" for s, n in sorted(lost.items())))

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to every receiver process (they flush what they hold), SIGKILL after the timeout."""
        self._stopping.set()
        timeout = self.cfg.stop_timeout if timeout is None else timeout
        procs = [u.proc for u in self.units if u.proc is not None and u.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            _done, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in procs], timeout=timeout)
            if pending:
                for p in procs:
                    if p.returncode is None:
                        log.warning("receiver process %d did not stop within %.1fs: killing it", p.pid, timeout)
                        with contextlib.suppress(ProcessLookupError):
                            p.kill()
                await asyncio.wait(pending, timeout=2.0)
        tasks = [u.task for u in self.units if u.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)
        for c in self.children.values():
            c.up = False
            c.tel.set_up(False)
        if self._retiring is not None:  # one stop() at a time: two would wait on one pidfd
            await self._retiring
        elif self.forkserver is not None:
            await self.forkserver.stop()
