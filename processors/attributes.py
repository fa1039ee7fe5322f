"""`attributes` processor: the collector's attribute actions on span, log record and metric data point
attributes (the engine is gotel.processorhelper.attraction, shared with `resource`), limited to the items chosen by
`include`/`exclude` (gotel.processorhelper.matchprops). For metrics, as in the collector, `include`/`exclude` choose
metrics by `metric_names`; every data point of a chosen metric is acted on.

Without include/exclude, when every action needs a key (delete, hash, update, convert, extract, or a
copy from an attribute without default_value), a request that still has its received bytes is worked on
at the byte level: only the spans, log records or metrics whose own bytes hold one of those keys are
decoded, acted on by the same engine and encoded again; the rest is copied as it came."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.wire import ItemBytes, framing
from gotel.processorhelper.attraction import ActionConfig, AttrActions, process_on_wire
from gotel.processorhelper.matchprops import Matcher, MatchProperties, problem

SIGNALS = frozenset((Signal.TRACES, Signal.METRICS, Signal.LOGS))


class Config(ComponentConfig):
    actions: list[ActionConfig] = Field(default_factory=list, description="run in order on every chosen item")
    include: MatchProperties | None = Field(None, description="act only on items these properties match")
    exclude: MatchProperties | None = Field(None, description="never act on items these properties match")

    @model_validator(mode="after")
    def _actions(self) -> Config:
        if not self.actions:
            raise ValueError('missing required key "actions" (a list of attribute actions)')
        return self


def _points(metric: Any) -> Any:
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else ()


class AttributesProcessor(Processor):
    mutates = True

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        bad = problem(cfg.include, cfg.exclude, signal)
        if bad:
            raise ValueError(f"{ctx.id}: {bad}")
        self.signal = signal
        self.next = nxt
        self.ctx = ctx
        self.engine = AttrActions(cfg.actions)
        self.include = Matcher(cfg.include, signal) if cfg.include is not None else None
        self.exclude = Matcher(cfg.exclude, signal) if cfg.exclude is not None else None

    async def consume(self, batch: Batch) -> None:
        self.process(batch)
        await self.next.consume(batch)

    def process(self, batch: Batch) -> None:
        if process_on_wire(batch, self.engine, self.on_wire):
            return
        apply = self.engine.apply
        if self.signal == Signal.METRICS:
            inc = self.include.names if self.include is not None else None
            exc = self.exclude.names if self.exclude is not None else None
            for rm in batch.resources():
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if (inc is not None and not inc(m.name)) or (exc is not None and exc(m.name)):
                            continue
                        for dp in _points(m):
                            apply(dp.attributes)
            return
        spans = self.signal == Signal.TRACES
        scope_field, item_field = ("scope_spans", "spans") if spans else ("scope_logs", "log_records")
        inc_m, exc_m = self.include, self.exclude
        for r in batch.resources():
            res = r.resource
            for s in getattr(r, scope_field):
                items = getattr(s, item_field)
                if inc_m is None and exc_m is None:
                    for it in items:
                        apply(it.attributes)
                    continue
                inc_scope = inc_m.scope_match(res, s.scope) if inc_m is not None else True
                exc_scope = exc_m.scope_match(res, s.scope) if exc_m is not None else False
                if inc_m is not None and not inc_scope:
                    continue
                for it in items:
                    if inc_m is not None and not (inc_m.span_match(it) if spans else inc_m.log_match(it)):
                        continue
                    if exc_m is not None and exc_scope and (exc_m.span_match(it) if spans else exc_m.log_match(it)):
                        continue
                    apply(it.attributes)


    def on_wire(self, wire: bytes) -> bytes | None:
        """The request with the actions run on the items whose bytes hold a key they need, the others
        copied as they came; `wire` itself when nothing changed; None when the message path must run."""
        triggers = self.engine.triggers
        if triggers is None or self.include is not None or self.exclude is not None:
            return None
        try:
            fr = framing(wire)
        except DecodeError:
            return None
        apply = self.engine.apply
        item: Any = {Signal.TRACES: Span, Signal.LOGS: LogRecord, Signal.METRICS: Metric}[self.signal]()
        changed = False
        for (ri, si), iis in sorted(ItemBytes(fr).containing(triggers).items()):
            items = fr.resources[ri].scopes[si].items
            for ii in sorted(iis):
                old = items[ii]
                item.ParseFromString(old)
                if self.signal == Signal.METRICS:
                    for dp in _points(item):
                        apply(dp.attributes)
                else:
                    apply(item.attributes)
                new = item.SerializeToString()
                if new != old:
                    items[ii] = new
                    changed = True
        return bytes(fr.SerializeToString()) if changed else wire


def _signal_problem(cfg: Config, signal: Signal) -> str | None:
    return problem(cfg.include, cfg.exclude, signal)


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return AttributesProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="attributes",
    config=Config,
    signals=SIGNALS,
    description="insert, update, upsert, delete, hash (SHA-256), extract, convert span/log/data point attributes; "
    "include/exclude by service, name, kind, attributes, resource, library, log body/severity, metric name.",
    create=_create,
    signal_problem=_signal_problem,
)
