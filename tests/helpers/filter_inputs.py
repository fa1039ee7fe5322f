"""Known input for the filter processor's tests: the collector README's examples, each with items it
must drop and items it must keep, and a summary of a batch (resources, scopes, items, span events /
data points) to compare gotel's output with the expected one and with the real collector's."""

from __future__ import annotations

from typing import Any

from gotel.pdata.batch import Batch, Logs, Metrics, Traces, attr_dict, kv, value_of

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def _span(ss: Any, name: str, *, attrs: dict[str, Any] | None = None, events: tuple[tuple[str, dict[str, Any]], ...] = (),
          kind: int = 1, status: int = 0, dur: int = SEC // 10) -> None:
    s = ss.spans.add(name=name, kind=kind, trace_id=bytes(range(1, 17)), span_id=bytes([len(ss.spans)] * 8),
                     start_time_unix_nano=T0, end_time_unix_nano=T0 + dur)
    s.status.code = status
    s.attributes.extend(kv(k, v) for k, v in (attrs or {}).items())
    for ename, eattrs in events:
        e = s.events.add(name=ename, time_unix_nano=T0 + 1)
        e.attributes.extend(kv(k, v) for k, v in eattrs.items())


def traces() -> Batch:
    b = Traces()
    m = b.msg
    r = m.resource_spans.add()
    r.resource.attributes.extend([kv("host.name", "localhost"), kv("service.name", "local")])
    _span(r.scope_spans.add(), "on-localhost")
    r = m.resource_spans.add()
    r.resource.attributes.extend([kv("host.name", "web-1"), kv("service.name", "svc"),
                                  kv("k8s.pod.name", "pod-1")])
    ss = r.scope_spans.add()
    ss.scope.name = "lib.a"
    _span(ss, "app_3")
    _span(ss, "c1", attrs={"container.name": "app_container_1"})
    _span(ss, "c2", attrs={"container.name": "app_container_2", "n": 7},
          events=(("grpc.call", {}), ("db", {"grpc": True}), ("db2", {"grpc": "true"}), ("log", {})))
    _span(ss, "c3", events=(("only-grpc", {}),))
    _span(ss, "slow-error", kind=2, status=2, dur=2 * SEC, attrs={"http.request.method": "GET"})
    _span(ss, "slow-ok", kind=3, status=1, dur=3 * SEC, attrs={"http.request.method": "POST"})
    _span(ss, "fast-http", kind=2, dur=SEC // 2, attrs={"http.request.method": "GET", "n": "long-string"})
    ss = r.scope_spans.add()
    ss.scope.name = "lib.b"
    _span(ss, "app_3")
    r.scope_spans.add().scope.name = "lib.empty"
    r = m.resource_spans.add()
    r.resource.attributes.extend([kv("host.name", "db-1"), kv("k8s.pod.name", "my-pod-name")])
    _span(r.scope_spans.add(), "on-my-pod", kind=5)
    return Traces.parse(b.to_bytes())


def _gauge(sm: Any, name: str, points: list[tuple[Any, dict[str, Any]]], kind: str = "gauge") -> None:
    met = sm.metrics.add(name=name)
    data = getattr(met, kind)
    if kind == "sum":
        data.aggregation_temporality = 2
        data.is_monotonic = True
    for v, attrs in points:
        p = data.data_points.add(time_unix_nano=T0)
        if isinstance(v, int):
            p.as_int = v
        else:
            p.as_double = v
        p.attributes.extend(kv(k, x) for k, x in attrs.items())


def metrics() -> Batch:
    b = Metrics()
    m = b.msg
    r = m.resource_metrics.add()
    r.resource.attributes.extend([kv("my_label", "abc123"), kv("service.name", "other")])
    sm = r.scope_metrics.add()
    sm.scope.name = "meter"
    _gauge(sm, "my.metric", [(1, {})])
    _gauge(sm, "other.metric", [(2, {"http.method": "GET"}), (3.5, {"http.method": "POST"})], "sum")
    h = sm.metrics.add(name="latency")
    hp = h.histogram.data_points.add(count=2, sum=3.0, time_unix_nano=T0)
    hp.bucket_counts.extend([1, 1])
    hp.explicit_bounds.append(1.0)
    h.histogram.aggregation_temporality = 2
    s = sm.metrics.add(name="quantiles")
    sp = s.summary.data_points.add(count=1, sum=1.0, time_unix_nano=T0)
    sp.attributes.append(kv("q", "x"))
    _gauge(sm, "k8s.pod.phase", [(4, {"pod": "a"}), (2, {"pod": "b"})])
    _gauge(sm, "bad.metric.holder", [(1, {"bad.metric": "true"}), (1, {"ok": "1"})])
    sm.metrics.add(name="typeless")
    sm.metrics.add(name="empty.gauge").gauge.SetInParent()  # a gauge without data points
    r = m.resource_metrics.add()
    r.resource.attributes.append(kv("service.name", "my_service_name"))
    _gauge(r.scope_metrics.add(), "g", [(1, {}), (2, {})])
    r = m.resource_metrics.add()
    r.resource.attributes.append(kv("my_label", "xyz"))
    _gauge(r.scope_metrics.add(), "my.metric", [(5, {})])
    return Metrics.parse(b.to_bytes())


def logs() -> Batch:
    b = Logs()
    r = b.msg.resource_logs.add()
    r.resource.attributes.append(kv("service.name", "app"))
    sl = r.scope_logs.add()
    sl.scope.name = "logger"
    for body, sev in (("password reset for bob", 17), ("ok", 13), ("debug stuff", 5), (42, 17),
                      ({"password": "x"}, 17), ("no severity", 0), (None, 21), ("test", 9)):
        lr = sl.log_records.add(severity_number=sev, time_unix_nano=T0, severity_text=f"S{sev}")
        if body is not None:
            lr.body.CopyFrom(kv("b", body).value)
    return Logs.parse(b.to_bytes())


def summary(requests: list[Any]) -> list[Any]:
    """What a batch holds, in order: per resource its attributes and per scope its name and items, with
    span event names or data point counts. Resources and scopes left empty show up here."""
    out: list[Any] = []
    for req in requests:
        for r in getattr(req, req.DESCRIPTOR.fields[0].name):
            scopes = []
            for s in getattr(r, r.DESCRIPTOR.fields_by_number[2].name):
                items: list[Any] = []
                for it in getattr(s, s.DESCRIPTOR.fields_by_number[2].name):
                    if hasattr(it, "events"):
                        items.append((it.name, [e.name for e in it.events]))
                    elif hasattr(it, "body"):
                        items.append((it.severity_number, value_of(it.body)))
                    else:
                        kind = it.WhichOneof("data")
                        items.append((it.name, len(getattr(it, kind).data_points) if kind else None))
                scopes.append((s.scope.name, items))
            out.append((attr_dict(r.resource.attributes), scopes))
    return out
