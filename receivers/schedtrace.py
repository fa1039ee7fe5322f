"""``schedtrace`` receiver: follows a file or a container log for ``GODEBUG=schedtrace=N`` (and
``scheddetail=1``) lines and turns them into scheduler metrics.

In Kubernetes the runtime writes these lines to stderr, so they end up in the container log
(``/var/log/containers/*.log``, CRI format ``<time> stderr F <line>``, or Docker's JSON lines); both
wrappings are unwrapped. Files are followed like ``tail -F``: rotation (new inode) and truncation
are noticed, and reading starts at the end unless ``start_at: beginning``.

Line format (runtime/proc.go schedtrace):
``SCHED 1004ms: gomaxprocs=2 idleprocs=2 threads=5 spinningthreads=0 [needspinning=0] idlethreads=2 runqueue=0 [0 0]``
and with scheddetail, per P: ``  P0: status=1 schedtick=3 syscalltick=0 m=3 runqsize=0 gfreecnt=0 timerslen=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from gotel.component.contract import ComponentConfig, Consumer, Context, Receiver, ReceiverFactory
from gotel.config.types import Duration
from gotel.pdata.batch import Signal
from gotel.pdata.builders import MetricsBuilder
from gotel.receiverhelper.outcome import push

SCOPE = "gotel.receivers.schedtrace"
_SCHED = re.compile(r"SCHED (\d+)ms: (.*)$")
_KV = re.compile(r"(\w+)=(\S+)")
_PLINE = re.compile(r"^\s+P(\d+): (.*)$")
_CRI = re.compile(r"^\S+ (?:stdout|stderr) [FP] (.*)$")

FIELDS = {
    "gomaxprocs": ("gotel.schedtrace.gomaxprocs", "{proc}", "GOMAXPROCS: Ps that run Go code"),
    "idleprocs": ("gotel.schedtrace.idle_procs", "{proc}", "Ps without work"),
    "threads": ("gotel.schedtrace.threads", "{thread}", "OS threads (Ms) the runtime created"),
    "spinningthreads": ("gotel.schedtrace.spinning_threads", "{thread}", "Ms spinning, looking for work"),
    "idlethreads": ("gotel.schedtrace.idle_threads", "{thread}", "Ms parked without work"),
    "runqueue": ("gotel.schedtrace.global_runqueue", "{goroutine}", "goroutines in the global run queue"),
}


@dataclass
class SchedSample:
    uptime_ms: int
    values: dict[str, int]
    local_runqueues: list[int] = field(default_factory=list)  # per P, from the summary line
    p_detail: dict[int, dict[str, str]] = field(default_factory=dict)  # scheddetail P lines


def unwrap(line: str) -> str:
    """Container-log wrappings -> the program's own line."""
    s = line.rstrip("\n")
    if s.startswith("{") and '"log"' in s:
        with contextlib.suppress(ValueError):
            obj = json.loads(s)
            if isinstance(obj, dict) and isinstance(obj.get("log"), str):
                return str(obj["log"]).rstrip("\n")
    m = _CRI.match(s)
    return m.group(1) if m else s


class Parser:
    """Feed lines; complete SCHED samples come out (a sample ends at the next SCHED line or a flush)."""

    def __init__(self) -> None:
        self.cur: SchedSample | None = None

    def feed(self, raw: str) -> SchedSample | None:
        line = unwrap(raw)
        m = _SCHED.search(line)
        if m:
            done = self.cur
            rest = m.group(2)
            values: dict[str, int] = {}
            for k, v in _KV.findall(rest):
                if v.lstrip("-").isdigit():
                    values[k] = int(v)
            local: list[int] = []
            bm = re.search(r"\[([\d ]*)\]", rest)
            if bm:
                local = [int(x) for x in bm.group(1).split()]
            self.cur = SchedSample(int(m.group(1)), values, local)
            return done
        pm = _PLINE.match(line)
        if pm and self.cur is not None:
            self.cur.p_detail[int(pm.group(1))] = dict(_KV.findall(pm.group(2)))
        return None

    def flush(self) -> SchedSample | None:
        done, self.cur = self.cur, None
        return done


def emit(s: SchedSample, res: Mapping[str, Any], mb: MetricsBuilder) -> int:
    n = 0
    for k, (name, unit, desc) in FIELDS.items():
        if k in s.values:
            mb.gauge(res, name, s.values[k], unit, desc)
            n += 1
    runq = list(s.local_runqueues)
    if not runq and s.p_detail:
        runq = [int(d.get("runqsize", "0")) for _p, d in sorted(s.p_detail.items())]
    for p, q in enumerate(runq):
        mb.gauge(res, "gotel.schedtrace.local_runqueue", q, "{goroutine}", "goroutines in a P's local run queue",
                 {"go.p.id": p})
        n += 1
    if runq or "runqueue" in s.values:
        mb.gauge(res, "gotel.schedtrace.runqueue", s.values.get("runqueue", 0) + sum(runq), "{goroutine}",
                 "runnable goroutines waiting for a P (global + local queues)")
        n += 1
    return n


class FileConfig(ComponentConfig):
    path: str
    service_name: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class Config(ComponentConfig):
    files: list[FileConfig] = Field(default_factory=list)
    start_at: Literal["end", "beginning"] = "end"
    poll_interval: Duration = Field(1.0, gt=0)
    max_line_bytes: int = Field(1 << 20, ge=1024, description="longer lines (huge scheddetail G lists) are cut")


class Follower:
    """tail -F for one file, without a thread: polled from the event loop (reads are small)."""

    def __init__(self, path: str, from_start: bool, max_line: int) -> None:
        self.path = path
        self.from_start = from_start
        self.max_line = max_line
        self.f: Any = None
        self.ino: int | None = None
        self.buf = b""

    def _open(self, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open while following
        except OSError:
            return False
        st = os.fstat(f.fileno())
        if at_end:
            f.seek(0, os.SEEK_END)
        if self.f is not None:
            self.f.close()
        self.f, self.ino, self.buf = f, st.st_ino, b""
        return True

    def read_lines(self) -> list[str]:
        if self.f is None and not self._open(at_end=not self.from_start):
            return []
        self.from_start = True  # a file that appears later (or is rotated in) is read from its start
        out: list[str] = []
        for _ in range(2):
            chunk = self.f.read(4 << 20)
            if chunk:
                self.buf += chunk
                *lines, self.buf = self.buf.split(b"\n")
                out.extend(x[: self.max_line].decode(errors="replace") for x in lines)
                if len(self.buf) > self.max_line:
                    self.buf = b""
            try:
                st = os.stat(self.path)
            except OSError:
                break
            pos = self.f.tell()
            if st.st_ino != self.ino:
                self._open(at_end=False)  # rotated: finish nothing more of the old one, follow the new
                continue
            if st.st_size < pos:
                self.f.seek(0)  # truncated (copytruncate)
                self.buf = b""
                continue
            break
        return out

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class SchedtraceReceiver(Receiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        self.cfg = cfg
        self.sink = sinks.get(Signal.METRICS)
        self.ctx = ctx
        self.task: asyncio.Task[None] | None = None
        self.samples = ctx.telemetry.counter("schedtrace_samples", "SCHED lines turned into metrics.", ("file",))
        self.followers = [(fc, Follower(fc.path, cfg.start_at == "beginning", cfg.max_line_bytes), Parser())
                          for fc in cfg.files]

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def poll(self) -> MetricsBuilder:
        mb = MetricsBuilder(SCOPE)
        for fc, fol, parser in self.followers:
            res = dict(fc.attributes)
            res["service.name"] = fc.service_name or res.get("service.name") or os.path.basename(fc.path)
            lines = fol.read_lines()
            for line in lines:
                s = parser.feed(line)
                if s is not None:
                    emit(s, res, mb)
                    self.samples.labels(fc.path).inc()
            if lines:
                # the last sample is complete once no more detail lines follow in this read
                s = parser.flush()
                if s is not None:
                    emit(s, res, mb)
                    self.samples.labels(fc.path).inc()
        return mb

    async def _run(self) -> None:
        while True:
            mb = self.poll()
            if not mb.empty():
                await push(self.sink, mb.batch(), self.ctx)
            await asyncio.sleep(self.cfg.poll_interval)

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        for _fc, fol, _p in self.followers:
            fol.close()


def _create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> SchedtraceReceiver:
    return SchedtraceReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="schedtrace",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    description="GODEBUG=schedtrace/scheddetail lines from a file or container log -> Go scheduler metrics",
    create=_create,
)
