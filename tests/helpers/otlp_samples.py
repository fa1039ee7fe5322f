"""Small but complete OTLP batches of every signal, with distinct ids, for exact-delivery assertions."""

from __future__ import annotations

import struct
from collections.abc import Callable

from gotel.pdata.batch import Batch, Logs, Metrics, Profiles, Signal, Traces, attrs, kv


def traces(n: int, *, start: int = 0, service: str = "checkout") -> Traces:
    b = Traces()
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"service.name": service, "process.pid": 4242}))
    ss = rs.scope_spans.add()
    ss.scope.name = "gotel.test"
    for i in range(start, start + n):
        s = ss.spans.add()
        s.trace_id = struct.pack(">QQ", 0xABCDEF, i + 1)
        s.span_id = struct.pack(">Q", i + 1)
        s.parent_span_id = struct.pack(">Q", 0xFFFF0000 + i)
        s.name = f"GET /item/{i}"
        s.kind = 2
        s.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
        s.end_time_unix_nano = s.start_time_unix_nano + 250_000
        s.attributes.extend(attrs({"http.request.method": "GET", "http.response.status_code": 200, "i": i}))
        s.status.code = 1
    return b


def metrics(n: int = 3) -> Metrics:
    b = Metrics()
    rm = b.msg.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "checkout"))
    sm = rm.scope_metrics.add()
    g = sm.metrics.add()
    g.name, g.unit = "go.goroutine.count", "{goroutine}"
    for i in range(n):
        dp = g.gauge.data_points.add()
        dp.time_unix_nano = 1_700_000_000_000_000_000 + i
        dp.as_int = 100 + i
    s = sm.metrics.add()
    s.name, s.unit = "go.memory.allocated", "By"
    s.sum.is_monotonic = True
    s.sum.aggregation_temporality = 2
    dp = s.sum.data_points.add()
    dp.as_double = 1.5e9
    dp.attributes.append(kv("go.memory.type", "heap"))
    h = sm.metrics.add()
    h.name, h.unit = "rpc.server.duration", "s"
    h.histogram.aggregation_temporality = 2
    hp = h.histogram.data_points.add()
    hp.count, hp.sum = 3, 0.6
    hp.explicit_bounds.extend([0.1, 0.5])
    hp.bucket_counts.extend([1, 1, 1])
    return b


def logs(n: int = 4) -> Logs:
    b = Logs()
    rl = b.msg.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "checkout"))
    sl = rl.scope_logs.add()
    for i in range(n):
        r = sl.log_records.add()
        r.time_unix_nano = 1_700_000_000_000_000_000 + i
        r.severity_number = 13
        r.severity_text = "WARN"
        r.body.string_value = f"slow request {i}"
        r.trace_id = struct.pack(">QQ", 7, i + 1)
        r.span_id = struct.pack(">Q", i + 1)
    return b


def profiles() -> Profiles:
    b = Profiles()
    m = b.msg
    d = m.dictionary
    d.string_table.extend(["", "cpu", "nanoseconds", "main.work", "main.go", "samples", "count"])
    d.mapping_table.add()
    d.function_table.add()
    f = d.function_table.add()
    f.name_strindex, f.filename_strindex, f.start_line = 3, 4, 10
    d.location_table.add()
    loc = d.location_table.add()
    loc.address = 0x401000
    loc.lines.add(function_index=1, line=12)
    d.stack_table.add()
    d.stack_table.add().location_indices.append(1)
    d.link_table.add()
    lk = d.link_table.add()
    lk.trace_id = bytes(range(16))
    lk.span_id = bytes(range(8))
    d.attribute_table.add()
    rp = m.resource_profiles.add()
    rp.resource.attributes.append(kv("service.name", "checkout"))
    sp = rp.scope_profiles.add()
    p = sp.profiles.add()
    p.sample_type.type_strindex, p.sample_type.unit_strindex = 1, 2
    p.period_type.type_strindex, p.period_type.unit_strindex = 1, 2
    p.period = 10_000_000
    p.time_unix_nano = 1_700_000_000_000_000_000
    p.duration_nano = 10_000_000_000
    p.profile_id = bytes(range(16))
    s = p.samples.add()
    s.stack_index, s.link_index = 1, 1
    s.values.append(30_000_000)
    return b


def sample(signal: Signal) -> Batch:
    makers: dict[Signal, Callable[[], Batch]] = {
        Signal.TRACES: lambda: traces(5), Signal.METRICS: metrics, Signal.LOGS: logs, Signal.PROFILES: profiles,
    }
    return makers[signal]()
