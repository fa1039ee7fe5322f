"""`attributes` processor: the collector's attribute actions on span, log record and metric data point
attributes (the engine is gotel.processorhelper.attraction, shared with `resource`), limited to the items chosen by
`include`/`exclude` (gotel.processorhelper.matchprops). For metrics, as in the collector, `include`/`exclude` choose
metrics by `metric_names`; every data point of a chosen metric is acted on."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.pdata.batch import Batch, Signal
from gotel.processorhelper.attraction import ActionConfig, AttrActions
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
        wire = batch.cached_bytes()
        if wire is not None and not self.engine.may_act(wire):
            return  # none of the keys the actions need is in the request: its bytes pass untouched
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
