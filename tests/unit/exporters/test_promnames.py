"""OTLP -> Prometheus naming as the collector's translator does it, and the converter's state rules."""

from __future__ import annotations

import time

import pytest

from gotel.formats.promconv import Converter, ConvertOptions, attr_labels
from gotel.formats.promnames import label_name, metric_name
from gotel.pdata.batch import attrs
from gotel.pdata.wire import label_pair, ld, sample, varint
from gotel.proto import remote_write_pb2
from tests.helpers import metricsdata as md


@pytest.mark.parametrize("name,unit,kind,want", [
    ("http.server.request.duration", "s", "histogram", "http_server_request_duration_seconds"),
    ("http.server.requests", "{request}", "counter", "http_server_requests_total"),
    ("system.memory.usage", "By", "gauge", "system_memory_usage_bytes"),
    ("network.io", "By/s", "gauge", "network_io_bytes_per_second"),
    ("process.cpu.utilization", "1", "gauge", "process_cpu_utilization_ratio"),
    ("requests.total", "1", "counter", "requests_total"),
    ("total.requests", "", "counter", "requests_total"),
    ("duration_seconds", "s", "histogram", "duration_seconds"),
    ("go.memory.gc.goal", "By", "gauge", "go_memory_gc_goal_bytes"),
    ("latency", "ms", "gauge", "latency_milliseconds"),
    ("temp", "Cel", "gauge", "temp_celsius"),
    ("2xx.count", "", "counter", "_2xx_count_total"),
    ("weird..name--x", "", "gauge", "weird_name_x"),
])
def test_metric_names(name: str, unit: str, kind: str, want: str) -> None:
    assert metric_name(name, unit, kind) == want


def test_namespace_and_label_names() -> None:
    assert metric_name("rpc.calls", "", "counter", "gotel") == "gotel_rpc_calls_total"
    assert label_name("http.route") == "http_route"
    assert label_name("2fa") == "key_2fa"
    assert label_name("__meta") == "key__meta"
    assert label_name("k8s.pod.name") == "k8s_pod_name"


def test_colliding_attribute_keys_are_joined_in_key_order() -> None:
    assert attr_labels(attrs({"foo.bar": "b", "foo_bar": "a"})) == {"foo_bar": "b;a"}


def test_delta_sums_accumulate_and_series_expire() -> None:
    conv = Converter(ConvertOptions(), expiration=60)
    now = time.time_ns()
    for v in (3, 4, 5):
        conv.convert(md.batch({"service.name": "s"}, [md.counter("c", "", [({"a": "1"}, v)], now, now, md.DELTA)]))
    s = next(x for x in conv.series.values() if x.family == "c_total")
    assert s.value == 12
    assert conv.expire(time.monotonic() + 30) == 0
    assert conv.expire(time.monotonic() + 61) == 1  # the counter (no target_info: only service.name)
    assert not conv.series


def test_delta_histograms_accumulate_bucket_by_bucket() -> None:
    conv = Converter(ConvertOptions())
    now = time.time_ns()
    for counts in ([1, 2, 3], [4, 5, 6]):
        conv.convert(md.batch({"service.name": "s"}, [md.histogram("h", "s", [1, 2], [({}, counts, 1.0)], now, now, md.DELTA)]))
    s = next(iter(conv.series.values()))
    assert s.counts == [5, 7, 9] and s.count == 21 and s.sum == 2.0


def test_hand_encoding_matches_generated_classes() -> None:
    for n in (0, 1, 127, 128, 300, 2**21, 2**28 + 5, 1_700_000_000_000, -1):
        assert varint(n) == remote_write_pb2.Sample(timestamp=n).SerializeToString()[1:] or n == 0
    ts = remote_write_pb2.TimeSeries()
    ts.labels.add(name="__name__", value="x")
    ts.labels.add(name="job", value="é" * 100)
    ts.samples.add(value=1.5, timestamp=1_700_000_000_123)
    mine = ld(b"\x0a", label_pair("__name__", "x")) + ld(b"\x0a", label_pair("job", "é" * 100)) + sample(1.5, 1_700_000_000_123)
    assert mine == ts.SerializeToString()


def test_example_configs_validate() -> None:
    from pathlib import Path

    from gotel.config.loader import load_config

    root = Path(__file__).resolve().parents[3] / "config" / "examples"
    for name in ("backends.yaml", "loki-otlp.yaml"):
        cfg = load_config(str(root / name), env={"LOKI_USER": "u", "LOKI_PASSWORD": "p"})
        assert cfg.exporters, name


def test_series_identity_survives_value_time_and_exemplar_changes() -> None:
    conv = Converter(ConvertOptions())
    now = time.time_ns()
    for i, v in enumerate((1, 2, 3)):
        m = md.counter("c", "", [({"a": "1", "b": "x"}, v), ({"a": "1", "b": "y"}, 10 * v)], now + i, now)
        if i == 1:
            m.sum.data_points[0].exemplars.add(as_double=1.0, trace_id=b"\x01" * 16)
        conv.convert(md.batch({"service.name": "s"}, [m]))
    got = {dict(s.labels)["b"]: s.value for s in conv.series.values()}
    assert got == {"x": 3, "y": 30}
    assert len(conv.series) == 2
