"""The filter processor's cases: a config (the collector README's examples first) and, for the known
input of tests/helpers/filter_inputs.py, what must come out, resource by resource and item by item.
Shared by the unit test (gotel alone) and the comparison with the real collector."""

from __future__ import annotations

from typing import Any

from gotel.pdata.batch import Signal

WEB = {"host.name": "web-1", "service.name": "svc", "k8s.pod.name": "pod-1"}
LOCAL = {"host.name": "localhost", "service.name": "local"}
DB = {"host.name": "db-1", "k8s.pod.name": "my-pod-name"}
ALL_A = [("app_3", []), ("c1", []), ("c2", ["grpc.call", "db", "db2", "log"]), ("c3", ["only-grpc"]),
         ("slow-error", []), ("slow-ok", []), ("fast-http", [])]
R1 = {"my_label": "abc123", "service.name": "other"}
R2 = {"service.name": "my_service_name"}
R3 = {"my_label": "xyz"}
R1_ALL = [("my.metric", 1), ("other.metric", 2), ("latency", 1), ("quantiles", 1), ("k8s.pod.phase", 2),
          ("bad.metric.holder", 2), ("typeless", None), ("empty.gauge", 0)]


README_OTTL = {  # the README's first (per-context) example
    "error_mode": "ignore",
    "traces": {
        "span": ['attributes["container.name"] == "app_container_1"',
                 'resource.attributes["host.name"] == "localhost"', 'name == "app_3"'],
        "spanevent": ['attributes["grpc"] == true', 'IsMatch(name, ".*grpc.*")'],
    },
    "metrics": {
        "metric": ['name == "my.metric" and resource.attributes["my_label"] == "abc123"',
                   "type == METRIC_DATA_TYPE_HISTOGRAM"],
        "datapoint": ["metric.type == METRIC_DATA_TYPE_SUMMARY",
                      'resource.attributes["service.name"] == "my_service_name"'],
    },
    "logs": {"log_record": ['IsMatch(body, ".*password.*")', "severity_number < SEVERITY_NUMBER_WARN"]},
}
README_ADVANCED = {  # the README's advanced (grouped) example
    "error_mode": "propagate",
    "trace_conditions": [
        {"conditions": ['resource.attributes["host.name"] == "localhost"']},
        {"error_mode": "ignore", "conditions": ['span.attributes["container.name"] == "container_1"',
                                                'span.name == "app_3"']},
        {"conditions": ['spanevent.attributes["grpc"] == true', 'IsMatch(spanevent.name, ".*grpc.*")']},
    ],
    "metric_conditions": [
        {"conditions": ['metric.name == "my.metric" and resource.attributes["my_label"] == "abc123"',
                        "metric.type == METRIC_DATA_TYPE_HISTOGRAM"]},
        {"conditions": ["metric.type == METRIC_DATA_TYPE_SUMMARY"]},
    ],
    "log_conditions": [{"conditions": ['IsMatch(log.body, ".*password.*")',
                                       "log.severity_number < SEVERITY_NUMBER_WARN"]}],
}
KEPT_LOGS = [({"service.name": "app"}, [("logger", [(13, "ok"), (17, 42), (21, None)])])]

# (id, config, signal, expected summary: [(resource attributes, [(scope name, [items])])])
CASES: list[tuple[str, dict[str, Any], Signal, Any]] = [
    ("readme-ottl-traces", README_OTTL, Signal.TRACES, [
        (WEB, [("lib.a", [("c2", ["db2", "log"]), ("c3", []), ("slow-error", []), ("slow-ok", []),
                          ("fast-http", [])])]),
        (DB, [("", [("on-my-pod", [])])])]),
    ("readme-ottl-metrics", README_OTTL, Signal.METRICS, [
        (R1, [("meter", [("other.metric", 2), ("k8s.pod.phase", 2), ("bad.metric.holder", 2), ("typeless", None)])]),
        (R3, [("", [("my.metric", 1)])])]),
    ("readme-ottl-logs", README_OTTL, Signal.LOGS, KEPT_LOGS),
    ("readme-advanced-traces", README_ADVANCED, Signal.TRACES, [
        (WEB, [("lib.a", [("c1", []), ("c2", ["db2", "log"]), ("c3", []), ("slow-error", []), ("slow-ok", []),
                          ("fast-http", [])])]),
        (DB, [("", [("on-my-pod", [])])])]),
    ("readme-advanced-metrics", README_ADVANCED, Signal.METRICS, [
        (R1, [("meter", [("other.metric", 2), ("k8s.pod.phase", 2), ("bad.metric.holder", 2), ("typeless", None),
                         ("empty.gauge", 0)])]),
        (R2, [("", [("g", 2)])]),
        (R3, [("", [("my.metric", 1)])])]),
    ("readme-advanced-logs", README_ADVANCED, Signal.LOGS, KEPT_LOGS),
    ("drop-by-resource-attribute", {"trace_conditions": ['resource.attributes["k8s.pod.name"] == "my-pod-name"']},
     Signal.TRACES, [
         (LOCAL, [("", [("on-localhost", [])])]),
         (WEB, [("lib.a", ALL_A), ("lib.b", [("app_3", [])]), ("lib.empty", [])])]),
    ("drop-typeless-metrics", {"metric_conditions": ["metric.type == METRIC_DATA_TYPE_NONE"]}, Signal.METRICS, [
        (R1, [("meter", [x for x in R1_ALL if x[0] != "typeless"])]), (R2, [("", [("g", 2)])]),
        (R3, [("", [("my.metric", 1)])])]),
    ("drop-metric-and-value", {"metric_conditions": ['metric.name == "k8s.pod.phase" and datapoint.value_int == 4']},
     Signal.METRICS, [
         (R1, [("meter", [(n, 1 if n == "k8s.pod.phase" else c) for n, c in R1_ALL if n != "empty.gauge"])]),
         (R2, [("", [("g", 2)])]), (R3, [("", [("my.metric", 1)])])]),
    ("drop-non-http-spans", {"trace_conditions": ['span.attributes["http.request.method"] == nil']}, Signal.TRACES, [
        (WEB, [("lib.a", [("slow-error", []), ("slow-ok", []), ("fast-http", [])])])]),
    ("drop-http-spans", {"trace_conditions": ['span.attributes["http.request.method"] != nil']}, Signal.TRACES, [
        (LOCAL, [("", [("on-localhost", [])])]),
        (WEB, [("lib.a", ALL_A[:4]), ("lib.b", [("app_3", [])])]),
        (DB, [("", [("on-my-pod", [])])])]),
    ("drop-fast-non-error-spans", {"trace_conditions": [
        '(span.end_time - span.start_time) < Duration("1s") and span.status.code != STATUS_CODE_ERROR']},
     Signal.TRACES, [(WEB, [("lib.a", [("slow-error", []), ("slow-ok", [])])])]),
    # no item can match (the literals are nowhere in the request): what is empty still goes
    ("nothing-matches-traces", {"traces": {"span": ['name == "absent-name"']}}, Signal.TRACES, [
        (LOCAL, [("", [("on-localhost", [])])]),
        (WEB, [("lib.a", ALL_A), ("lib.b", [("app_3", [])])]),
        (DB, [("", [("on-my-pod", [])])])]),
    ("nothing-matches-metrics", {"metrics": {"datapoint": ['attributes["x"] == "absent"']}}, Signal.METRICS, [
        (R1, [("meter", R1_ALL[:-1])]), (R2, [("", [("g", 2)])]), (R3, [("", [("my.metric", 1)])])]),
    ("legacy-resource-list", {"traces": {"resource": ['attributes["host.name"] == "localhost"']}}, Signal.TRACES, [
        (WEB, [("lib.a", ALL_A), ("lib.b", [("app_3", [])]), ("lib.empty", [])]),
        (DB, [("", [("on-my-pod", [])])])]),
    ("inferred-lowest-context", {"trace_conditions": [
        'resource.attributes["host.name"] == "localhost" or spanevent.name == "db"']}, Signal.TRACES, [
        (LOCAL, [("", [("on-localhost", [])])]),
        (WEB, [("lib.a", [(n, [e for e in evs if e != "db"]) for n, evs in ALL_A]), ("lib.b", [("app_3", [])])]),
        (DB, [("", [("on-my-pod", [])])])]),
    ("datapoint-values", {"metric_conditions": ['datapoint.attributes["http.method"] == "GET"',
                                                "datapoint.value_double > 3", "datapoint.count == 2",
                                                "datapoint.value_int == nil and datapoint.sum == nil"]},
     Signal.METRICS, [
         (R1, [("meter", [x for x in R1_ALL if x[0] not in ("other.metric", "latency", "empty.gauge")])]),
         (R2, [("", [("g", 2)])]), (R3, [("", [("my.metric", 1)])])]),
    ("metric-fields", {"metrics": {"metric": ["aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE",
                                              'unit == "ms" or description == "x"']}}, Signal.METRICS, [
        (R1, [("meter", [x for x in R1_ALL if x[0] not in ("other.metric", "latency")])]),
        (R2, [("", [("g", 2)])]), (R3, [("", [("my.metric", 1)])])]),
    ("legacy-log-resource", {"logs": {"resource": ['attributes["service.name"] == "app"']}}, Signal.LOGS, []),
    ("has-attr-key-on-datapoint", {"metrics": {"metric": ['HasAttrKeyOnDatapoint("bad.metric")']}}, Signal.METRICS, [
        (R1, [("meter", [x for x in R1_ALL if x[0] != "bad.metric.holder"])]),
        (R2, [("", [("g", 2)])]), (R3, [("", [("my.metric", 1)])])]),
    ("has-attr-on-datapoint", {"metrics": {"metric": ['HasAttrOnDatapoint("bad.metric", "true")']}}, Signal.METRICS, [
        (R1, [("meter", [x for x in R1_ALL if x[0] != "bad.metric.holder"])]),
        (R2, [("", [("g", 2)])]), (R3, [("", [("my.metric", 1)])])]),
    ("duration-in-nanoseconds", {"traces": {"span": ["end_time_unix_nano - start_time_unix_nano > 1000000000"]}},
     Signal.TRACES, [
         (LOCAL, [("", [("on-localhost", [])])]),
         (WEB, [("lib.a", [x for x in ALL_A if not x[0].startswith("slow")]), ("lib.b", [("app_3", [])])]),
         (DB, [("", [("on-my-pod", [])])])]),
    ("kind-and-scope", {"traces": {"span": ["kind == SPAN_KIND_SERVER", 'instrumentation_scope.name == "lib.b"',
                                            "span.kind == SPAN_KIND_CONSUMER"]}}, Signal.TRACES, [
        (LOCAL, [("", [("on-localhost", [])])]),
        (WEB, [("lib.a", [x for x in ALL_A if x[0] not in ("slow-error", "fast-http")])])]),
    ("scope-context", {"trace_conditions": ['scope.name == "lib.a"', 'not IsMatch(span.name, "^(c|on)")']},
     Signal.TRACES, [
         (LOCAL, [("", [("on-localhost", [])])]),
         (DB, [("", [("on-my-pod", [])])])]),
    ("error-mode-ignore", {"error_mode": "ignore", "trace_conditions": ['Len(span.attributes["n"]) > 5']},
     Signal.TRACES, [
         (LOCAL, [("", [("on-localhost", [])])]),
         (WEB, [("lib.a", ALL_A[:-1]), ("lib.b", [("app_3", [])])]),
         (DB, [("", [("on-my-pod", [])])])]),
    ("log-severity-text-and-body", {"log_conditions": ['log.severity_text == "S17" and IsString(log.body)',
                                                       "log.body == nil", 'log.body == "test"']}, Signal.LOGS, [
        ({"service.name": "app"}, [("logger", [(13, "ok"), (5, "debug stuff"), (17, 42), (17, {"password": "x"}),
                                    (0, "no severity")])])]),
]
