"""`tail_sampling` processor: the collector's trace-complete sampling, with memory bounded two ways.

Spans are grouped by trace id and held until `decision_wait` after a trace's first span; then the
policies decide for the whole trace (drop policies first: any drop -> not sampled; else any sampled ->
sampled). Held spans are kept as OTLP wire bytes, one chunk per trace per incoming ResourceSpans, so a
sampled trace leaves as the concatenation of its chunks and nothing is re-encoded; a trace is parsed
once, when it is decided. At most `num_traces` traces are held, and at most `max_buffered_bytes` (gotel's
bound: the held wire bytes plus a fixed charge per trace and per chunk for the Python objects holding
them); to admit a new trace the oldest one goes, and one still undecided is counted as dropped too
early. Decided traces stay (without their spans) so late spans follow the decision, in the decision
caches when they are configured. Time comes from an injectable clock, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field, model_validator

from gotel.component.contract import (
    ComponentConfig,
    Consumer,
    ConsumerError,
    Context,
    Processor,
    ProcessorFactory,
    RefusedError,
)
from gotel.config.types import Duration
from gotel.pdata.batch import Batch, Signal, Traces
from gotel.pdata.wire import ld
from gotel.processors.tail_sampling_policies import Decision, PolicyCfg, TraceData, build

# Charges per held trace and per held chunk, beyond the chunk's bytes: the Python objects that hold
# them (trace record, id, map and queue entries; bytes object and list slot). Measured with tracemalloc
# by tests/unit/processors/test_tail_sampling.py, which holds the processor to max_buffered_bytes.
TRACE_OVERHEAD = 640
CHUNK_OVERHEAD = 64
DEFAULT_MAX_BUFFERED_BYTES = 256 << 20

PENDING, SAMPLED, NOT_SAMPLED, EVICTED = 0, 1, 2, 3


class DecisionCacheCfg(ComponentConfig):
    sampled_cache_size: int = Field(0, ge=0, description="trace ids remembered as sampled after release (0 = off)")
    non_sampled_cache_size: int = Field(0, ge=0, description="trace ids remembered as not sampled (0 = off)")


class Config(ComponentConfig):
    decision_wait: Duration = Field(30.0, gt=0, description="time from a trace's first span to its decision")
    num_traces: int = Field(50000, ge=1, description="traces held in memory; the oldest goes to admit a new one")
    expected_new_traces_per_sec: int = Field(0, ge=0, description="accepted for compatibility; Python maps grow by themselves")
    decision_cache: DecisionCacheCfg = Field(default_factory=DecisionCacheCfg)
    maximum_trace_size_bytes: int = Field(0, ge=0, description="a trace whose spans exceed this many bytes is not "
                                          "sampled and released at once (0 = no limit)")
    sample_on_first_match: bool = Field(False, description="stop evaluating at the first policy that samples")
    drop_pending_traces_on_shutdown: bool = Field(False, description="at shutdown, drop undecided traces instead "
                                                  "of deciding on what arrived")
    max_buffered_bytes: int = Field(DEFAULT_MAX_BUFFERED_BYTES, ge=1, description=(
        "gotel: bytes held at most (span wire bytes + 640 per trace + 64 per chunk); the oldest traces go first"))
    policies: list[PolicyCfg] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for p in self.policies:
            if p.name in seen:
                raise ValueError(f"duplicate policy name {p.name!r}")
            seen.add(p.name)
        return self


class _Trace:
    __slots__ = ("chunks", "decided_at", "decision", "first", "size", "spans")

    def __init__(self, first: float) -> None:
        self.first = first
        self.chunks: list[bytes] = []
        self.spans = 0
        self.size = 0
        self.decision = PENDING
        self.decided_at = 0.0


class _LRU:
    """Trace ids with a decision, most recent last; size 0 = remembers nothing (the collector's nop cache)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids: OrderedDict[bytes, None] = OrderedDict()

    def put(self, tid: bytes) -> bool:
        if not self.size:
            return False
        self.ids[tid] = None
        self.ids.move_to_end(tid)
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True

    def __contains__(self, tid: bytes) -> bool:
        if tid in self.ids:
            self.ids.move_to_end(tid)
            return True
        return False


def split_by_trace(req: Any) -> list[tuple[bytes, bytes, int]]:
    """(trace id, chunk, spans) for each trace of each ResourceSpans, in order of first appearance. A chunk is
    one ResourceSpans holding only that trace's spans, framed as a field of ExportTraceServiceRequest, so
    chunks concatenate into a request."""
    out: list[tuple[bytes, bytes, int]] = []
    for rs in req.resource_spans:
        ids = {sp.trace_id for ss in rs.scope_spans for sp in ss.spans}
        if len(ids) == 1:  # common: one trace per resource (an SDK's batch of one request)
            n = sum(len(ss.spans) for ss in rs.scope_spans)
            out.append((next(iter(ids)), ld(b"\x0a", rs.SerializeToString()), n))
            continue
        if not ids:
            continue
        head = ld(b"\x0a", rs.resource.SerializeToString()) if rs.HasField("resource") else b""
        tail = ld(b"\x1a", rs.schema_url.encode()) if rs.schema_url else b""
        per: dict[bytes, list[bytes]] = {}
        counts: dict[bytes, int] = {}
        for ss in rs.scope_spans:
            shead = ld(b"\x0a", ss.scope.SerializeToString()) if ss.HasField("scope") else b""
            stail = ld(b"\x1a", ss.schema_url.encode()) if ss.schema_url else b""
            groups: dict[bytes, list[bytes]] = {}
            for sp in ss.spans:
                groups.setdefault(sp.trace_id, []).append(ld(b"\x12", sp.SerializeToString()))
            for tid, spans in groups.items():
                per.setdefault(tid, []).append(ld(b"\x12", shead + b"".join(spans) + stail))
                counts[tid] = counts.get(tid, 0) + len(spans)
        for tid, scopes in per.items():
            out.append((tid, ld(b"\x0a", head + b"".join(scopes) + tail), counts[tid]))
    return out


class TailSamplingProcessor(Processor):
    # Incoming batches are only read: what leaves is new bytes.
    mutates = False

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.signal = signal
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        self.clock = clock
        self.wait = float(cfg.decision_wait)
        self.policies = [(p.name, p.type == "drop", build(p, clock)) for p in cfg.policies]
        self.policies.sort(key=lambda x: not x[1])  # drop policies first (stable)
        self.traces: OrderedDict[bytes, _Trace] = OrderedDict()
        # undecided traces in arrival order, which is deadline order (a trace leaves it when decided or evicted)
        self.due: OrderedDict[bytes, _Trace] = OrderedDict()
        self.bytes = 0
        self.sampled_cache = _LRU(cfg.decision_cache.sampled_cache_size)
        self.non_sampled_cache = _LRU(cfg.decision_cache.non_sampled_cache_size)
        self._ticker: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._dropped_early = 0
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._tally: dict[tuple[int, tuple[str, ...]], int] = {}
        self._last_log = 0.0
        t = ctx.telemetry
        p = "processor_tail_sampling_"
        self.m_too_early = t.counter(p + "sampling_trace_dropped_too_early",
                                     "Traces released before their decision to make room (num_traces or max_buffered_bytes).")
        self.m_too_early_spans = t.counter(p + "sampling_spans_dropped_too_early",
                                           "Spans of the traces dropped too early.")
        self.m_too_large = t.counter(p + "traces_dropped_too_large", "Traces over maximum_trace_size_bytes (not sampled).")
        self.m_new = t.counter(p + "new_trace_id_received", "Traces seen for the first time.")
        self.m_global = t.counter(p + "global_count_traces_sampled", "Final decisions, by outcome.", ("sampled", "decision"))
        self.m_policy = t.counter(p + "count_traces_sampled", "Decisions of each policy.", ("policy", "sampled", "decision"))
        self.m_policy_err = t.counter(p + "sampling_policy_evaluation_error", "Policies that failed on a trace.")
        self.m_cache = t.counter(p + "early_releases_from_cache_decision",
                                 "Spans that followed a cached decision.", ("sampled",))
        self.m_late = t.counter(p + "sampling_late_spans", "Spans that arrived after their trace's decision and "
                                "followed it.", ("sampled",))
        self.m_on_memory = t.gauge(p + "sampling_traces_on_memory", "Traces held (decided ones included).")
        self.m_bytes = t.gauge(p + "buffered_bytes", "Bytes charged against max_buffered_bytes.")

    # --- life cycle --------------------------------------------------------------------------------

    def tick_interval(self) -> float:
        """The collector decides on a 1 s tick; a shorter decision_wait gets a proportionally finer one."""
        return min(1.0, max(0.01, self.wait / 4))

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._ticker = asyncio.create_task(self._run(self._stop), name=f"{self.ctx.id}-decide")

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick_interval())
                return
            try:
                await self.tick()
            except Exception:
                self.ctx.logger.exception("%s: decision tick failed", self.ctx.id)

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self._ticker is not None:
            # a tick in progress finishes (its sampled spans are already out of memory), then the loop ends
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._ticker), max(0.1, deadline / 2))
            except TimeoutError:
                self._ticker.cancel()
            self._ticker = None
        if self.cfg.drop_pending_traces_on_shutdown:
            for tr in self.due.values():
                self.ctx.telemetry.dropped(self.signal, tr.spans, "shutdown")
            self.due.clear()
            return
        await self.tick(everything=True)

    # --- spans in ----------------------------------------------------------------------------------

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        if n == 0:
            return
        self.ctx.telemetry.processed(self.signal, n, 0)
        now = self.clock()
        out: list[bytes] = []
        out_spans = 0
        limit = self.cfg.maximum_trace_size_bytes
        for tid, chunk, spans in split_by_trace(batch.peek()):
            if tid in self.sampled_cache:
                self._count(self.m_cache, ("true",), spans)
                out.append(chunk)
                out_spans += spans
                continue
            if tid in self.non_sampled_cache:
                self._count(self.m_cache, ("false",), spans)
                continue
            tr = self.traces.get(tid)
            if tr is None:
                while len(self.traces) >= self.cfg.num_traces:
                    self._evict_oldest()
                tr = _Trace(now)
                self.traces[tid] = tr
                self.due[tid] = tr
                self.bytes += TRACE_OVERHEAD
                self._count(self.m_new, (), 1)
            tr.spans += spans
            if tr.decision == SAMPLED:
                self._count(self.m_late, ("true",), spans)
                out.append(chunk)
                out_spans += spans
                continue
            if tr.decision != PENDING:
                self._count(self.m_late, ("false",), spans)
                continue
            tr.size += len(chunk)
            if limit and tr.size > limit:
                self._count(self.m_too_large, (), 1)
                self._count(self.m_global, ("false", "not_sampled"), 1)
                self._release(tid, tr, NOT_SAMPLED, now)
                continue
            tr.chunks.append(chunk)
            self.bytes += len(chunk) + CHUNK_OVERHEAD
            while self.bytes > self.cfg.max_buffered_bytes and self.traces:
                self._evict_oldest()
        self._gauges()
        if out:
            await self._send(out, out_spans)

    def _charge(self, tr: _Trace) -> int:
        return sum(len(c) for c in tr.chunks) + CHUNK_OVERHEAD * len(tr.chunks)

    def _evict_oldest(self) -> None:
        tid, tr = self.traces.popitem(last=False)
        self.bytes -= TRACE_OVERHEAD + self._charge(tr)
        if tr.decision == PENDING:
            del self.due[tid]
            self._count(self.m_too_early, (), 1)
            self._count(self.m_too_early_spans, (), tr.spans)
            self._dropped_early += tr.spans
        tr.chunks = []
        tr.decision = EVICTED

    def _release(self, tid: bytes, tr: _Trace, decision: int, now: float) -> None:
        """Frees a decided trace's spans; with a decision cache the trace leaves the map too."""
        self.bytes -= self._charge(tr)
        self.due.pop(tid, None)
        tr.chunks = []
        tr.decision = decision
        tr.decided_at = now
        cache = self.sampled_cache if decision == SAMPLED else self.non_sampled_cache
        if cache.put(tid) and self.traces.pop(tid, None) is not None:
            self.bytes -= TRACE_OVERHEAD

    # --- decisions ---------------------------------------------------------------------------------

    def decide(self, td: TraceData) -> Decision:
        """The collector's rule: any drop -> not sampled; else any sampled -> sampled; else not sampled."""
        sampled = False
        for name, _, policy in self.policies:
            try:
                d = policy(td)
            except Exception as e:  # a policy bug must not lose the trace's decision
                self._count(self.m_policy_err, (), 1)
                self.ctx.logger.debug("%s: policy %s failed: %s", self.ctx.id, name, e)
                continue
            if d == Decision.DROPPED:
                self._count(self.m_policy, (name, "false", "dropped"), 1)
                return Decision.DROPPED
            if d == Decision.SAMPLED:
                self._count(self.m_policy, (name, "true", "sampled"), 1)
                sampled = True
                if self.cfg.sample_on_first_match:
                    break
            else:
                self._count(self.m_policy, (name, "false", "not_sampled"), 1)
        return Decision.SAMPLED if sampled else Decision.NOT_SAMPLED

    async def tick(self, everything: bool = False) -> int:
        """Decides every trace whose decision_wait has passed (every pending one if `everything`) and
        sends the sampled ones on as one batch. Returns how many traces were decided."""
        now = self.clock()
        out: list[bytes] = []
        out_spans = 0
        decided = 0
        while self.due:
            tid, tr = next(iter(self.due.items()))
            if not everything and tr.first + self.wait > now:
                break
            del self.due[tid]
            req = ExportTraceServiceRequest.FromString(b"".join(tr.chunks))
            d = self.decide(TraceData(tid, tr.spans, tr.size, req.resource_spans))
            decided += 1
            if d == Decision.SAMPLED:
                self._count(self.m_global, ("true", "sampled"), 1)
                out.extend(tr.chunks)
                out_spans += tr.spans
                self._release(tid, tr, SAMPLED, now)
            else:
                self._count(self.m_global, ("false", "dropped" if d == Decision.DROPPED else "not_sampled"), 1)
                self._release(tid, tr, NOT_SAMPLED, now)
        self._gauges()
        if out:
            await self._send(out, out_spans)
        return decided

    def _count(self, metric: Any, labels: tuple[str, ...], n: int) -> None:
        """Counts in a plain dict; _gauges() adds them to the self-metrics once per call (a labelled
        prometheus increment per trace and policy cost a fifth of the processor's time)."""
        key = (id(metric), labels)
        if key not in self._children:
            self._children[key] = metric.labels(*labels)
        self._tally[key] = self._tally.get(key, 0) + n

    def _gauges(self) -> None:
        for key, n in self._tally.items():
            self._children[key].inc(n)
        self._tally.clear()
        if self._dropped_early:
            self.ctx.telemetry.dropped(self.signal, self._dropped_early, "tail_sampling_dropped_too_early")
            self._dropped_early = 0
        self.m_on_memory.set(len(self.traces))
        self.m_bytes.set(self.bytes)

    async def _send(self, chunks: Iterable[bytes], n: int) -> None:
        self.ctx.telemetry.processed(self.signal, 0, n)
        try:
            await self.next.consume(Traces(raw=b"".join(chunks), count=n))
        except ConsumerError as e:
            reason = "refused" if isinstance(e, RefusedError) else "downstream_error"
            self.ctx.telemetry.dropped(self.signal, n, reason)
            now = time.monotonic()
            if now - self._last_log >= 1.0:
                self._last_log = now
                self.ctx.logger.warning("%s: dropped %d sampled spans: %s", self.ctx.id, n, e)


def create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> TailSamplingProcessor:
    return TailSamplingProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="tail_sampling",
    config=Config,
    signals=frozenset({Signal.TRACES}),
    description=("Samples whole traces after decision_wait by policies (the collector's tail_sampling), memory "
                 "bounded by num_traces and max_buffered_bytes; plus deadline_missed."),
    create=create,
)
