"""The usdt receiver's event-to-OTLP logic, fed with decoded events (the BPF side is tested in integration)."""

from __future__ import annotations

from gotel.component.contract import Kind
from gotel.discovery import ProcessInfo
from gotel.pdata.batch import attr_dict
from gotel.receivers.usdt import Aggregator, Config, Event
from gotel.telemetry.counters import Telemetry


def _ev(probe: str, ts: int, *args: int, s0: bytes = b"", pid: int = 42, bad: int = 0) -> Event:
    a = tuple(args) + (0,) * (6 - len(args))
    return Event(probe, pid, pid, ts, a, (s0, b""), bad)


def _agg(cfg: Config) -> tuple[Aggregator, Telemetry]:
    t = Telemetry()
    agg = Aggregator(cfg, t.component("usdt", Kind.RECEIVER), clock_offset_ns=1_000)
    agg.add_process(ProcessInfo(42, "/srv/usdtapp", ["usdtapp"], True, "shop"))
    return agg, t


def _dropped(t: Telemetry, reason: str) -> float:
    v = t.registry.get_sample_value(
        "gotel_dropped_items_total", {"component": "usdt", "kind": "receiver", "signal": "traces", "reason": reason}
    )
    return v or 0.0


def test_spans_pair_by_match_arg_and_carry_attributes() -> None:
    cfg = Config(spans=[{"name": "req", "start": "a:s", "end": "a:e", "kind": "server",
                         "start_attributes": {"route": "arg1:str"}, "end_attributes": {"code": "arg1"}}])
    agg, t = _agg(cfg)
    agg.handle(_ev("a:s", 100, 7, 0, s0=b"/x"))
    agg.handle(_ev("a:s", 150, 8, 0, s0=b"/y"))
    agg.handle(_ev("a:e", 400, 8, (1 << 64) - 3))  # -3 as a signed argument
    agg.handle(_ev("a:e", 500, 7, 200))
    agg.handle(_ev("a:e", 600, 9, 200))  # no start
    b = agg.take_traces()
    assert b is not None
    rs = b.msg.resource_spans[0]
    assert attr_dict(rs.resource.attributes)["service.name"] == "shop"
    assert attr_dict(rs.resource.attributes)["process.pid"] == 42
    spans = rs.scope_spans[0].spans
    assert [(s.start_time_unix_nano, s.end_time_unix_nano) for s in spans] == [(1150, 1400), (1100, 1500)]
    assert [attr_dict(s.attributes)["route"] for s in spans] == ["/y", "/x"]
    assert [attr_dict(s.attributes)["code"] for s in spans] == [-3, 200]
    assert _dropped(t, "end_without_start") == 1
    assert agg.take_traces() is None


def test_counters_and_histograms_are_cumulative_per_attribute_set() -> None:
    cfg = Config(counters=[{"probe": "a:e", "name": "done", "attributes": {"code": "arg1"}}],
                 histograms=[{"probe": "a:e", "name": "lat", "value": "arg2", "scale": 0.001, "boundaries": [1, 10]}])
    agg, _ = _agg(cfg)
    for code, ns in ((200, 500), (200, 5000), (500, 50000)):
        agg.handle(_ev("a:e", 1, 0, code, ns))
    m = agg.take_metrics()
    assert m is not None
    metrics = {x.name: x for x in m.msg.resource_metrics[0].scope_metrics[0].metrics}
    counts = {attr_dict(d.attributes)["code"]: d.as_int for d in metrics["done"].sum.data_points}
    assert counts == {200: 2, 500: 1}
    assert metrics["done"].sum.is_monotonic
    h = metrics["lat"].histogram.data_points[0]
    assert (h.count, list(h.bucket_counts), h.min, h.max) == (3, [1, 1, 1], 0.5, 50.0)
    agg.handle(_ev("a:e", 1, 0, 200, 1))
    m2 = agg.take_metrics()
    assert m2 is not None
    counts = {attr_dict(d.attributes)["code"]: d.as_int
              for d in m2.msg.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points}
    assert counts == {200: 3, 500: 1}


def test_unreadable_string_is_left_out_and_exit_drops_open_spans() -> None:
    cfg = Config(logs=[{"probe": "a:l", "body": "arg0:str", "severity": "WARN", "attributes": {"n": "arg1"}}],
                 spans=[{"name": "r", "start": "a:s", "end": "a:e"}])
    agg, t = _agg(cfg)
    agg.handle(_ev("a:l", 5, 0, 9, s0=b"boom"))
    agg.handle(_ev("a:l", 6, 0, 9, bad=0b10))  # arg1 unreadable
    agg.handle(_ev("a:s", 7, 1))
    agg.remove_process(42)
    logs = agg.take_logs()
    assert logs is not None
    recs = logs.msg.resource_logs[0].scope_logs[0].log_records
    assert recs[0].body.string_value == "boom" and recs[0].severity_text == "WARN"
    assert attr_dict(recs[0].attributes)["n"] == 9
    assert "n" not in attr_dict(recs[1].attributes)
    assert _dropped(t, "process_exited_mid_span") == 1


def test_records_decode_with_and_without_string_slots() -> None:
    import ctypes

    from gotel.ebpf.usdt import CEvent
    from gotel.receivers.usdt import decode_records, record_layout

    t = Telemetry().component("usdt", Kind.RECEIVER)
    full = record_layout(128)
    assert full.size == ctypes.sizeof(CEvent)  # the BPF struct with the default string length
    rec = full.pack(5, 42, 43, 1, 0, 7, (1 << 64) - 1, 0, 0, 0, 0, b"/checkout", b"")
    small = record_layout(1)
    rec_small = small.pack(6, 42, 44, 0, 2, 1, 2, 3, 4, 5, 6, b"", b"") + b"\0" * 6  # padded to 80 bytes
    evs = decode_records([rec, rec_small, b"short", full.pack(1, 1, 1, 9, 0, 0, 0, 0, 0, 0, 0, b"", b"")],
                         ["a:e", "a:s"], t, full)
    assert [(e.probe, e.pid, e.tid, e.args[:2], e.strs[0]) for e in evs[:1]] == [("a:s", 42, 43, (7, (1 << 64) - 1), b"/checkout")]
    assert len(evs) == 1  # the short record is dropped (counted), an unknown probe id ignored
    evs = decode_records([rec_small], ["a:e"], t, small)
    assert (evs[0].args, evs[0].unreadable) == ((1, 2, 3, 4, 5, 6), 2)
