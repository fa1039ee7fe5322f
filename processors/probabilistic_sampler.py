"""`probabilistic_sampler` processor: the collector's sampler, item by item, so that gotel and a collector
given the same `hash_seed` keep exactly the same traces.

Modes (the collector's): `hash_seed` (default) hashes the trace id with FNV-1a seeded by `hash_seed` into
14-bit buckets; `proportional` and `equalizing` use the trace id's low 56 bits (or an `rv` in the
W3C tracestate `ot=` member) against a threshold, as OpenTelemetry's consistent sampling specifies.
Kept spans carry the threshold they were sampled at (`ot=th:...`; hash_seed mode also writes its
randomness, `rv:`), so a later stage can sample further without breaking consistency.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.pdata.batch import Batch, Signal

MAX_ADJUSTED = 1 << 56
NUM_HEX = 14
MIN_PROBABILITY = 1.0 / MAX_ADJUSTED
ALWAYS = 0  # threshold that samples everything
NEVER = MAX_ADJUSTED  # threshold that samples nothing
ALL_RANDOMNESS = MAX_ADJUSTED - 1
BUCKETS_LG2 = 14
BUCKETS = 1 << BUCKETS_LG2
FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193


class Config(ComponentConfig):
    sampling_percentage: float = Field(0.0, description="percentage of traces/logs kept (float32, as the collector)")
    hash_seed: int = Field(0, ge=0, le=0xFFFFFFFF, description="the same seed on every tier keeps the same traces")
    mode: Literal["", "hash_seed", "proportional", "equalizing"] = ""
    sampling_precision: int = Field(4, ge=1, le=NUM_HEX, description="hex digits of the threshold written")
    fail_closed: bool = Field(True, description="drop items whose randomness or tracestate is missing/invalid")
    attribute_source: Literal["traceID", "record"] = Field("traceID", description="logs: hash the trace id or "
                                                                                   "from_attribute")
    from_attribute: str = Field("", description="logs: attribute hashed when attribute_source is record")
    sampling_priority: str = Field("", description="logs: attribute whose number (0-100) overrides the rate")

    @model_validator(mode="after")
    def _rate(self) -> Config:
        pct = f32(self.sampling_percentage)
        if math.isinf(pct) or math.isnan(pct):
            raise ValueError(f"sampling rate is invalid: {pct}%")
        ratio = pct / 100.0
        if ratio < 0:
            raise ValueError(f"sampling rate is negative: {pct}%")
        if 0 < ratio < MIN_PROBABILITY:
            raise ValueError(f"sampling rate is too small: {pct}%")
        return self


def f32(x: float) -> float:
    """x rounded to float32, as the collector holds sampling_percentage."""
    try:
        return float(struct.unpack("f", struct.pack("f", x))[0])
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def fnv32a_seeded(data: bytes, seed: int) -> int:
    """FNV-1a 32 over the seed's 4 little-endian bytes, then the data (the collector's computeHash)."""
    h = FNV_OFFSET
    for b in seed.to_bytes(4, "little") + data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
    return h


def randomness_from_bytes(data: bytes, seed: int) -> int:
    """56-bit randomness from the seeded hash: the 14 bucket bits decide (reversed, high), the rest mix in."""
    h = fnv32a_seeded(data, seed)
    hashed = h & (BUCKETS - 1)
    rprime = BUCKETS - 1 - hashed
    unused18 = h >> (32 - BUCKETS_LG2)
    mixed28 = unused18 ^ (unused18 << 10)
    return (rprime << 42) | (mixed28 << 14) | hashed


def trace_id_randomness(tid: bytes) -> int:
    return int.from_bytes(tid[8:16], "big") & (MAX_ADJUSTED - 1)


def probability_to_threshold(p: float, precision: int) -> int | None:
    """The threshold for probability p rounded to `precision` hex digits (more for extreme p), or None
    when p is out of [2^-56, 1]."""
    if precision == 0:
        precision = NUM_HEX
    if not (MIN_PROBABILITY <= p <= 1):
        return None
    if p == 1:
        return ALWAYS
    exp_f = math.frexp(p)[1]
    exp_r = math.frexp(1 - p)[1]
    precision = min(NUM_HEX, max(precision + _go_div(exp_f, -4), precision + _go_div(exp_r, -4)))
    th = MAX_ADJUSTED - _go_round(p * MAX_ADJUSTED)
    shift = 4 * (NUM_HEX - precision)
    if shift:
        th += 1 << (shift - 1)
        th >>= shift
        th <<= shift
    return th


def _go_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _go_round(x: float) -> int:
    """math.Round: half away from zero."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def probability(th: int) -> float:
    return (MAX_ADJUSTED - th) / MAX_ADJUSTED


def tvalue(th: int) -> str:
    if th == ALWAYS:
        return "0"
    if th >= NEVER:
        return ""
    return rvalue(th).rstrip("0")


def rvalue(rnd: int) -> str:
    return "" if rnd >= MAX_ADJUSTED else f"{rnd:014x}"


def parse_tvalue(s: str) -> int | None:
    if not s or len(s) > NUM_HEX:
        return None
    try:
        v = int(s, 16)
    except ValueError:
        return None
    if s.startswith(("+", "-")) or "_" in s:
        return None
    return v << (4 * (NUM_HEX - len(s)))


def parse_rvalue(s: str) -> int | None:
    if len(s) != NUM_HEX or s.startswith(("+", "-")) or "_" in s:
        return None
    try:
        return int(s, 16)
    except ValueError:
        return None


# --- W3C tracestate with the OpenTelemetry `ot` member ---

def _lc_alpha(c: str) -> bool:
    return "a" <= c <= "z"


def _lc_alnum(c: str) -> bool:
    return _lc_alpha(c) or "0" <= c <= "9"


def _key_chars(s: str) -> bool:
    return all(_lc_alnum(c) or c in "_-*/" for c in s)


def _w3c_key_ok(key: str) -> bool:
    if not key:
        return False
    tenant, at, system = key.partition("@")
    if at:
        return (bool(tenant) and bool(system) and _lc_alnum(tenant[0]) and _lc_alpha(system[0])
                and _key_chars(tenant[1:]) and _key_chars(system[1:]))
    return _lc_alpha(key[0]) and _key_chars(key[1:])


def _nonblank(c: str) -> bool:
    o = ord(c)
    return 0x21 <= o <= 0x2B or 0x2D <= o <= 0x3C or 0x3E <= o <= 0x7E


def _w3c_value_ok(v: str) -> bool:
    if not v or len(v) > 256 or not _nonblank(v[-1]):
        return False
    return all(c == " " or _nonblank(c) for c in v[:-1])


def _otel_valid(s: str) -> bool:
    if not s or s.endswith(";"):
        return False
    for member in s.split(";"):
        colon = member.find(":")
        if colon < 1:
            return False
        key, value = member[:colon], member[colon + 1:]
        if not (_lc_alpha(key[0]) and all(_lc_alnum(c) for c in key[1:])):
            return False
        if not all(_lc_alnum(c) or "A" <= c <= "Z" or c in "._-" for c in value):
            return False
    return True


class TraceStateError(ValueError):
    pass


@dataclass
class TraceState:
    """A parsed tracestate: the `ot` member's rv/th and everything else, kept in order."""

    rv: str = ""
    rnd: int = 0
    th_str: str = ""
    th: int = 0
    ot_extra: list[tuple[str, str]] = field(default_factory=list)
    others: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str) -> tuple[TraceState, bool]:
        """(state, ok): a tracestate the collector rejects gives ok=False and what was read of it."""
        ts = cls()
        if raw == "":
            return ts, True
        if len(raw) > 1024 or not all(
                _w3c_key_ok(m[:m.find("=")]) and m.find("=") >= 1 and _w3c_value_ok(m[m.find("=") + 1:])
                for m in (x.strip(" \t") for x in raw.split(",")) if m):
            return ts, False
        ok = True
        items = 0
        for member in raw.split(","):
            items += 1
            if items >= 32:
                return ts, False
            member = member.strip(" \t")
            if not member or "=" not in member:
                continue
            key, value = member.split("=", 1)
            if len(key) > 256:
                ok = False
                continue
            tenant, at, system = key.partition("@")
            if at and (len(tenant) > 241 or len(system) > 14):
                ok = False
                continue
            if key == "ot":
                ok = ts._parse_ot(value) and ok
            else:
                ts.others.append((key, value))
        return ts, ok

    def _parse_ot(self, value: str) -> bool:
        self.rv, self.rnd, self.th_str, self.th, self.ot_extra = "", 0, "", 0, []
        if len(value) > 256 or not _otel_valid(value):
            return False
        ok = True
        for member in value.split(";"):
            if ":" not in member:
                continue
            k, v = member.split(":", 1)
            if k == "rv":
                r = parse_rvalue(v)
                if r is None:
                    self.rv, self.rnd, ok = "", 0, False
                else:
                    self.rv, self.rnd = v, r
            elif k == "th":
                t = parse_tvalue(v)
                if t is None:
                    self.th_str, self.th, ok = "", ALWAYS, False
                else:
                    self.th_str, self.th = v, t
            else:
                self.ot_extra.append((k, v))
        return ok

    def has_threshold(self) -> bool:
        return self.th_str != ""

    def serialize(self) -> str:
        ot = []
        if self.rv:
            ot.append(f"rv:{self.rv}")
        if self.th_str:
            ot.append(f"th:{self.th_str}")
        ot.extend(f"{k}:{v}" for k, v in self.ot_extra)
        parts = [f"ot={';'.join(ot)}"] if ot else []
        parts.extend(f"{k}={v}" for k, v in self.others)
        return ",".join(parts)


# --- carriers: where an item's threshold and randomness live (span tracestate, log attributes) ---

class SpanCarrier:
    def __init__(self, span: Any) -> None:
        self.span = span
        self.ts, self.ok = TraceState.parse(span.trace_state)

    def threshold(self) -> int | None:
        return self.ts.th if self.ts.has_threshold() else None

    def explicit_randomness(self) -> int | None:
        return self.ts.rnd if self.ts.rv else None

    def set_randomness(self, rnd: int) -> None:
        self.ts.rv, self.ts.rnd = rvalue(rnd), rnd

    def clear_threshold(self) -> None:
        self.ts.th_str, self.ts.th = "", 0

    def update_threshold(self, th: int) -> None:
        if self.ts.th_str and self.ts.th > th:
            return  # cannot raise an existing probability: the collector logs and leaves it
        self.ts.th, self.ts.th_str = th, tvalue(th)

    def write(self) -> None:
        self.span.trace_state = self.ts.serialize()


class LogCarrier:
    def __init__(self, rec: Any) -> None:
        self.rec = rec
        self.ok = True
        self.th_str, self.th, self.rv, self.rnd = "", 0, "", 0
        t = self._get("sampling.threshold")
        if t:
            v = parse_tvalue(t)
            if v is None:
                self.ok = False
            else:
                self.th_str, self.th = t, v
        r = self._get("sampling.randomness")
        if r:
            v = parse_rvalue(r)
            if v is None:
                self.ok = False
            else:
                self.rv, self.rnd = r, v

    def _get(self, key: str) -> str:
        for kv in self.rec.attributes:
            if kv.key == key:
                return str(kv.value.string_value) if kv.value.WhichOneof("value") == "string_value" else ""
        return ""

    def _put(self, key: str, value: str) -> None:
        for kv in self.rec.attributes:
            if kv.key == key:
                kv.value.Clear()
                kv.value.string_value = value
                return
        self.rec.attributes.add(key=key).value.string_value = value

    def threshold(self) -> int | None:
        return self.th if self.th_str else None

    def explicit_randomness(self) -> int | None:
        return self.rnd if self.rv else None

    def set_randomness(self, rnd: int) -> None:
        self.rv, self.rnd = rvalue(rnd), rnd
        self._put("sampling.randomness", self.rv)

    def clear_threshold(self) -> None:
        self.th_str, self.th = "", NEVER
        for i, kv in enumerate(self.rec.attributes):
            if kv.key == "sampling.threshold":
                del self.rec.attributes[i]
                break

    def update_threshold(self, th: int) -> None:
        if self.th_str and th < self.th:
            return
        self._put("sampling.threshold", tvalue(th))

    def write(self) -> None:
        return None


Carrier = SpanCarrier | LogCarrier


class Sampler:
    """One decision per item, the collector's commonShouldSampleLogic."""

    def __init__(self, cfg: Config, logs: bool) -> None:
        self.cfg = cfg
        self.logs = logs
        pct = min(f32(cfg.sampling_percentage), 100.0)
        self.mode = cfg.mode or "hash_seed"
        self.never = pct == 0
        self.ratio = max(pct / 100.0, MIN_PROBABILITY)
        self.threshold = NEVER
        if self.never:
            pass
        elif self.mode == "equalizing":
            self.threshold = probability_to_threshold(self.ratio, cfg.sampling_precision) or ALWAYS
        elif self.mode == "hash_seed":
            scaled = int(f32(pct * f32(BUCKETS / 100.0)))
            if scaled == 0:
                self.never = True
            else:
                self.threshold = (BUCKETS - scaled) << 42
        self.counts: dict[tuple[str, bool], int] = {}
        self.memo: dict[bytes, int] = {}  # trace id -> hash_seed randomness, emptied per batch

    # randomness of one item: (randomness or None when missing, policy, carrier or None, error)
    def _span_randomness(self, span: Any) -> tuple[int | None, str, Carrier | None, bool]:
        c = SpanCarrier(span)
        tid = bytes(span.trace_id)
        return self._randomness(c, tid if any(tid) else b"", None)

    def _log_randomness(self, rec: Any) -> tuple[int | None, str, Carrier | None, bool]:
        c = LogCarrier(rec)
        tid = bytes(rec.trace_id)
        attr: bytes | None = None
        if self.cfg.from_attribute:
            for kv in rec.attributes:
                if kv.key == self.cfg.from_attribute:
                    attr = _value_bytes(kv.value)
                    break
        return self._randomness(c, tid if any(tid) else b"", attr)

    def _randomness(self, c: Carrier, tid: bytes, attr: bytes | None) -> tuple[int | None, str, Carrier | None, bool]:
        if self.never:
            return ALL_RANDOMNESS, "sampling_priority", c, not c.ok
        if self.mode == "hash_seed":
            rnd: int | None = None
            policy = "missing_randomness"
            if tid and (not self.logs or self.cfg.attribute_source == "traceID"):
                rnd = self.memo.get(tid)  # the spans of one trace share it: hashed once per batch
                if rnd is None:
                    rnd = self.memo[tid] = randomness_from_bytes(tid, self.cfg.hash_seed)
                policy = "trace_id_hash"
            if rnd is None and self.logs and self.cfg.from_attribute and attr:
                rnd, policy = randomness_from_bytes(attr, self.cfg.hash_seed), self.cfg.from_attribute
            if not c.ok:
                return rnd, policy, None, True
            if c.explicit_randomness() is not None or c.threshold() is not None:
                return rnd, policy, None, True  # randomness/threshold in use: other modes are meant for it
            if rnd is not None or not self.logs:  # a span without trace id gets rv:ffffffffffffff, as there
                c.set_randomness(ALL_RANDOMNESS if rnd is None else rnd)
            return rnd, policy, c, False
        if not c.ok:
            return None, "missing_randomness", None, True
        er = c.explicit_randomness()
        if er is not None:
            return er, "sampling_randomness", c, False
        if tid:
            return trace_id_randomness(tid), "trace_id_w3c", c, False
        return None, "missing_randomness", c, False

    def _decide(self, c: Carrier | None) -> int:
        if self.never:
            return NEVER
        if self.mode == "hash_seed":
            return self.threshold
        incoming = c.threshold() if c is not None else None
        if self.mode == "equalizing":
            return incoming if incoming is not None and self.threshold < incoming else self.threshold
        p = probability(incoming) if incoming is not None else 1.0
        th = probability_to_threshold(p * self.ratio, self.cfg.sampling_precision)
        return NEVER if th is None else th

    def keep(self, item: Any, priority: Any) -> bool:
        rnd, policy, c, err = (self._log_randomness(item) if self.logs else self._span_randomness(item))
        if not err:
            if rnd is None:
                err = True
            elif c is not None:
                th = c.threshold()
                if th is not None and not th <= rnd:
                    c.clear_threshold()
                    err = True
        threshold = (NEVER if self.cfg.fail_closed else ALWAYS) if err else self._decide(c)
        over = priority(item)
        if over is not None:
            threshold, policy = over, "sampling_priority"
        r = ALL_RANDOMNESS if rnd is None else rnd
        sampled = threshold <= r
        if sampled and c is not None:
            c.update_threshold(threshold)
            c.write()
        key = (policy, sampled)
        self.counts[key] = self.counts.get(key, 0) + 1
        return sampled

    def span_priority(self, span: Any) -> int | None:
        for kv in span.attributes:
            if kv.key == PRIORITY_ATTR:
                v = kv.value
                kind = v.WhichOneof("value")
                num: float | None = None
                if kind == "int_value":
                    num = float(v.int_value)
                elif kind == "double_value":
                    num = v.double_value
                elif kind == "string_value":
                    try:
                        num = float(v.string_value)
                    except ValueError:
                        num = None
                if num is None or math.isnan(num):
                    return None
                if num == 0:
                    return NEVER
                return ALWAYS if num > 0 else None
        return None

    def log_priority(self, rec: Any) -> int | None:
        key = self.cfg.sampling_priority
        if not key:
            return None
        for kv in rec.attributes:
            if kv.key == key:
                kind = kv.value.WhichOneof("value")
                p = (kv.value.double_value if kind == "double_value" else
                     float(kv.value.int_value) if kind == "int_value" else 0.0) / 100.0
                if p != 0:
                    return probability_to_threshold(p, self.cfg.sampling_precision)
                return None
        return None


def _value_bytes(av: Any) -> bytes:
    if av.WhichOneof("value") == "bytes_value":
        return bytes(av.bytes_value)
    from gotel.processors.redaction import as_string

    return as_string(av).encode()


PRIORITY_ATTR = "sampling.priority"
# how that attribute's key starts on the wire (KeyValue field 1, its length, the name: shorter than 128)
_PRIORITY_KEY = b"\x0a" + bytes([len(PRIORITY_ATTR)]) + PRIORITY_ATTR.encode()


def _no_priority(_item: Any) -> None:
    return None


class ProbabilisticSampler(Processor):
    mutates = True

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.signal = signal
        self.next = nxt
        self.ctx = ctx
        self.sampler = Sampler(cfg, logs=signal == Signal.LOGS)
        noun = "logs" if signal == Signal.LOGS else "traces"
        self._counter = ctx.telemetry.counter(
            f"processor_probabilistic_sampler_count_{noun}_sampled",
            f"{noun} items sampled (sampled=true) or not, by the policy that decided",
            ("policy", "sampled"))

    def filter(self, batch: Batch) -> int:
        """Drops unsampled items in place; returns how many remain."""
        s = self.sampler
        s.memo.clear()
        kept = 0
        prio: Callable[[Any], int | None]
        wire = batch.cached_bytes()
        if self.signal == Signal.LOGS:
            groups, scope_f, item_f, prio = batch.msg.resource_logs, "scope_logs", "log_records", s.log_priority
        else:
            groups, scope_f, item_f, prio = batch.msg.resource_spans, "scope_spans", "spans", s.span_priority
            if wire is not None and _PRIORITY_KEY not in wire:
                prio = _no_priority  # no span of the request has the attribute: not looked for span by span
        for ri in range(len(groups) - 1, -1, -1):
            scopes = getattr(groups[ri], scope_f)
            for si in range(len(scopes) - 1, -1, -1):
                items = getattr(scopes[si], item_f)
                gone = [i for i, it in enumerate(items) if not s.keep(it, prio)]
                for i in reversed(gone):
                    del items[i]
                kept += len(items)
                if not len(items):
                    del scopes[si]
            if not len(scopes):
                del groups[ri]
        return kept

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        kept = self.filter(batch)
        for (policy, sampled), c in self.sampler.counts.items():
            self._counter.labels(policy, "true" if sampled else "false").inc(c)
        self.sampler.counts.clear()
        self.ctx.telemetry.processed(self.signal, n, kept)
        if kept:
            await self.next.consume(batch)


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return ProbabilisticSampler(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="probabilistic_sampler",
    config=Config,
    signals=frozenset({Signal.TRACES, Signal.LOGS}),
    description="Keeps a percentage of traces (logs) by the collector's seeded trace-id hash or W3C "
                "tracestate thresholds; the same seed keeps the same traces as a collector.",
    aliases=("probabilisticsampler",),
    create=_create,
)
