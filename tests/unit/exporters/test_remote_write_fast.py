"""The remote-write hot path (gotel.formats.remotewrite, reading request bytes) against a reference built the
plain way: gotel.formats.promconv's Converter on parsed messages, each point's samples taken as it is applied,
grouped by series, sorted by time, and target_info at the newest sample time of the batch. Both get
the same sequence of batches (generated, plus hand-made encodings); every batch's decoded
WriteRequests must carry exactly the same samples."""

from __future__ import annotations

import random
import struct
import time
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as mpb

from gotel.formats.promconv import Converter, ConvertOptions, Series, Stats
from gotel.formats.remotewrite import Builder
from gotel.pdata.batch import Metrics, any_value
from gotel.proto import remote_write_pb2

Labels = tuple[tuple[str, str], ...]
Samples = dict[Labels, list[tuple[int, bytes]]]

OPTS = dict(namespace="", const_labels={"cluster": "c1"})


def vbytes(v: float) -> bytes:
    return struct.pack("<d", v)  # compares NaN and -0.0 exactly


class Reference:
    """What remote-write must send for a batch, computed from the Converter on parsed messages."""

    def __init__(self) -> None:
        self.conv = Converter(ConvertOptions(**OPTS))  # type: ignore[arg-type]

    def convert(self, raw: bytes) -> tuple[Samples, dict[str, int], int]:
        emitted: list[tuple[int, list[tuple[str, Labels, float]]]] = []
        infos: dict[Any, Series] = {}

        def emit(s: Series) -> None:
            if s.kind == "info":
                infos[s.key()] = s
            else:
                emitted.append((s.ts_ms, list(s.samples())))

        stats = Stats()
        self.conv.convert(Metrics(raw=raw), stats, emit=emit)
        out: Samples = {}
        for ts, samples in emitted:
            for name, labels, v in samples:
                key = tuple(sorted([("__name__", name), *[(k, x) for k, x in labels if x != ""]]))
                out.setdefault(key, []).append((ts, vbytes(v)))
        newest = max((ts for ts, _ in emitted), default=0)
        if newest:
            for s in infos.values():
                key = tuple(sorted([("__name__", "target_info"), *s.labels]))
                out.setdefault(key, []).append((newest, vbytes(1.0)))
        for lst in out.values():
            lst.sort()
        return out, stats.dropped, len(emitted)


def decode(built: Any, shard_of: dict[Labels, int]) -> tuple[Samples, int]:
    """All shards' requests decoded; checks what a remote-write receiver checks on the way."""
    out: Samples = {}
    nsamples = 0
    for shard, reqs in enumerate(built.bodies):
        for body, n in reqs:
            wr = remote_write_pb2.WriteRequest.FromString(body)
            assert n == sum(len(t.samples) for t in wr.timeseries)
            nsamples += n
            seen: set[Labels] = set()
            for t in wr.timeseries:
                key = tuple((lab.name, lab.value) for lab in t.labels)
                assert key not in seen, f"{key} twice in one request"
                seen.add(key)
                assert list(key) == sorted(key) and all(v for _, v in key)
                times = [s.timestamp for s in t.samples]
                assert times == sorted(times), f"{key}: samples out of order {times}"
                assert shard_of.setdefault(key, shard) == shard, f"{key} changed shard"
                out.setdefault(key, []).extend((s.timestamp, vbytes(s.value)) for s in t.samples)
    for v in out.values():
        v.sort()
    return out, nsamples


# --- generated batches -----------------------------------------------------------------------------

ATTRS: list[dict[str, Any]] = [
    {"rpc.method": f"/svc.S/M{i}", "rpc.grpc.status_code": i % 3} for i in range(6)
] + [{}, {"foo.bar": "b", "foo_bar": "a"}, {"flag": True, "ratio": 0.5, "raw": b"\x10\x02\x18\x01"}]
RESOURCES = [
    {"service.name": "api", "service.instance.id": "i1", "host.name": "h"},
    {"service.name": "db", "service.namespace": "shop"},
    {"host.name": "lonely"},
]
# (name, unit, kind): most batches repeat most of these, as a periodic exporter does.
METRICS = [
    ("rpc.requests", "{request}", "sum"), ("go.goroutines", "", "gauge"), ("queue.depth", "By", "nonmono"),
    ("bytes.sent", "By", "delta"), ("shared.name", "1", "gauge"), ("shared.name", "1", "nonmono"),
    ("rpc.duration", "s", "hist"), ("rpc.size", "By", "dhist"), ("gc.pause", "s", "summary"),
    ("latency", "ms", "exp"), ("broken", "", "unspec"), ("cpu.time", "s", "sum"),
]


def kvs(rng: random.Random, a: dict[str, Any]) -> list[KeyValue]:
    items = list(a.items())
    if rng.random() < 0.1:
        rng.shuffle(items)  # another byte order of the same attributes: the same series
    return [KeyValue(key=k, value=any_value(v)) for k, v in items]


def number_point(rng: random.Random, dp: Any, a: dict[str, Any], t: int, name: str) -> None:
    if rng.random() < 0.95 if name != "go.goroutines" else rng.random() < 0.05:
        dp.start_time_unix_nano = t - 3600 * 10**9
    if rng.random() < 0.97:
        dp.time_unix_nano = t - rng.choice([0, 0, 0, 0, 0, 0, 10**9, 5 * 10**9])
    else:
        dp.time_unix_nano = rng.choice([0, 999, 10**15])  # timestamps of another varint size
    if (name == "cpu.time") == (rng.random() < 0.9):
        dp.as_int = rng.randint(-5, 1000)
    else:
        dp.as_double = rng.choice([rng.random() * 100, 0.0, -1.5, float("nan"), float("inf")])
    dp.attributes.extend(kvs(rng, a))
    if rng.random() < 0.08:
        dp.exemplars.add(as_double=1.0, time_unix_nano=t, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    if rng.random() < 0.04:
        dp.flags = 1


def metric(rng: random.Random, t: int, name: str, unit: str, kind: str) -> mpb.Metric:
    m = mpb.Metric(name=name, unit=unit, description="what it is" if rng.random() < 0.95 else "")
    pts = list(ATTRS) if rng.random() < 0.8 else rng.sample(ATTRS, k=rng.randint(1, len(ATTRS)))
    if rng.random() < 0.15:
        pts.append(rng.choice(pts))  # a series twice in one metric
    if kind in ("gauge", "sum", "delta", "nonmono", "unspec"):
        if kind == "gauge":
            body = m.gauge
        else:
            body = m.sum
            body.aggregation_temporality = {"delta": 1, "unspec": 0}.get(kind, 2)  # type: ignore[assignment]
            body.is_monotonic = kind != "nonmono"
        for a in pts:
            number_point(rng, body.data_points.add(), a, t, name)
    elif kind in ("hist", "dhist"):
        m.histogram.aggregation_temporality = 1 if kind == "dhist" else 2  # type: ignore[assignment]
        bounds = rng.choice([[0.1, 1.0], [0.1, 1.0, 10.0]])
        for a in pts:
            dp = m.histogram.data_points.add(time_unix_nano=t, start_time_unix_nano=t - 10**9)
            dp.explicit_bounds.extend(bounds)
            dp.bucket_counts.extend([rng.randint(0, 5) for _ in range(len(bounds) + 1)])
            dp.count = sum(dp.bucket_counts)
            if rng.random() < 0.8:
                dp.sum = rng.random() * 10
            dp.attributes.extend(kvs(rng, a))
    elif kind == "summary":
        for a in pts:
            dp = m.summary.data_points.add(time_unix_nano=t, count=3, sum=1.5)
            dp.quantile_values.add(quantile=0.5, value=0.2)
            dp.quantile_values.add(quantile=0.99, value=0.9)
            dp.attributes.extend(kvs(rng, a))
    else:
        m.exponential_histogram.aggregation_temporality = 2  # type: ignore[assignment]
        for a in pts:
            dp = m.exponential_histogram.data_points.add(time_unix_nano=t, scale=1, zero_count=1, count=4, sum=3.0)
            dp.positive.offset = 0
            dp.positive.bucket_counts.extend([1, 2])
            if rng.random() < 0.1:
                dp.negative.bucket_counts.extend([1])
            dp.attributes.extend(kvs(rng, a))
    return m


def random_batch(rng: random.Random, t: int) -> bytes:
    req = ExportMetricsServiceRequest()
    for r in RESOURCES if rng.random() < 0.7 else rng.sample(RESOURCES, k=rng.randint(1, len(RESOURCES))):
        rm = req.resource_metrics.add()
        rm.resource.attributes.extend(kvs(rng, r))
        for scope in ["s1", "s2"] if rng.random() < 0.8 else ["s2"]:
            sm = rm.scope_metrics.add()
            sm.scope.name = scope
            sm.scope.version = "1.0"
            for spec in METRICS:
                if rng.random() < 0.85:
                    sm.metrics.append(metric(rng, t, *spec))
    raw = req.SerializeToString()
    if rng.random() < 0.2:
        # concatenated requests are one request (the batch processor joins bytes that way)
        raw += ExportMetricsServiceRequest(resource_metrics=[req.resource_metrics[0]]).SerializeToString()
    return raw


def run_both(batches: list[bytes], nshards: int = 3, max_bytes: int = 3_000_000) -> int:
    ref = Reference()
    conv = Converter(ConvertOptions(**OPTS))  # type: ignore[arg-type]
    builder = Builder(conv, nshards, max_bytes)
    shard_of: dict[Labels, int] = {}
    compared = 0
    for i, raw in enumerate(batches):
        want, want_dropped, want_points = ref.convert(raw)
        built = builder.build(raw, time.monotonic())
        got, nsamples = decode(built, shard_of)
        assert got == want, f"batch {i}: {set(got) ^ set(want) or [k for k in got if got[k] != want[k]][:3]}"
        assert built.stats.dropped == want_dropped, f"batch {i}"
        assert sum(built.points) == want_points, f"batch {i}"
        assert nsamples == sum(len(v) for v in want.values())
        compared += nsamples
    return compared


@pytest.mark.parametrize("seed", range(6))
def test_generated_batches_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    t0 = time.time_ns()
    batches = [random_batch(rng, t0 + k * 15 * 10**9) for k in range(25)]
    assert run_both(batches, nshards=1 + seed % 4) > 1000


def test_split_requests_match_the_reference() -> None:
    rng = random.Random(42)
    t0 = time.time_ns()
    assert run_both([random_batch(rng, t0 + k * 10**9) for k in range(10)], max_bytes=1024) > 100


# --- hand-made encodings ---------------------------------------------------------------------------


def ld(tag: int, payload: bytes) -> bytes:
    n, out = len(payload), bytearray([tag])
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


def request(metric_bytes: bytes, resource: dict[str, Any] | None = None) -> bytes:
    res = mpb.ResourceMetrics()
    res.resource.attributes.extend(kvs(random.Random(0), resource or {"service.name": "api"}))
    scope = ld(0x0A, b"\x0a\x02s1") + ld(0x12, metric_bytes)
    return ld(0x0A, ld(0x0A, res.resource.SerializeToString()) + ld(0x12, scope))


def sum_metric(points: list[tuple[dict[str, Any], float]], t: int, temporality: int, layout: str) -> bytes:
    """A Sum whose fields are laid out as ``layout`` says: 'canonical' (points, then temporality and
    monotonic), 'tail_first', 'middle' (temporality between the points, not monotonic) or
    'no_temporality' (points only). The last two end with the last point's bytes."""
    rng = random.Random(1)
    dps = []
    for a, v in points:
        dp = mpb.NumberDataPoint(time_unix_nano=t, start_time_unix_nano=t - 10**9, as_double=v)
        dp.attributes.extend(kvs(rng, a))
        dps.append(ld(0x0A, dp.SerializeToString()))
    temp = bytes([0x10, temporality])
    mono = b"\x18\x01"
    if layout == "canonical":
        body = b"".join(dps) + temp + mono
    elif layout == "tail_first":
        body = temp + mono + b"".join(dps)
    elif layout == "middle":
        body = dps[0] + temp + b"".join(dps[1:])
    else:
        body = b"".join(dps)
    return ld(0x0A, b"rpc.requests") + ld(0x3A, body)


@pytest.mark.parametrize("layout", ["canonical", "tail_first", "middle", "no_temporality"])
@pytest.mark.parametrize("temporality", [1, 2])
def test_field_layouts_of_a_sum(layout: str, temporality: int) -> None:
    t = time.time_ns()
    # The last point ends in bytes that look like a Sum's tail (temporality 2, monotonic).
    pts = [({"m": f"M{i}"}, float(i)) for i in range(5)] + [({"z": "\x10\x02\x18\x01"}, 9.0)]
    batches = [request(sum_metric(pts, t + k * 10**9, temporality, layout)) for k in range(3)]
    run_both(batches)
    ref = Reference()
    got, dropped, _ = ref.convert(batches[0])
    if layout == "no_temporality":
        assert dropped == {"unspecified_temporality": 6} and not got
    else:
        name = "rpc_requests" if layout == "middle" else "rpc_requests_total"
        assert sorted(dict(k)["__name__"] for k in got) == [name] * 6


def test_a_repeated_time_field_after_the_attributes_wins() -> None:
    """Protobuf's last-one-wins: such a point's attribute bytes are not its identity alone."""
    t = time.time_ns()

    def batch(k: int) -> bytes:
        dp = mpb.NumberDataPoint(time_unix_nano=t + k * 10**9, start_time_unix_nano=t - 10**9, as_double=float(k))
        dp.attributes.extend(kvs(random.Random(0), {"a": "1"}))
        real = mpb.NumberDataPoint(time_unix_nano=t).SerializeToString()  # the same in every batch
        return request(ld(0x0A, b"g") + ld(0x2A, ld(0x0A, dp.SerializeToString() + real)))

    run_both([batch(k) for k in range(4)])


def test_malformed_bytes_raise_decode_error() -> None:
    t = time.time_ns()
    raw = request(sum_metric([({"m": "x"}, 1.0)], t, 2, "canonical"))
    builder = Builder(Converter(ConvertOptions()), 2, 1 << 20)
    for cut in (len(raw) - 1, len(raw) // 2, 5):
        with pytest.raises(DecodeError):
            builder.build(raw[:cut], time.monotonic())
    assert sum(builder.build(raw, time.monotonic()).points) == 1


def test_delta_late_points_and_duplicates_in_one_batch() -> None:
    """Delta points accumulate in arrival order; a late one does not move time back; two points of a
    series in one batch leave as one TimeSeries in time order."""
    t = time.time_ns()
    rng = random.Random(3)

    def delta(points: list[tuple[int, float]]) -> bytes:
        m = mpb.Metric(name="c")
        m.sum.aggregation_temporality = 1  # type: ignore[assignment]
        m.sum.is_monotonic = True
        for ts, v in points:
            dp = m.sum.data_points.add(time_unix_nano=ts, start_time_unix_nano=ts - 10**9, as_double=v)
            dp.attributes.extend(kvs(rng, {"a": "1"}))
        return request(m.SerializeToString())

    batches = [delta([(t, 1.0)]), delta([(t + 2 * 10**9, 2.0), (t + 10**9, 3.0)]), delta([(t - 10**9, 4.0)])]
    run_both(batches)
    conv = Converter(ConvertOptions())
    b = Builder(conv, 1, 1 << 20)
    outs = []
    for raw in batches:
        got, _ = decode(b.build(raw, time.monotonic()), {})
        outs.append(next(v for k, v in got.items() if ("__name__", "c_total") in k))
    ms = t // 10**6
    assert outs[0] == [(ms, vbytes(1.0))]
    # the second point is late within the batch: it takes the first one's time
    assert outs[1] == [(ms + 2000, vbytes(3.0)), (ms + 2000, vbytes(6.0))]
    assert outs[2] == [(ms + 2000, vbytes(10.0))]  # late: counted, but time does not go back
