"""`debug` exporter: shows what flows through a pipeline on stderr (the collector's debug exporter).

verbosity basic prints one line per batch with counts; normal one line per item; detailed every
item with all its fields. sampling_initial / sampling_thereafter bound the output per second.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal, TextIO

from google.protobuf import text_format
from pydantic import Field

from gotel.component import ALL_SIGNALS, ComponentConfig, Context, Exporter, ExporterFactory
from gotel.pdata import Batch, Signal, attr_dict


class Config(ComponentConfig):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sampling_initial: int = Field(2, ge=1, description="batches shown each second before sampling starts")
    sampling_thereafter: int = Field(1, ge=1, description="then every Nth batch is shown (1 = all)")


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


class DebugExporter(Exporter):
    mutates = False

    def __init__(self, signal: Signal, cfg: Config, ctx: Context, out: TextIO | None = None) -> None:
        self.signal = signal
        self.cfg = cfg
        self.ctx = ctx
        self.out = out
        self._second = 0
        self._seen = 0

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
        if self.cfg.verbosity == "basic":
            return lines[0] + "\n"
        for i, res in enumerate(resources):
            ra = attr_dict(res.resource.attributes)
            lines.append(f"  resource #{i} {ra}")
            for scope in getattr(res, sfield):
                lines.append(f"    scope {scope.scope.name!r} {scope.scope.version}".rstrip())
                for item in getattr(scope, ifield):
                    if self.cfg.verbosity == "normal":
                        lines.append("      " + _item_line(self.signal, item))
                    else:
                        body = text_format.MessageToString(item, indent=8)
                        lines.append(f"      {_SINGULAR[self.signal]}:\n{body.rstrip()}")
        return "\n".join(lines) + "\n"

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        if self._sampled():
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
    description="Prints what reaches it on stderr: counts per batch, or each item (the collector's debug exporter).",
    aliases=("logging",),
    create=create,
)
