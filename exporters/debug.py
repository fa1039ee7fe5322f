"""`debug` exporter: shows what flows through a pipeline on stderr (the collector's debug exporter).

verbosity basic prints one summary line per `summary_interval` for all the signals of one exporter
id (items and rate per signal, and what the pipeline dropped or failed to send meanwhile): a line
per export said little and scrolled the log away. normal prints one line per item, detailed every
item with all its fields (ids in hex, as OTLP/JSON and the collector show them); sampling_initial /
sampling_thereafter bound those per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any, ClassVar, Literal, TextIO

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import Field

from gotel.component.contract import (
    ALL_SIGNALS,
    SHUTDOWN_DEADLINE,
    ComponentConfig,
    Context,
    Exporter,
    ExporterFactory,
)
from gotel.config.types import Duration
from gotel.pdata.batch import Batch, Signal, attr_dict


class Config(ComponentConfig):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sampling_initial: int = Field(2, ge=1, description="batches shown each second before sampling starts")
    sampling_thereafter: int = Field(1, ge=1, description="then every Nth batch is shown (1 = all)")
    summary_interval: Duration = Field(10.0, gt=0, description="basic: seconds between summary lines")


_ITEMS = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans", "spans"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics", "data points"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records", "log records"),
    Signal.PROFILES: ("resource_profiles", "scope_profiles", "profiles", "profiles"),
}


_SINGULAR = {Signal.TRACES: "span", Signal.METRICS: "metric", Signal.LOGS: "log record", Signal.PROFILES: "profile"}


def _item_line(signal: Signal, item: Any) -> str:
    if signal == Signal.TRACES:
        return (f"span {item.name!r} trace_id={item.trace_id.hex()} span_id={item.span_id.hex()} "
                f"kind={item.kind} duration={(item.end_time_unix_nano - item.start_time_unix_nano) / 1e6:.3f}ms "
                f"{attr_dict(item.attributes)}")
    if signal == Signal.METRICS:
        kind = item.WhichOneof("data") or "empty"
        n = len(getattr(item, kind).data_points) if kind != "empty" else 0
        return f"metric {item.name!r} {kind} unit={item.unit!r} points={n}"
    if signal == Signal.LOGS:
        body = item.body.string_value if item.body.HasField("string_value") else text_format.MessageToString(item.body, as_one_line=True)
        return f"log severity={item.severity_text or item.severity_number} body={body!r} {attr_dict(item.attributes)}"
    return f"profile id={item.profile_id.hex()} samples={len(item.samples)} duration={item.duration_nano / 1e9:.3f}s"


def _hex_ids(msg: Message) -> Message:
    """A copy whose id fields (trace_id, span_id, parent_span_id, profile_id, ...) hold their hex text,
    so text_format prints `trace_id: "5b8e..."` instead of escaped bytes."""
    out = type(msg)()
    out.CopyFrom(msg)

    def walk(m: Message) -> None:
        for fd, value in m.ListFields():
            if fd.type == FieldDescriptor.TYPE_BYTES and fd.name.endswith("_id"):
                if fd.is_repeated:
                    hexed = [v.hex().encode() for v in value]
                    del value[:]
                    value.extend(hexed)
                else:
                    setattr(m, fd.name, value.hex().encode())
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                if fd.is_repeated:
                    if not (fd.message_type.GetOptions().map_entry):
                        for v in value:
                            walk(v)
                else:
                    walk(value)

    walk(out)
    return out


class _Summary:
    """What the exporters of one id saw since the last line, and the process's drop and failure counters
    then, so that each line says what the pipeline lost meanwhile."""

    _ERRORS: ClassVar[dict[str, str]] = {"gotel_dropped_items": "dropped", "gotel_exporter_send_failed_items": "send failed",
               "gotel_receiver_refused_items": "refused"}

    def __init__(self, name: str, registry: Any, interval: float, out: TextIO | None) -> None:
        self.name = name
        self.registry = registry
        self.interval = interval
        self.out = out
        self.signals: dict[Signal, list[int]] = {}  # signal -> [items, batches]
        self.users = 0
        self.task: asyncio.Task[None] | None = None
        self.since = time.monotonic()
        self.errors_then = self._errors()

    def _errors(self) -> dict[str, float]:
        """Totals by kind and reason of the error counters, over every component of this process."""
        totals: dict[str, float] = {}
        for fam in self.registry.collect():
            what = self._ERRORS.get(fam.name)
            if what is None:
                continue
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    key = what + (f" ({smp.labels['reason']})" if "reason" in smp.labels else "")
                    totals[key] = totals.get(key, 0.0) + smp.value
        return totals

    def add(self, signal: Signal, items: int) -> None:
        c = self.signals.setdefault(signal, [0, 0])
        c[0] += items
        c[1] += 1

    def line(self) -> str:
        now = time.monotonic()
        secs = max(now - self.since, 1e-9)
        parts = []
        for sig in sorted(self.signals, key=str):
            items, batches = self.signals[sig]
            word = _ITEMS[sig][3]
            parts.append(f"{sig} {items:,} {word} ({items / secs:,.1f}/s, {batches:,} batches)" if items
                         else f"{sig} 0 {word}")
            self.signals[sig] = [0, 0]
        errors_now = self._errors()
        errs = {k: v - self.errors_then.get(k, 0.0) for k, v in errors_now.items()}
        self.errors_then, self.since = errors_now, now
        bad = ", ".join(f"{int(v):,} {k}" for k, v in sorted(errs.items()) if v > 0)
        return f"{self.name}: last {secs:.0f}s: " + "; ".join(parts) + f"; errors: {bad or 'none'}\n"

    def emit(self) -> None:
        out = self.out or sys.stderr
        out.write(self.line())
        out.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.emit()


_SUMMARIES: dict[tuple[str, Any], _Summary] = {}  # (exporter id, the Telemetry it counts in)


class DebugExporter(Exporter):
    mutates = False

    def __init__(self, signal: Signal, cfg: Config, ctx: Context, out: TextIO | None = None) -> None:
        self.signal = signal
        self.cfg = cfg
        self.ctx = ctx
        self.out = out
        self._second = 0
        self._seen = 0
        self._summary: _Summary | None = None

    def _sampled(self) -> bool:
        now = int(time.monotonic())
        if now != self._second:
            self._second, self._seen = now, 0
        self._seen += 1
        if self._seen <= self.cfg.sampling_initial:
            return True
        return (self._seen - self.cfg.sampling_initial) % self.cfg.sampling_thereafter == 0

    def render(self, batch: Batch) -> str:
        rfield, sfield, ifield, word = _ITEMS[self.signal]
        msg = batch.peek()
        resources = getattr(msg, rfield)
        n = batch.item_count()
        lines = [f"{self.ctx.id} {self.signal}: {len(resources)} resources, {n} {word}"]
        for i, res in enumerate(resources):
            ra = attr_dict(res.resource.attributes)
            lines.append(f"  resource #{i} {ra}")
            for scope in getattr(res, sfield):
                lines.append(f"    scope {scope.scope.name!r} {scope.scope.version}".rstrip())
                for item in getattr(scope, ifield):
                    if self.cfg.verbosity == "normal":
                        lines.append("      " + _item_line(self.signal, item))
                    else:
                        body = text_format.MessageToString(_hex_ids(item), indent=8)
                        lines.append(f"      {_SINGULAR[self.signal]}:\n{body.rstrip()}")
        return "\n".join(lines) + "\n"

    def _shared_summary(self) -> _Summary:
        if self._summary is None:
            key = (str(self.ctx.id), self.ctx.telemetry.t)
            summary = _SUMMARIES.get(key)
            if summary is None:
                summary = _SUMMARIES[key] = _Summary(str(self.ctx.id), self.ctx.telemetry.t.registry,
                                                     self.cfg.summary_interval, self.out)
            summary.signals.setdefault(self.signal, [0, 0])
            self._summary = summary
        return self._summary

    async def start(self) -> None:
        if self.cfg.verbosity == "basic":
            summary = self._shared_summary()
            summary.users += 1
            if summary.task is None:
                summary.task = asyncio.create_task(summary.run(), name=f"{self.ctx.id}-summary")

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        summary = self._summary
        if summary is None or summary.users == 0:
            return
        summary.users -= 1
        if summary.users == 0:  # the last signal of this id: the final, partial interval
            if summary.task is not None:
                summary.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await summary.task
            summary.emit()
            _SUMMARIES.pop((summary.name, self.ctx.telemetry.t), None)

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        if self.cfg.verbosity == "basic":
            self._shared_summary().add(self.signal, n)
        elif self._sampled():
            out = self.out or sys.stderr
            out.write(self.render(batch))
            out.flush()
        self.ctx.telemetry.sent(self.signal, n)


def create(signal: Signal, cfg: Config, ctx: Context) -> DebugExporter:
    return DebugExporter(signal, cfg, ctx)


factory = ExporterFactory(
    type="debug",
    config=Config,
    signals=ALL_SIGNALS,
    description="Prints what reaches it on stderr: a periodic summary (rates per signal, errors), or each item "
                "(the collector's debug exporter).",
    aliases=("logging",),
    create=create,
)
