"""Receiver processes: start, watch, restart with backoff, forward logs, report state (DESIGN.md §1).

Each receiver whose factory is not ``in_process`` runs as
``python -m gotel receiver TYPE/NAME --internal --endpoint unix:///<runtime dir>/otlp.sock``.
Its validated config reaches it on stdin as JSON (never argv or environment: they are readable by
other users through /proc and may hold secrets). The child pushes OTLP to the pipeline's internal
otlp receiver with metadata ``gotel-receiver: <id>``; every few seconds it also pushes its own
metrics registry, marked ``gotel-telemetry: 1``, which the pipeline merges into its endpoint.

A child dies with the pipeline process (PR_SET_PDEATHSIG) and runs in its own session, so a
Ctrl-C in a terminal reaches the pipeline, which then stops receivers first, in order.
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
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from gotel.component import ComponentID, Kind
from gotel.config.model import ComponentEntry, SupervisorConfig
from gotel.logs import LOG_LINE
from gotel.pdata import Signal
from gotel.receiverproc import EXIT_CANNOT_RUN
from gotel.telemetry import ComponentTelemetry, Telemetry

log = logging.getLogger("gotel.supervisor")


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


@dataclass
class Child:
    entry: ComponentEntry
    signals: list[Signal]
    tel: ComponentTelemetry
    proc: asyncio.subprocess.Process | None = None
    up: bool = False
    restarts: int = 0
    started_at: float = 0.0
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> ComponentID:
        return self.entry.id


class Supervisor:
    def __init__(
        self,
        endpoint: str,
        cfg: SupervisorConfig,
        tel: Telemetry,
        log_level: str = "info",
        telemetry_interval: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        self.tel = tel
        self.log_level = log_level
        self.telemetry_interval = telemetry_interval
        self.children: dict[ComponentID, Child] = {}
        self._stopping = asyncio.Event()

    def add(self, entry: ComponentEntry, signals: list[Signal]) -> None:
        t = self.tel.component(entry.id, Kind.RECEIVER)
        t.set_up(False)
        self.tel.restarts.labels(str(entry.id), Kind.RECEIVER.value)  # exposed as 0 from the start
        self.children[entry.id] = Child(entry, sorted(signals), t)

    def all_up(self) -> bool:
        return all(c.up for c in self.children.values())

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            str(c.id): {"up": c.up, "pid": c.proc.pid if c.proc and c.up else None, "restarts": c.restarts}
            for c in self.children.values()
        }

    def command(self, child: Child) -> list[str]:
        return [sys.executable, "-m", "gotel", "--log-level", self.log_level, "receiver", str(child.id),
                "--internal", "--endpoint", self.endpoint]

    def spec(self, child: Child) -> bytes:
        return json.dumps({
            "type": child.entry.factory.type,
            "config": config_to_json(child.entry.config),
            "signals": [s.value for s in child.signals],
            "telemetry_interval": self.telemetry_interval,
            # The child sets PR_SET_PDEATHSIG itself and checks that this is still its parent: no
            # preexec_fn, so the spawn is a plain fork+exec that gRPC's fork handlers never see.
            "parent_pid": os.getpid(),
        }).encode()

    async def start(self) -> None:
        for child in self.children.values():
            child.task = asyncio.create_task(self._watch(child), name=f"supervise-{child.id}")

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.command(child),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=1 << 20,
        )
        assert proc.stdin is not None
        proc.stdin.write(self.spec(child))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        return proc

    async def _forward(self, child: Child, stream: asyncio.StreamReader) -> None:
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
            child.last_lines.append(text)
            if not (shown if continued else LOG_LINE.match(line)) and not log.isEnabledFor(logging.DEBUG):
                # raw output of a C library (BCC, LLVM, grpc core) or of a crash: kept for the exit
                # message (last_lines); the console shows it at --log-level debug
                continue
            out.write(text + "\n")
            out.flush()

    async def _watch(self, child: Child) -> None:
        backoff = self.cfg.initial_backoff
        while not self._stopping.is_set():
            child.started_at = time.monotonic()
            try:
                proc = await self._spawn(child)
            except OSError as e:
                log.error("cannot start receiver %s: %s", child.id, e)
                code: int | None = None
            else:
                child.proc = proc
                child.up = True
                child.tel.set_up(True)
                log.info("receiver %s started (pid %d)", child.id, proc.pid)
                assert proc.stderr is not None
                fwd = asyncio.create_task(self._forward(child, proc.stderr))
                code = await proc.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fwd, 2.0)
                child.up = False
                child.tel.set_up(False)
            if self._stopping.is_set():
                return
            ran = time.monotonic() - child.started_at
            if ran >= self.cfg.stable_after:
                backoff = self.cfg.initial_backoff
            if code == EXIT_CANNOT_RUN:
                backoff = self.cfg.max_backoff
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            last = child.last_lines[-1] if child.last_lines else ""
            log.error("receiver %s %s after %.1fs; restarting in %.1fs%s", child.id, how, ran, backoff,
                      f" (last output: {last})" if last else "")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            if self._stopping.is_set():
                return
            backoff = min(backoff * 2, self.cfg.max_backoff)
            child.restarts += 1
            child.tel.restarted()

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to every receiver (they flush what they hold), SIGKILL after the timeout."""
        self._stopping.set()
        timeout = self.cfg.stop_timeout if timeout is None else timeout
        procs = [c.proc for c in self.children.values() if c.proc is not None and c.proc.returncode is None]
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
        tasks = [c.task for c in self.children.values() if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)
        for c in self.children.values():
            c.up = False
            c.tel.set_up(False)
