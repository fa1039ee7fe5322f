"""The real `gotel` command: receiver processes restarted after kill -9, clean SIGTERM delivery,
children that die with the agent, health endpoints, the embedded default config."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gotel.pdata.batch import get_attr
from tests.e2e.agent import GOTEL, Agent, alive
from tests.helpers.otlp_sink import OTLPGrpcSink
from tests.helpers.procmem import tree

pytestmark = pytest.mark.slow


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for a in started:
        a.kill()


def seqs(sink: OTLPGrpcSink) -> list[int]:
    return [get_attr(s.attributes, "gotel.synthetic.seq") for s in sink.received.spans()]


def test_kill_9_receiver_is_back_within_2s_and_data_flows(tmp_path: Path, sink: OTLPGrpcSink, agents: list[Agent]) -> None:
    cfg = f"""
receivers:
  synthetic:
    spans_per_second: 400
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
    batch_size: 20
exporters:
  otlp:
    endpoint: http://{sink.address}
    compression: none
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [otlp]}}
"""
    a = Agent(cfg, tmp_path).start()
    agents.append(a)
    r = a.wait_ready()
    pid1 = r["receivers"]["synthetic"]["pid"]
    assert pid1 in tree(a.proc.pid)  # type: ignore[union-attr]  # a child, or forked by the fork server
    assert sink.wait_for(lambda rc: rc.span_count() >= 100, 20), a.output()
    # every request carried the receiver's id to the pipeline; the backend sees the exporter's own metadata
    os.kill(pid1, signal.SIGKILL)
    t0 = time.monotonic()
    pid2 = None
    while time.monotonic() - t0 < 2.0:
        r = a.ready() or {}
        rec = r.get("receivers", {}).get("synthetic", {})
        if rec.get("up") and rec.get("pid") not in (None, pid1):
            pid2 = rec["pid"]
            break
        time.sleep(0.02)
    back_after = time.monotonic() - t0
    assert pid2 is not None, f"receiver not back within 2 s:\n{a.output()}"
    assert alive(pid2) and not alive(pid1)
    before = sink.received.span_count()
    assert sink.wait_for(lambda rc: rc.span_count() >= before + 200, 20), a.output()
    assert a.proc.poll() is None  # type: ignore[union-attr]  # the pipeline never stopped
    assert a.metric("gotel_receiver_restarts_total", component="synthetic") == 1
    assert a.metric("gotel_receiver_up", component="synthetic") == 1
    assert "receiver synthetic was killed by signal 9" in a.output()
    assert a.stop() == 0
    assert not alive(pid2)
    print(f"receiver back after {back_after:.2f}s")


def test_sigterm_delivers_queued_and_batched_data(tmp_path: Path, sink: OTLPGrpcSink, agents: list[Agent]) -> None:
    """Backend refuses at first (data waits in the exporter's queue), batch holds a remainder;
    the backend recovers and SIGTERM arrives: every span is delivered before exit."""
    total = 2300
    sink.fail_with(grpc.StatusCode.UNAVAILABLE)
    cfg = f"""
receivers:
  synthetic:
    spans_per_second: 5000
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
    batch_size: 100
    max_items: {total}
processors:
  batch: {{send_batch_size: 500, timeout: 60s}}
exporters:
  otlp:
    endpoint: http://{sink.address}
    compression: gzip
    retry_on_failure: {{initial_interval: 0.3s, max_interval: 1s, max_elapsed_time: 0}}
service:
  shutdown_timeout: 20s
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [synthetic], processors: [batch], exporters: [otlp]}}
"""
    a = Agent(cfg, tmp_path).start()
    agents.append(a)
    a.wait_ready()
    end = time.monotonic() + 30
    while time.monotonic() < end and a.metric("gotel_processor_incoming_items_total", component="batch") < total:
        time.sleep(0.1)
    assert a.metric("gotel_processor_incoming_items_total", component="batch") == total, a.output()
    assert a.metric("gotel_exporter_queue_size_bytes", component="otlp") > 0  # waiting for the backend
    assert a.metric("gotel_exporter_retries_total", component="otlp") > 0
    assert sink.received.span_count() == 0
    sink.fail_with(None)
    code = a.stop(signal.SIGTERM)
    assert code == 0, a.output()
    got = seqs(sink)
    assert len(got) == total, a.output()
    assert sorted(got) == list(range(total))
    assert "gotel stopped" in a.output()


def test_receiver_processes_die_with_the_agent(tmp_path: Path, agents: list[Agent]) -> None:
    cfg = """
receivers:
  synthetic:
  synthetic/2:
exporters:
  file: {path: ./out.jsonl}
service:
  telemetry: {metrics: {address: "@TELEMETRY@"}}
  pipelines:
    traces: {receivers: [synthetic, synthetic/2], exporters: [file]}
"""
    a = Agent(cfg, tmp_path).start()
    agents.append(a)
    r = a.wait_ready()
    pids = [r["receivers"][k]["pid"] for k in ("synthetic", "synthetic/2")]
    assert all(alive(p) for p in pids)
    a.proc.kill()  # type: ignore[union-attr]  # SIGKILL: no chance to clean up
    a.proc.wait(10)  # type: ignore[union-attr]
    end = time.monotonic() + 5
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


def test_health_metrics_and_file_output(tmp_path: Path, agents: list[Agent]) -> None:
    cfg = """
receivers:
  synthetic:
    spans_per_second: 50
    logs_per_second: 20
    metrics_per_second: 0
    profiles_per_second: 0
    service_name: checkout
    process_pid: 4242
exporters:
  file: {path: ./data/out.jsonl}
service:
  telemetry: {metrics: {address: "@TELEMETRY@", pipelines: [metrics/self], interval: 1s}}
  pipelines:
    traces: {receivers: [synthetic], exporters: [file]}
    logs: {receivers: [synthetic], exporters: [file]}
    metrics/self: {exporters: [file]}
"""
    a = Agent(cfg, tmp_path).start()
    agents.append(a)
    a.wait_ready()
    assert a.get("/healthz") == (200, "ok\n")
    # the receiver process's own counters reach the pipeline's endpoint (pushed every 2 s)
    end = time.monotonic() + 30
    while time.monotonic() < end and a.metric("gotel_receiver_accepted_items_total", component="synthetic", signal="traces") == 0:
        time.sleep(0.1)
    assert a.metric("gotel_receiver_accepted_items_total", component="synthetic", signal="traces") > 0
    # and the self-metrics pipeline (every 1 s) has written at least once
    while time.monotonic() < end and "gotel_exporter_sent_items" not in (tmp_path / "data" / "out.jsonl").read_text():
        time.sleep(0.1)
    body = a.get("/metrics")[1]
    assert body.count("# TYPE gotel_receiver_accepted_items_total counter") <= 1
    assert a.stop() == 0
    import json

    lines = [json.loads(x) for x in (tmp_path / "data" / "out.jsonl").read_text().splitlines()]
    spans = [x for x in lines if "resourceSpans" in x]
    logs = [x for x in lines if "resourceLogs" in x]
    selfm = [x for x in lines if "resourceMetrics" in x]
    assert spans and logs and selfm
    res = spans[0]["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "checkout"}} in res
    assert {"key": "process.pid", "value": {"intValue": "4242"}} in res
    names = {m["name"] for x in selfm for rm in x["resourceMetrics"] for sm in rm["scopeMetrics"] for m in sm["metrics"]}
    assert "gotel_exporter_sent_items" in names and "gotel_receiver_up" in names


def test_validate_command_and_bad_config_refuses_to_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers:\n  synthetic:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [synthetic]\n      exporters: [jaegr]\n")
    r = subprocess.run([GOTEL, "validate", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f'{bad}:9 service::pipelines::traces::exporters: exporter "jaegr" is not configured (configured: debug)' in r.stderr
    r = subprocess.run([GOTEL, "run", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "jaegr" in r.stderr
    r = subprocess.run([GOTEL, "validate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("default.yaml (embedded): valid")


def test_receiver_standalone_to_an_existing_collector(tmp_path: Path, sink: OTLPGrpcSink) -> None:
    """`gotel receiver` with no pipeline: OTLP/gRPC straight to a collector, auth header included."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
receivers:
  synthetic/demo:
    spans_per_second: 1000
    logs_per_second: 0
    metrics_per_second: 0
    profiles_per_second: 0
    max_items: 300
    service_name: standalone
exporters:
  debug:
service:
  pipelines:
    traces: {receivers: [synthetic/demo], exporters: [debug]}
""")
    p = subprocess.Popen([GOTEL, "receiver", "synthetic/demo", "-c", str(cfg), "--endpoint", f"http://{sink.address}",
                          "--header", "Authorization=Bearer t0ken"], stderr=subprocess.PIPE, text=True)
    try:
        assert sink.wait_for(lambda rc: rc.span_count() >= 300, 30)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert sink.received.span_count() == 300
    assert sink.received.metadata[0]["authorization"] == "Bearer t0ken"
    assert sink.received.metadata[0]["gotel-receiver"] == "synthetic/demo"
    assert "t0ken" not in err


def test_components_json_lists_types_schemas_and_aliases() -> None:
    import json

    r = subprocess.run([GOTEL, "components", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    by = {k: {x["type"]: x for x in v} for k, v in data.items() if k not in ("errors", "service_telemetry")}
    assert {"batch", "memory_limiter"} <= set(by["processors"])
    assert {"debug", "file", "otlp", "otlp_http"} <= set(by["exporters"])
    assert by["receivers"]["synthetic"]["in_process"] is False
    assert by["receivers"]["otlp"]["in_process"] is True
    assert "send_batch_size" in by["processors"]["batch"]["schema"]["properties"]
    assert by["exporters"]["file"]["schema"]["required"] == ["path"]
    assert sorted(by["exporters"]["debug"]["signals"]) == ["logs", "metrics", "profiles", "traces"]
    human = subprocess.run([GOTEL, "components"], capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and "memory_limiter" in human.stdout


def test_otlp_in_batch_otlp_out_all_signals_and_fanout_to_file(tmp_path: Path, sink: OTLPGrpcSink, agents: list[Agent]) -> None:
    """The relay: OTLP/gRPC into gotel's otlp receiver, batch, out to a real OTLP server — exactly
    what was sent, for all four signals — and the same data to a file (fan-out to two exporters)."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lg
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mg
    from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2_grpc as pg
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tg

    from tests.e2e.agent import free_port
    from tests.helpers import otlp_samples

    port = free_port()
    cfg = f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{port}"}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  otlp:
    endpoint: http://{sink.address}
  file: {{path: ./relay.jsonl}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [otlp, file]}}
    metrics: {{receivers: [otlp], processors: [batch], exporters: [otlp]}}
    logs: {{receivers: [otlp], processors: [batch], exporters: [otlp]}}
    profiles: {{receivers: [otlp], exporters: [otlp]}}
"""
    a = Agent(cfg, tmp_path).start()
    agents.append(a)
    a.wait_ready()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    sent_traces = [otlp_samples.traces(50, start=i * 50) for i in range(10)]
    for b in sent_traces:
        tg.TraceServiceStub(ch).Export(b.peek(), timeout=10)
    mg.MetricsServiceStub(ch).Export(otlp_samples.metrics(5).peek(), timeout=10)
    lg.LogsServiceStub(ch).Export(otlp_samples.logs(6).peek(), timeout=10)
    prof = otlp_samples.profiles()
    pg.ProfilesServiceStub(ch).Export(prof.peek(), timeout=10)
    ch.close()
    assert sink.wait_for(lambda r: r.span_count() == 500 and bool(r.log_records() and r.metric_list() and r.profile_list()), 20), a.output()
    assert a.stop() == 0
    spans = sink.received.spans()
    assert sorted(s.span_id for s in spans) == sorted(s.span_id for b in sent_traces for rs in b.peek().resource_spans
                                                      for ss in rs.scope_spans for s in ss.spans)
    assert len(sink.received.traces) < 10  # batched into fewer requests
    assert len(sink.received.log_records()) == 6
    assert sum(len(m.gauge.data_points) for m in sink.received.metric_list()) == 5
    assert sink.received.profiles[0] == prof.peek()  # profiles pass through untouched, dictionary and all
    lines = (tmp_path / "relay.jsonl").read_text().splitlines()
    assert sum(len(ss["spans"]) for x in lines for rs in __import__("json").loads(x)["resourceSpans"] for ss in rs["scopeSpans"]) == 500


def test_memory_limiter_refuses_upstream_and_the_agent_keeps_running(tmp_path: Path, sink: OTLPGrpcSink, agents: list[Agent]) -> None:
    """A limit far below the agent's RSS: OTLP senders are told UNAVAILABLE (retry later), the refusal
    is counted, nothing is exported, and the agent stays up and ready."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tg

    from tests.e2e.agent import free_port
    from tests.helpers import otlp_samples

    port = free_port()
    cfg = f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{port}"}}
processors:
  memory_limiter: {{limit_mib: 8, check_interval: 100ms}}
exporters:
  otlp: {{endpoint: "http://{sink.address}"}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [memory_limiter], exporters: [otlp]}}
"""
    a = Agent(cfg, tmp_path).start()
    agents.append(a)
    a.wait_ready()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    with pytest.raises(grpc.RpcError) as ei:
        tg.TraceServiceStub(ch).Export(otlp_samples.traces(10).peek(), timeout=10)
    ch.close()
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "soft limit" in (ei.value.details() or "")
    assert a.metric("gotel_receiver_refused_items_total", component="memory_limiter", signal="traces") == 10
    assert a.metric("gotel_memory_limiter_refusing", component="memory_limiter") == 1
    assert sink.received.span_count() == 0
    assert a.ready() == {**(a.ready() or {}), "ready": True}
    assert a.stop() == 0
