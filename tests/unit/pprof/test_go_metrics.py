from __future__ import annotations

import json

from gotel.pdata.builders import MetricsBuilder
from gotel.receivers.go_metrics import Mapper
from tests.helpers.pprofkit import MemSink, metric_points

PROM = """# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
# TYPE go_threads gauge
go_threads 9
# TYPE go_memstats_sys_bytes gauge
go_memstats_sys_bytes 2.0e+07
# TYPE go_memstats_heap_released_bytes gauge
go_memstats_heap_released_bytes 4.0e+06
# TYPE go_memstats_stack_inuse_bytes gauge
go_memstats_stack_inuse_bytes 1.0e+06
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 1.5e+08
# TYPE go_memstats_mallocs_total counter
go_memstats_mallocs_total 123456
# TYPE go_memstats_next_gc_bytes gauge
go_memstats_next_gc_bytes 8.0e+06
# TYPE go_gc_gogc_percent gauge
go_gc_gogc_percent 100
# TYPE go_gc_gomemlimit_bytes gauge
go_gc_gomemlimit_bytes 9.223372036854776e+18
# TYPE go_sched_gomaxprocs_threads gauge
go_sched_gomaxprocs_threads 2
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2e-05
go_gc_duration_seconds{quantile="0.5"} 5e-05
go_gc_duration_seconds{quantile="1"} 0.0004
go_gc_duration_seconds_sum 0.0031
go_gc_duration_seconds_count 31
# TYPE go_sched_latencies_seconds histogram
go_sched_latencies_seconds_bucket{le="1e-06"} 10
go_sched_latencies_seconds_bucket{le="1e-05"} 25
go_sched_latencies_seconds_bucket{le="+Inf"} 30
go_sched_latencies_seconds_sum 0.01
go_sched_latencies_seconds_count 30
# TYPE http_requests_total counter
http_requests_total 5
"""


def run(fn: str, data: object) -> MemSink:
    mb = MetricsBuilder("t")
    m = Mapper()
    getattr(m, fn)(data, {"service.name": "svc"}, mb)
    s = MemSink()
    s.batches.append(mb.batch())
    return s


def one(s: MemSink, name: str) -> float:
    pts = metric_points(s, name)
    assert len(pts) == 1, (name, pts)
    dp = pts[0][1]
    return dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double


def test_prometheus_go_collector_to_semconv() -> None:
    s = run("prometheus", PROM)
    assert one(s, "go.goroutine.count") == 42
    used = {dp.attributes[0].value.string_value: dp.as_int for _r, dp in metric_points(s, "go.memory.used")}
    assert used == {"stack": 1_000_000, "other": 15_000_000}
    assert one(s, "go.memory.allocated") == 150_000_000
    assert one(s, "go.memory.allocations") == 123456
    assert one(s, "go.memory.gc.goal") == 8_000_000
    assert one(s, "go.processor.limit") == 2
    assert one(s, "go.config.gogc") == 100
    assert metric_points(s, "go.memory.limit") == []  # MaxInt64 = no limit
    assert one(s, "go.gc.cycles") == 31
    hist = metric_points(s, "go.schedule.duration")[0][1]
    assert list(hist.explicit_bounds) == [1e-06, 1e-05] and list(hist.bucket_counts) == [10, 15, 5]
    assert hist.count == 30
    assert len(metric_points(s, "go.gc.pause.duration")) == 3
    assert metric_points(s, "http_requests_total") == []


def test_expvar_memstats() -> None:
    body = json.dumps({"cmdline": ["x"], "memstats": {"TotalAlloc": 1000, "Mallocs": 10, "Sys": 5000, "HeapReleased": 1000,
                                                      "StackInuse": 200, "NextGC": 4000, "NumGC": 3, "PauseTotalNs": 2_000_000}})
    s = run("expvar", body.encode())
    assert one(s, "go.memory.allocated") == 1000 and one(s, "go.memory.gc.goal") == 4000
    assert one(s, "go.gc.cycles") == 3 and one(s, "go.gc.pause.duration.total") == 0.002
