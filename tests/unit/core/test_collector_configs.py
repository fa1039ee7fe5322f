"""Collector configs in the shape of six public ones (tests/unit/core/collector_configs, written for
gotel): every component gotel has is accepted; each one it lacks is exactly one error naming it, with
no follow-on error (a connector used in pipelines is not also "not configured")."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gotel.component.contract import ComponentID
from gotel.config.loader import load_config
from gotel.config.model import ConfigError

HERE = Path(__file__).parent / "collector_configs"
DOC = "(see docs/collector-compatibility.md)"

# file -> (what gotel lacks: "section::type[/name]", what it must accept: section -> ids)
CASES: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "releases_contrib_default.yaml": (
        ["receivers::opencensus", "receivers::prometheus", "receivers::jaeger", "receivers::zipkin"],
        {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["debug"],
         "extensions": ["health_check", "pprof", "zpages"]}),
    "releases_core_default.yaml": (
        [], {"receivers": ["otlp"], "processors": ["batch", "memory_limiter"], "exporters": ["debug"],
             "extensions": ["zpages", "health_check"]}),
    "otel_demo.yaml": (
        ["receivers::httpcheck/frontend-proxy", "receivers::redis", "receivers::hostmetrics",
         "exporters::opensearch", "processors::transform"],
        {"receivers": ["otlp"], "processors": ["batch", "memory_limiter", "resource"],
         "exporters": ["debug", "otlp", "otlphttp/prometheus"]}),
    "jaeger_v2.yaml": (
        ["extensions::healthcheckv2", "extensions::expvar", "extensions::jaeger_query", "extensions::jaeger_storage",
         "extensions::remote_sampling", "receivers::jaeger", "receivers::zipkin",
         "exporters::jaeger_storage_exporter"],
        {"receivers": ["otlp"], "processors": ["batch"], "extensions": ["zpages"]}),
    "contrib_example.yaml": (
        ["exporters::zipkin"],
        {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["prometheus", "debug", "otlp"],
         "extensions": ["health_check", "pprof", "zpages"]}),
    "grafana_lgtm.yaml": (
        ["receivers::prometheus/collector", "connectors::count"],
        {"receivers": ["otlp"], "processors": ["batch"],
         "exporters": ["otlphttp/metrics", "otlphttp/traces", "otlphttp/logs", "debug/metrics"]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_public_collector_config_shapes(name: str) -> None:
    lacking, accepted = CASES[name]
    file = HERE / name
    try:
        cfg = load_config(str(file), env={})
        errors: list[str] = []
    except ConfigError as e:
        errors = [f"{i.path}: {i.message}" for i in e.issues]
        cfg = None
    want = []
    for place in lacking:
        section, _, cid = place.partition("::")
        kind = section.removesuffix("s")
        want.append(f'{place}: gotel has no {kind} "{ComponentID.parse(cid).type}" yet {DOC}')
    assert sorted(errors) == sorted(want)
    if cfg is None:  # the accepted ones: validated alone, without the lacking ones
        return
    for section, ids in accepted.items():
        have = {str(c) for c in getattr(cfg, section)}
        assert set(ids) <= have, section


@pytest.mark.parametrize("name", sorted(CASES))
def test_what_gotel_has_validates_once_the_rest_is_removed(name: str) -> None:
    """Removing each lacking component (and its uses) leaves a config gotel accepts whole."""
    import yaml

    lacking, accepted = CASES[name]
    doc = yaml.safe_load((HERE / name).read_text())
    gone = set()
    for place in lacking:
        section, _, cid = place.partition("::")
        doc[section].pop(cid)
        gone.add(cid)
    svc = doc["service"]
    svc["extensions"] = [e for e in svc.get("extensions", []) if e not in gone]
    for pl in list(svc["pipelines"]):
        body = svc["pipelines"][pl]
        for k in ("receivers", "processors", "exporters"):
            body[k] = [c for c in body.get(k, []) if c not in gone]
        if not body["exporters"]:  # (jaeger_v2: its only exporter is Jaeger's own)
            body["exporters"] = ["debug"]
            doc.setdefault("exporters", {})["debug"] = None
        if not body["receivers"]:
            del svc["pipelines"][pl]
    cfg = load_config(f"{name} (trimmed)", text=yaml.safe_dump(doc), env={})
    for section, ids in accepted.items():
        assert set(ids) <= {str(c) for c in getattr(cfg, section)}, section
    if "pprof" in doc.get("extensions", {}):
        msgs = [w.message for w in cfg.warnings if w.path == "extensions::pprof"]
        assert len(msgs) == 1 and "ignored" in msgs[0] and "pyroscope-io" in msgs[0]


def test_connector_used_in_pipelines_is_one_error_not_three() -> None:
    text = textwrap.dedent("""\
        receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
        exporters: {debug: {}}
        connectors: {count: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [count]}
            metrics: {receivers: [count], exporters: [debug]}
        """)
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", text=text, env={})
    assert [str(i) for i in e.value.issues] == [
        f'c.yaml:3 connectors::count: gotel has no connector "count" yet {DOC}']


def test_a_typo_is_still_unknown_with_a_suggestion() -> None:
    text = "processors: {bacth: {}}\nreceivers: {otlp: {}}\nexporters: {debug: {}}\n" \
           "service: {pipelines: {traces: {receivers: [otlp], processors: [bacth], exporters: [debug]}}}\n"
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", text=text, env={})
    assert len(e.value.issues) == 1
    assert 'unknown processor type "bacth", did you mean "batch"?' in e.value.issues[0].message


def test_jaeger_v2_telemetry_block_is_read_as_the_collector_reads_it() -> None:
    """Jaeger v2's all-in-one service::telemetry (resource, detailed level, a pull reader on 0.0.0.0:8888):
    with the components gotel lacks removed, the block validates and means what it says."""
    text = (HERE / "jaeger_v2.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        load_config("jaeger_v2.yaml", text=text, env={})
    assert not [i for i in e.value.issues if "telemetry" in str(i.path)], e.value.issues
    import yaml

    doc = yaml.safe_load(text)
    cfg = load_config("t.yaml", env={}, text=yaml.safe_dump({
        "receivers": {"otlp": doc["receivers"]["otlp"]}, "exporters": {"debug": {}},
        "service": {"telemetry": doc["service"]["telemetry"],
                    "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}}}))
    t = cfg.service.telemetry
    assert t.resource == {"service.name": "jaeger"} and t.metrics.level == "detailed" and t.logs.level == "info"
    prom = t.metrics.readers[0].pull.exporter.prometheus
    assert (prom.host, prom.port) == ("0.0.0.0", 8888) and not t.metrics.serves_address()
