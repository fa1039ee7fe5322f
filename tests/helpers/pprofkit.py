"""Test helpers for the pprof area: hand-built pprof profiles, an in-memory sink, a receiver context."""

from __future__ import annotations

import logging
import zlib
from typing import Any

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal
from gotel.proto import pprof_profile_pb2 as pb
from gotel.telemetry.counters import Telemetry
from tests.helpers.memsink import MemorySink


def make_profile(sample_types: list[tuple[str, str]], samples: list[tuple[list[str], list[int]]],
                 *, labels: list[dict[str, str]] | None = None, time_nanos: int = 1_000_000_000,
                 period: tuple[str, str, int] | None = None, addr_base: int = 0x400000) -> pb.Profile:
    """samples: (stack as function names, leaf first; values). Each function gets one location."""
    p = pb.Profile()
    strings: dict[str, int] = {"": 0}
    p.string_table.append("")

    def s(x: str) -> int:
        if x not in strings:
            strings[x] = len(strings)
            p.string_table.append(x)
        return strings[x]

    for t, u in sample_types:
        vt = p.sample_type.add()
        vt.type, vt.unit = s(t), s(u)
    m = p.mapping.add()
    m.id, m.memory_start, m.memory_limit, m.filename = 1, addr_base, addr_base + 0x100000, s("/app/bin")
    fns: dict[str, int] = {}
    for stack, _v in samples:
        for fn in stack:
            if fn not in fns:
                fid = len(fns) + 1
                fns[fn] = fid
                f = p.function.add()
                f.id, f.name, f.system_name, f.filename = fid, s(fn), s(fn), s(f"/src/{fn.split('.')[0]}.go")
                loc = p.location.add()
                # the address depends on the function only (a PC), not on the order of the dump
                loc.id, loc.mapping_id, loc.address = fid, 1, addr_base + 0x10 * (zlib.crc32(fn.encode()) & 0xFFFF)
                ln = loc.line.add()
                ln.function_id, ln.line = fid, 10 + fid
    for i, (stack, vals) in enumerate(samples):
        smp = p.sample.add()
        smp.location_id.extend(fns[fn] for fn in stack)
        smp.value.extend(vals)
        if labels and i < len(labels):
            for k, v in labels[i].items():
                lb = smp.label.add()
                lb.key, lb.str = s(k), s(v)
    p.time_nanos = time_nanos
    if period:
        p.period_type.type, p.period_type.unit, p.period = s(period[0]), s(period[1]), period[2]
    return p


HEAP_TYPES = [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")]
MUTEX_TYPES = [("contentions", "count"), ("delay", "nanoseconds")]


class MemSink(MemorySink):
    """Records batches (tests.helpers.memsink) and hands back their requests."""

    def requests(self) -> list[Any]:
        return [b.peek() for b in self.batches]


def sinks() -> dict[Signal, MemSink]:
    return {s: MemSink() for s in (Signal.PROFILES, Signal.METRICS, Signal.LOGS)}


def context(name: str = "pprof", kind: Kind = Kind.RECEIVER) -> Context:
    tel = Telemetry()
    cid = ComponentID.parse(name)
    return Context(cid, kind, logging.getLogger(f"test.{name}"), tel.component(cid, kind))


def log_records(sink: MemSink) -> list[Any]:
    return [r for req in sink.requests() for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def metric_points(sink: MemSink, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, data point) of every point of the metric."""
    from gotel.pdata.batch import attr_dict

    out = []
    for req in sink.requests():
        for rm in req.resource_metrics:
            res = attr_dict(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != name:
                        continue
                    kind = m.WhichOneof("data")
                    for dp in getattr(m, kind).data_points:
                        out.append((res, dp))
    return out


def profiles_of(sink: MemSink, ptype: str | None = None) -> list[tuple[Any, Any]]:
    """(request, OTLP Profile) of every profile, optionally only those with gotel.pprof.type == ptype."""
    out = []
    for req in sink.requests():
        d = req.dictionary
        for rp in req.resource_profiles:
            for sp in rp.scope_profiles:
                for p in sp.profiles:
                    attrs = {d.string_table[d.attribute_table[i].key_strindex]: d.attribute_table[i].value.string_value
                             for i in p.attribute_indices}
                    if ptype is None or attrs.get("gotel.pprof.type") == ptype:
                        out.append((req, p))
    return out


def otlp_function_values(req: Any, prof: Any) -> dict[str, int]:
    """Leaf function -> summed value of one OTLP profile."""
    d = req.dictionary
    out: dict[str, int] = {}
    for smp in prof.samples:
        stack = d.stack_table[smp.stack_index]
        if not stack.location_indices:
            continue
        loc = d.location_table[stack.location_indices[0]]
        fn = d.string_table[d.function_table[loc.lines[0].function_index].name_strindex] if loc.lines else "?"
        out[fn] = out.get(fn, 0) + sum(smp.values)
    return out


def otlp_inclusive_values(req: Any, prof: Any) -> dict[str, int]:
    """Function -> value of samples whose stack contains it (cumulative, like pprof's cum)."""
    d = req.dictionary
    out: dict[str, int] = {}
    for smp in prof.samples:
        names = set()
        for li in d.stack_table[smp.stack_index].location_indices:
            for ln in d.location_table[li].lines:
                names.add(d.string_table[d.function_table[ln.function_index].name_strindex])
        for n in names:
            out[n] = out.get(n, 0) + sum(smp.values)
    return out
