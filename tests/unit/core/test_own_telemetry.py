"""`service::telemetry` as the collector's documentation writes it: readers, level, logs, resource."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotel.component.ids import Kind
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.config.ports import listeners
from gotel.pdata.batch import attr_dict
from gotel.telemetry.counters import Telemetry
from gotel.telemetry.sdk.level import LevelView, safe_endpoint
from gotel.telemetry.sdk.logs import apply_log_config, relog, shutdown_providers
from gotel.telemetry.sdk.resource import own_resource
from tests.helpers.otlp_sink import OTLPGrpcSink

PIPELINE = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:0}
exporters:
  debug:
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [debug]}
"""


def load(telemetry: str) -> object:
    text = PIPELINE + "  telemetry:\n" + textwrap.indent(textwrap.dedent(telemetry), "    ")
    return load_config("config.yaml", text=text, env={})


def test_the_collector_docs_pull_reader() -> None:
    cfg = load("""
        metrics:
          readers:
            - pull:
                exporter:
                  prometheus:
                    host: 0.0.0.0
                    port: 8888
        """)
    tm = cfg.service.telemetry.metrics  # type: ignore[attr-defined]
    prom = tm.readers[0].pull.exporter.prometheus
    assert (prom.host, prom.port) == ("0.0.0.0", 8888)
    # the pull reader replaces the default address endpoint (both would want port 8888)
    assert not tm.serves_address()
    assert next(ln.key for ln in listeners(cfg)) == "service::telemetry::metrics::readers::0::pull"  # type: ignore[arg-type]


def test_a_pull_reader_defaults_to_loopback() -> None:
    cfg = load("""
        metrics:
          readers:
            - pull: {exporter: {prometheus: {port: 9464}}}
        """)
    assert cfg.service.telemetry.metrics.readers[0].pull.exporter.prometheus.host == "127.0.0.1"  # type: ignore[attr-defined]


def test_the_collector_docs_periodic_otlp_reader_with_resource_and_level() -> None:
    cfg = load("""
        resource:
          service.name: "my-collector"
        metrics:
          level: normal
          readers:
            - periodic:
                interval: 60000
                exporter:
                  otlp:
                    protocol: "http/protobuf"
                    endpoint: "https://ingest.example.com:443"
                    headers:
                      ingestion-key: "secret-key"
        """)
    t = cfg.service.telemetry  # type: ignore[attr-defined]
    p = t.metrics.readers[0].periodic
    assert p.interval == 60.0 and p.exporter.otlp.protocol == "http/protobuf"
    assert p.exporter.otlp.headers == {"ingestion-key": "secret-key"}
    assert t.metrics.serves_address()  # no pull reader: the default endpoint stays
    assert own_resource(t.resource)["service.name"] == "my-collector"


def test_headers_as_the_schema_list_and_the_console_exporter() -> None:
    cfg = load("""
        metrics:
          readers:
            - periodic:
                exporter:
                  otlp:
                    protocol: grpc
                    endpoint: http://localhost:4317
                    headers:
                      - name: api-key
                        value: "1234"
            - periodic:
                exporter:
                  console:
        """)
    rs = cfg.service.telemetry.metrics.readers  # type: ignore[attr-defined]
    assert rs[0].periodic.exporter.otlp.headers == {"api-key": "1234"}
    assert rs[1].periodic.exporter.console == {}


def test_the_collector_docs_logs_block() -> None:
    cfg = load("""
        logs:
          level: warn
          encoding: json
          output_paths: [stdout]
          error_output_paths: [stderr]
          initial_fields: {service: my-collector}
          sampling: {enabled: true, tick: 10s, initial: 10, thereafter: 100}
          processors:
            - batch:
                exporter:
                  otlp:
                    protocol: http/protobuf
                    endpoint: https://backend:4318
        """)
    lg = cfg.service.telemetry.logs  # type: ignore[attr-defined]
    assert (lg.level, lg.encoding, lg.output_paths) == ("warn", "json", ["stdout"])
    assert lg.processors[0].batch.exporter.otlp.endpoint == "https://backend:4318"


@pytest.mark.parametrize("telemetry,where", [
    ("metrics: {readers: [{pull: {exporter: {prometheus: {port: 70000}}}}]}",
     "service::telemetry::metrics::readers::0::pull::exporter::prometheus::port"),
    ("metrics: {readers: [{periodic: {exporter: {otlp: {protocol: http/json, endpoint: x}}}}]}",
     "service::telemetry::metrics::readers::0::periodic::exporter::otlp::protocol"),
    ("metrics: {readers: [{pull: {exporter: {prometheus: {}}}, periodic: {exporter: {console: {}}}}]}",
     "service::telemetry::metrics::readers::0"),
    ("metrics: {readers: [{periodic: {exporter: {}}}]}",
     "service::telemetry::metrics::readers::0::periodic::exporter"),
    ("logs: {encoding: xml}", "service::telemetry::logs::encoding"),
])
def test_a_wrong_reader_or_log_key_is_one_error_at_its_place(telemetry: str, where: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load(telemetry)
    assert len(ei.value.issues) == 1, ei.value.issues
    assert f" {where}: " in str(ei.value.issues[0]), str(ei.value.issues[0])


def test_a_pull_reader_on_the_address_port_is_a_clash() -> None:
    with pytest.raises(ConfigError) as ei:
        load("""
            metrics:
              address: 127.0.0.1:9911
              readers: [{pull: {exporter: {prometheus: {host: 127.0.0.1, port: 9911}}}}]
            """)
    assert "is also service::telemetry::metrics::address" in str(ei.value)


def test_level_basic_shows_the_pipeline_counters_only() -> None:
    tel = Telemetry()
    c = tel.component("otlp", Kind.RECEIVER)
    c.accepted("traces", 3)
    c.counter("ring_lost_events", "lost in the ring buffer").inc(2)
    names = {lvl: {f.name for f in LevelView(tel.registry, lvl, tel.core).collect()}
             for lvl in ("none", "basic", "normal", "detailed")}
    assert names["none"] == set()
    assert "gotel_receiver_accepted_items" in names["basic"]
    assert "gotel_ring_lost_events" not in names["basic"]
    assert "gotel_ring_lost_events" in names["normal"] and names["normal"] == names["detailed"]


def test_own_resource_defaults_and_null_removes() -> None:
    r = own_resource({"service.name": "x", "process.pid": None, "k8s.node.name": "n1"}, pid=42)
    assert r["service.name"] == "x" and r["k8s.node.name"] == "n1" and "process.pid" not in r
    assert r["service.instance.id"].endswith(":42") and r["service.version"]


def test_safe_endpoint_hides_credentials() -> None:
    assert safe_endpoint("https://user:hunter2@example.com:4318/v1/metrics?key=abc") == "https://example.com:4318/v1/metrics"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_to_files_with_initial_fields_and_redaction(tmp_path: Path, root_logging: None) -> None:
    cfg = load(f"""
        logs:
          level: info
          encoding: json
          output_paths: ["{tmp_path / 'all.log'}"]
          error_output_paths: ["{tmp_path / 'errors.log'}"]
          initial_fields: {{node: n1}}
        """).service.telemetry.logs  # type: ignore[attr-defined]
    apply_log_config(cfg, cfg.level, {})
    logging.getLogger("gotel.x").debug("not at info")
    logging.getLogger("gotel.x").info("sent with authorization: Bearer abc123")
    logging.getLogger("gotel.x").error("it failed")
    relog("2026-01-02 03:04:05,678 WARNING [receiver otlp] gotel.r: slow, token=abc")  # a receiver process's line
    for h in logging.getLogger().handlers:
        h.flush()
    lines = [json.loads(x) for x in (tmp_path / "all.log").read_text().splitlines()]
    assert [(x["level"], x["logger"], x["node"]) for x in lines] == [
        ("info", "gotel.x", "n1"), ("error", "gotel.x", "n1"), ("warning", "gotel.r", "n1")]
    assert lines[2]["msg"] == "[receiver otlp] slow, token=***"
    assert "abc123" not in lines[0]["msg"] and "***" in lines[0]["msg"]
    errors = [json.loads(x)["msg"] for x in (tmp_path / "errors.log").read_text().splitlines()]
    assert errors == ["it failed"]


def test_log_processors_export_own_records_as_otlp(root_logging: None) -> None:
    sink = OTLPGrpcSink().start()
    try:
        cfg = load(f"""
            logs:
              processors:
                - batch:
                    schedule_delay: 100
                    exporter:
                      otlp: {{protocol: grpc, endpoint: "http://{sink.address}"}}
            """).service.telemetry.logs  # type: ignore[attr-defined]
        providers = apply_log_config(cfg, "info", own_resource({"service.name": "gotel-logs"}))
        logging.getLogger("gotel.x").warning("receiver restarted")
        shutdown_providers(providers)  # flushes the batch
        assert sink.wait_for(lambda r: len(r.log_records()) >= 1, 10)
        recs = sink.received.log_records()
        assert [r.body.string_value for r in recs] == ["receiver restarted"]
        assert recs[0].severity_text == "WARN" or recs[0].severity_text == "WARNING"
        res = attr_dict(sink.received.logs[0].resource_logs[0].resource.attributes)
        assert res["service.name"] == "gotel-logs"
    finally:
        sink.stop()


def test_gotel_components_telemetry_lists_the_readers_keys(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gotel.cli.main import main

    monkeypatch.setenv("COLUMNS", "250")
    assert main(["components", "telemetry"]) == 0
    out = capsys.readouterr().out
    for key in ("metrics.readers[].pull.exporter.prometheus.host", "metrics.readers[].periodic.exporter.otlp.endpoint",
                "logs.encoding", "logs.processors[].batch.exporter.otlp.protocol", "resource",
                "profiling.server_address"):
        assert key in out, key
    assert main(["components", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)["service_telemetry"]
    assert "readers" in schema["$defs"]["TelemetryMetrics"]["properties"]


def test_reader_times_are_milliseconds_when_bare_as_in_the_collectors_schema() -> None:
    cfg = load("""
        metrics:
          readers:
            - periodic: {interval: 300, timeout: "2s", exporter: {otlp: {endpoint: "http://x:4318", timeout: 1500}}}
        """)
    p = cfg.service.telemetry.metrics.readers[0].periodic  # type: ignore[attr-defined]
    assert (p.interval, p.timeout, p.exporter.otlp.timeout) == (0.3, 2.0, 1.5)
