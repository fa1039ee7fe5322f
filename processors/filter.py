"""`filter` processor: drops spans, span events, metrics, data points and log records matching OTTL
conditions, with the collector's config (filterprocessor, v0.161.0).

Two styles, as the collector has them: the older per-context lists (``traces: {resource, span,
spanevent}``, ``metrics: {resource, metric, datapoint}``, ``logs: {resource, log_record}``) and the
newer ``trace_conditions`` / ``metric_conditions`` / ``log_conditions``, flat or in groups with their
own ``context`` and ``error_mode``, whose context is inferred from the paths' prefixes. Conditions are
ORed; a match drops. Higher levels are decided first (resource, scope, item, then span events or data
points); a metric whose data points are all dropped goes too, a span whose events are all dropped
stays; empty scopes and resources are removed. Every condition is compiled when the config is
validated: one gotel cannot evaluate is a config error at its line and column, never a silent pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from google.protobuf.message import DecodeError
from pydantic import AfterValidator, Discriminator, Field, Tag, ValidationInfo, model_validator

from gotel.component.contract import (
    ComponentConfig,
    Consumer,
    Context,
    PermanentError,
    Processor,
    ProcessorFactory,
)
from gotel.ottl import (
    HIERARCHY,
    ConditionSet,
    ErrorMode,
    Item,
    OttlEvalError,
    OttlSyntaxError,
    compile_condition,
)
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.wire import ItemBytes, framing, framing_without

_LEGACY_MATCH = ("include", "exclude", "regexp")
_SIGNAL_OF = {"trace_conditions": "traces", "metric_conditions": "metrics", "log_conditions": "logs"}


def _checked(signal: str, context: str | None) -> Callable[[str], str]:
    """A validator compiling one condition in a fixed context (None: inferred from its paths)."""

    def check(v: str) -> str:
        compile_condition(v, signal, context)  # OttlSyntaxError is a ValueError: pydantic reports it
        return v

    return check


def _cond(signal: str, context: str | None) -> Any:
    return Annotated[str, AfterValidator(_checked(signal, context))]


def _reject_legacy(data: Any, where: str) -> Any:
    if isinstance(data, dict):
        for k in _LEGACY_MATCH:
            if k in data:
                raise ValueError(f'"{k}" (the older match_type/include/exclude filtering) is not supported by '
                                 f"gotel: write OTTL conditions under {where} instead")
    return data


class TracesFilter(ComponentConfig):
    resource: list[_cond("traces", "resource")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    span: list[_cond("traces", "span")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    spanevent: list[_cond("traces", "spanevent")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function


class MetricsFilter(ComponentConfig):
    resource: list[_cond("metrics", "resource")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    metric: list[_cond("metrics", "metric")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    datapoint: list[_cond("metrics", "datapoint")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _reject_legacy(data, "metrics::metric or metrics::datapoint")


class LogsFilter(ComponentConfig):
    resource: list[_cond("logs", "resource")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    log_record: list[_cond("logs", "log")] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _reject_legacy(data, "logs::log_record")


def _group_condition(signal: str) -> Any:
    def check(v: str, info: ValidationInfo) -> str:
        if "context" in info.data:  # else the context itself was wrong, and reported
            compile_condition(v, signal, info.data["context"])
        return v

    return Annotated[str, AfterValidator(check)]


class _Group(ComponentConfig):
    signal: ClassVar[str]
    context: str | None = Field(None, description="the OTTL context of every condition; inferred when unset")
    error_mode: ErrorMode | None = Field(None, description="overrides the processor's error_mode for this group")
    conditions: list[str]

    @model_validator(mode="before")
    @classmethod
    def _context(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("context") is not None:
            valid = HIERARCHY[cls.signal]
            if data["context"] not in valid:
                raise ValueError(f'unknown context "{data["context"]}" for {cls.signal} (valid: {", ".join(valid)})')
        return data


class TraceGroup(_Group):
    signal: ClassVar[str] = "traces"
    conditions: list[_group_condition("traces")]  # type: ignore[valid-type]  # condition types built per signal by a function


class MetricGroup(_Group):
    signal: ClassVar[str] = "metrics"
    conditions: list[_group_condition("metrics")]  # type: ignore[valid-type]  # condition types built per signal by a function


class LogGroup(_Group):
    signal: ClassVar[str] = "logs"
    conditions: list[_group_condition("logs")]  # type: ignore[valid-type]  # condition types built per signal by a function


def _entry(signal: str, group: type[_Group]) -> Any:
    """A list entry: a condition string (context inferred) or a group; tags in [] stay out of error paths."""
    return Annotated[
        Annotated[_cond(signal, None), Tag("condition[str]")] | Annotated[group, Tag("group[obj]")],
        Discriminator(lambda v: "condition[str]" if isinstance(v, str) else "group[obj]"),
    ]


class Config(ComponentConfig):
    error_mode: ErrorMode = Field("ignore", description="ignore (log and go on), silent, or propagate (refuse the batch)")
    traces: TracesFilter = Field(default_factory=TracesFilter)
    metrics: MetricsFilter = Field(default_factory=MetricsFilter)
    logs: LogsFilter = Field(default_factory=LogsFilter)
    trace_conditions: list[_entry("traces", TraceGroup)] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    metric_conditions: list[_entry("metrics", MetricGroup)] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function
    log_conditions: list[_entry("logs", LogGroup)] | None = None  # type: ignore[valid-type]  # condition types built per signal by a function

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "spans" in data:
                raise ValueError('"spans" (the older include/exclude span filtering) is not supported by gotel: '
                                 "write OTTL conditions under trace_conditions or traces::span instead")
            if "profiles" in data or "profile_conditions" in data:
                raise ValueError("gotel's filter processor does not filter profiles yet")
        return data

    @model_validator(mode="after")
    def _styles(self) -> Config:
        for key, legacy, names in (("trace_conditions", self.traces, "traces::resource, traces::span, traces::spanevent"),
                                   ("metric_conditions", self.metrics,
                                    "metrics::resource, metrics::metric, metrics::datapoint"),
                                   ("log_conditions", self.logs, "logs::resource, logs::log_record")):
            entries = getattr(self, key)
            if not entries:
                continue
            if any(getattr(legacy, f) is not None for f in type(legacy).model_fields):
                raise ValueError(f'{key} and {names} cannot be used together: write them all in {key}')
            kinds = {isinstance(e, str) for e in entries}
            if len(kinds) > 1:
                raise ValueError(f"{key} mixes plain conditions and groups (context/conditions): use one style only")
        return self


# --- evaluation ---


@dataclass
class _Stage:
    """One group of conditions, split by the context each is evaluated in."""

    resource: ConditionSet
    scope: ConditionSet
    item: ConditionSet
    sub: ConditionSet

    def cannot_match(self, raw: bytes | None) -> bool:
        """Whether the request's wire bytes prove that no condition of this stage matches anything in it."""
        sets = [s for s in (self.resource, self.scope, self.item, self.sub) if s]
        return raw is not None and all(s.cannot_match(raw) for s in sets)


def _points(m: Any) -> Any:
    kind = m.WhichOneof("data")
    return getattr(m, kind).data_points if kind else None


# signal -> (resource list, scope list, item list, sub-items of an item, drop the item when its sub-items are gone)
_SHAPE: dict[Signal, tuple[str, str, str, Callable[[Any], Any] | None, bool]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans", lambda s: s.events, False),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics", _points, True),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records", None, False),
}


_Found = dict[tuple[int, int], set[int]]
# (conditions every item needs evaluated, per (resource, scope) the items some proved condition may match
# with the conditions to evaluate for each)
_Plan = tuple[tuple[int, ...], dict[tuple[int, int], dict[int, tuple[int, ...]]]]
_NO_ITEMS: dict[int, tuple[int, ...]] = {}


class _ItemIndex:
    """The items of a received request as raw bytes (gotel.pdata.wire.framing), to find the items a
    string occurs in and to cut items out without encoding anything again."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.framing: Any = None  # parsed when first needed
        self.items: ItemBytes | None = None  # joined when a needle occurs somewhere in raw

    def frame(self) -> Any:
        if self.framing is None:
            self.framing = framing(self.raw)
        return self.framing

    def plan(self, cset: ConditionSet) -> _Plan | None:
        """Which conditions of cset to evaluate for which item: those without a byte proof for every
        item, the others only for items whose own bytes hold what they need. None: no proof at all."""
        proofs = cset.item_proofs
        if all(p is None for p in proofs):
            return None
        base = tuple(k for k, p in enumerate(proofs) if p is None)
        per: dict[tuple[int, int], dict[int, set[int]]] = {}
        for k, p in enumerate(proofs):
            if p is None:
                continue
            for key, iis in self.containing(p).items():
                d = per.setdefault(key, {})
                for ii in iis:
                    d.setdefault(ii, set(base)).add(k)
        return base, {key: {ii: tuple(sorted(ks)) for ii, ks in d.items()} for key, d in per.items()}

    def containing(self, needles: frozenset[bytes]) -> _Found:
        if not any(n in self.raw for n in needles):
            return {}  # no item can hold what is nowhere in the request: no need to look at its items
        if self.items is None:
            self.items = ItemBytes(self.frame())
        return self.items.containing(needles)


@dataclass
class _Deleted:
    """What a stage removed, by index in the request as received: enough to cut the same parts out of
    its wire bytes instead of serializing the edited message (valid while nothing inside an item
    changed, i.e. no span event or data point was removed)."""

    resources: set[int]
    scopes: dict[int, set[int]]
    items: dict[tuple[int, int], set[int]]
    inside_items: bool = False


def _delete(rep: Any, idx: list[int]) -> None:
    for i in reversed(idx):
        del rep[i]


class FilterProcessor(Processor):
    mutates = True

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.signal = signal
        self.next = nxt
        self.ctx = ctx
        self.stages = self._stages(signal, cfg, ctx)
        self._last_log = 0.0
        self.deleted: _Deleted | None = None
        self.index: _ItemIndex | None = None

    @staticmethod
    def _stages(signal: Signal, cfg: Config, ctx: Context) -> list[_Stage]:
        sig = signal.value
        order = HIERARCHY[sig]
        groups: list[tuple[list[tuple[str, str | None]], ErrorMode]] = []
        new = {Signal.TRACES: cfg.trace_conditions, Signal.METRICS: cfg.metric_conditions,
               Signal.LOGS: cfg.log_conditions}[signal]
        if new:
            plain = [e for e in new if isinstance(e, str)]
            if plain:
                groups.append(([(c, None) for c in plain], cfg.error_mode))
            for g in new:
                if isinstance(g, _Group):
                    groups.append(([(c, g.context) for c in g.conditions], g.error_mode or cfg.error_mode))
        else:
            legacy = {Signal.TRACES: (("resource", cfg.traces.resource), ("span", cfg.traces.span),
                                      ("spanevent", cfg.traces.spanevent)),
                      Signal.METRICS: (("resource", cfg.metrics.resource), ("metric", cfg.metrics.metric),
                                       ("datapoint", cfg.metrics.datapoint)),
                      Signal.LOGS: (("resource", cfg.logs.resource), ("log", cfg.logs.log_record))}[signal]
            conds: list[tuple[str, str | None]] = [(c, cx) for cx, lst in legacy for c in lst or ()]
            if conds:
                groups.append((conds, cfg.error_mode))
        stages = []
        for conds, mode in groups:
            by_ctx: dict[str, list[Any]] = {c: [] for c in order}
            for text, explicit in conds:
                c = compile_condition(text, sig, explicit)
                by_ctx[c.context].append(c)
            where = str(ctx.id)
            sets = [ConditionSet(by_ctx[c], mode, ctx.logger, where) for c in order]
            empty = ConditionSet([], mode, ctx.logger, where)
            if signal == Signal.LOGS:
                sets.append(empty)
            stages.append(_Stage(*sets))
        return stages

    async def consume(self, batch: Batch) -> None:
        n_in = batch.item_count()
        if not self.stages:
            self.ctx.telemetry.processed(self.signal, n_in, n_in)
            await self.next.consume(batch)
            return
        try:
            changed, subs = self._filter(batch.peek(), batch.cached_bytes())
        except OttlEvalError as e:
            self.ctx.telemetry.processed(self.signal, n_in, 0)
            self.ctx.telemetry.dropped(self.signal, n_in, "filter_error")
            now = time.monotonic()
            if now - self._last_log >= 1.0:
                self._last_log = now
                self.ctx.logger.warning("%s: dropped %d %s (error_mode propagate): %s", self.ctx.id, n_in,
                                        self.signal, e)
            raise PermanentError(str(e)) from e
        if changed:
            raw = batch.cached_bytes()
            batch.msg  # noqa: B018 - the message was edited in place: its cached wire bytes are stale
            d = self.deleted
            if raw is not None and d is not None and not d.inside_items:
                with contextlib.suppress(DecodeError, IndexError):  # else the exporter serializes
                    fr = self.index.frame() if self.index is not None else framing(raw)
                    batch.set_wire(framing_without(fr, d.resources, d.scopes, d.items))
        n_out = batch.item_count() if changed else n_in
        self.ctx.telemetry.processed(self.signal, n_in, n_out)
        if n_in > n_out:
            self.ctx.telemetry.dropped(self.signal, n_in - n_out, "filtered")
        if subs:
            self.ctx.telemetry.dropped(self.signal, subs, "filtered_span_events")
        if not batch.peek_resources():
            return  # everything was filtered out: nothing goes on (the collector skips the rest too)
        await self.next.consume(batch)

    def _filter(self, msg: Any, raw: bytes | None) -> tuple[bool, int]:
        """Runs every stage over the request in place; returns (anything removed, span events removed).
        A stage whose conditions the wire bytes rule out only removes what is empty (as evaluating
        would): what stages before it removed can only take bytes away, so the proof holds for each."""
        changed = False
        subs = 0
        where: _ItemIndex | None = None
        self.deleted = _Deleted(set(), {}, {}) if raw is not None and len(self.stages) == 1 else None
        self.index = None
        for st in self.stages:
            if st.cannot_match(raw):
                changed |= self._prune(st, msg, self.deleted)
                continue
            plan_item = plan_sub = None
            # conditions an item's own bytes rule out are not evaluated for it; the index is valid while
            # the message is still the one the bytes encode (and metrics emptied of points go too: all)
            if raw is not None and not changed and not (st.sub and self.signal == Signal.METRICS):
                try:
                    if where is None and any(p is not None for c in (st.item, st.sub) for p in c.item_proofs):
                        where = _ItemIndex(raw)
                    if where is not None:
                        plan_item = where.plan(st.item) if st.item else None
                        plan_sub = where.plan(st.sub) if st.sub else None
                        self.index = where
                except DecodeError:  # the framing does not parse: evaluate every item
                    raw = None
                    where = plan_item = plan_sub = None
            c, n = self._walk(st, msg, plan_item, plan_sub, self.deleted)
            changed |= c
            subs += n
        return changed, subs

    def _prune(self, st: _Stage, msg: Any, deleted: _Deleted | None = None) -> bool:
        """What a stage removes when none of its conditions matches: empty resources, empty scopes (when it
        has conditions below the resource), metrics without data points (when it has data point conditions)."""
        res_f, scope_f, item_f, sub_of, drop_emptied = _SHAPE[self.signal]
        below_res = bool(st.scope or st.item or st.sub)
        below_scope = bool(st.item or st.sub)
        resources = getattr(msg, res_f)
        drop_r: list[int] = []
        changed = False
        for ri, rs in enumerate(resources):
            scopes = getattr(rs, scope_f)
            if below_res:
                drop_s: list[int] = []
                for si, ss in enumerate(scopes):
                    items = getattr(ss, item_f)
                    if below_scope and st.sub and drop_emptied and sub_of is not None:
                        drop_i = [ii for ii, item in enumerate(items) if (p := sub_of(item)) is not None and not p]
                        if drop_i:
                            _delete(items, drop_i)
                            changed = True
                            if deleted is not None:
                                deleted.items[(ri, si)] = set(drop_i)
                    if below_scope and not items:
                        drop_s.append(si)
                if drop_s:
                    _delete(scopes, drop_s)
                    changed = True
                    if deleted is not None:
                        deleted.scopes[ri] = set(drop_s)
            if not scopes:
                drop_r.append(ri)
        if drop_r:
            _delete(resources, drop_r)
            changed = True
            if deleted is not None:
                deleted.resources.update(drop_r)
        return changed

    def _walk(self, st: _Stage, msg: Any, plan_item: _Plan | None = None, plan_sub: _Plan | None = None,  # noqa: C901 (the per-item hot path, kept inline)
              deleted: _Deleted | None = None) -> tuple[bool, int]:
        """One stage over the message. plan_item / plan_sub: which item / span event conditions to
        evaluate for which item (None: all of them for every item)."""
        res_f, scope_f, item_f, sub_of, drop_emptied = _SHAPE[self.signal]
        it = Item()
        changed = False
        subs_dropped = 0
        resources = getattr(msg, res_f)
        below_res = bool(st.scope or st.item or st.sub)
        below_scope = bool(st.item or st.sub)
        res_match = st.resource.matches if st.resource else None
        scope_match = st.scope.matches if st.scope else None
        item_match = st.item.matches if st.item else None
        sub_match = st.sub.matches if st.sub and sub_of is not None else None
        drop_r: list[int] = []
        for ri, rs in enumerate(resources):
            it.resource = rs.resource
            if res_match is not None and res_match(it):
                drop_r.append(ri)
                continue
            scopes = getattr(rs, scope_f)
            if not below_res:
                if not scopes:
                    drop_r.append(ri)
                continue
            drop_s: list[int] = []
            for si, ss in enumerate(scopes):
                it.scope = ss.scope
                if scope_match is not None and scope_match(it):
                    drop_s.append(si)
                    continue
                items = getattr(ss, item_f)
                if not below_scope:
                    if not items:
                        drop_s.append(si)
                    continue
                drop_i: list[int] = []
                key = (ri, si)
                ci = None if plan_item is None else plan_item[1].get(key, _NO_ITEMS)
                cs = None if plan_sub is None else plan_sub[1].get(key, _NO_ITEMS)
                if (item_match is not None and (plan_item is None or plan_item[0])) or \
                        (sub_match is not None and (plan_sub is None or plan_sub[0])):
                    indices: Any = range(len(items))
                else:
                    indices = sorted({*(ci or ()), *(cs or ())})
                for ii in indices:
                    item = items[ii]
                    it.item = item
                    if item_match is not None:
                        if ci is None:
                            hit = item_match(it)
                        else:
                            which = ci.get(ii, plan_item[0])  # type: ignore[index]  # plan tuples checked non-None by the caller
                            hit = bool(which) and st.item.matches_some(it, which)
                        if hit:
                            drop_i.append(ii)
                            continue
                    sub_which: tuple[int, ...] | None = None
                    if cs is not None:
                        sub_which = cs.get(ii, plan_sub[0])  # type: ignore[index]  # plan tuples checked non-None by the caller
                        if not sub_which:
                            continue
                    if sub_match is not None:
                        points = sub_of(item)  # type: ignore[misc]  # sub_of is set together with st.sub
                        if points is None:
                            continue
                        drop_p: list[int] = []
                        for pi, p in enumerate(points):
                            it.sub = p
                            if sub_match(it) if sub_which is None else st.sub.matches_some(it, sub_which):
                                drop_p.append(pi)
                        if drop_p:
                            _delete(points, drop_p)
                            changed = True
                            if deleted is not None:
                                deleted.inside_items = True
                            if not drop_emptied:
                                subs_dropped += len(drop_p)
                        if drop_emptied and not points:
                            drop_i.append(ii)
                if drop_i:
                    _delete(items, drop_i)
                    changed = True
                    if deleted is not None:
                        deleted.items[key] = set(drop_i)
                if not items:
                    drop_s.append(si)
            if drop_s:
                _delete(scopes, drop_s)
                changed = True
                if deleted is not None:
                    deleted.scopes[ri] = set(drop_s)
            if not scopes:
                drop_r.append(ri)
        if drop_r:
            _delete(resources, drop_r)
            changed = True
            if deleted is not None:
                deleted.resources.update(drop_r)
        return changed, subs_dropped


def create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> FilterProcessor:
    return FilterProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="filter",
    config=Config,
    signals=frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS}),
    description="Drops spans, span events, metrics, data points and log records matching OTTL conditions "
    "(the collector's filter processor).",
    create=create,
)

__all__ = ["Config", "FilterProcessor", "OttlSyntaxError", "factory"]
