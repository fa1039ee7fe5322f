"""The Prometheus rule file: generated from the diagnosis rules, equal to the committed one, valid for the
real promtool, and each alert's logic checked by `promtool test rules` on series named as gotel exports them
(tests/integration/alerts shows the names against a live scrape)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gotel.cli.main import main
from gotel.diagnose import promrules

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "config" / "prometheus" / "gotel-rules.yaml"
PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus package (scripts/bootstrap.sh installs it)


def test_committed_file_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "prometheus"]) == 0
    out = capsys.readouterr().out
    assert out == promrules.render()
    assert COMMITTED.read_text() == out, "regenerate: gotel rules prometheus > config/prometheus/gotel-rules.yaml"


def test_promtool_accepts_the_committed_file() -> None:
    r = subprocess.run([PROMTOOL, "check", "rules", str(COMMITTED)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(promrules.alerts())} rules found" in r.stdout


def test_every_rule_has_an_alert_on_exported_metrics() -> None:
    alerts = promrules.alerts()
    assert {a.rule for a in alerts} == set(promrules.RULE_IDS)
    for a in alerts:
        assert a.severity in ("critical", "warning", "info")
        used = promrules.metrics_in(a.expr)
        assert used, a.expr
        assert a.fix and a.summary and a.description


def test_thresholds_are_the_diagnosis_rules_defaults() -> None:
    try:
        from gotel.diagnose.rules import BY_ID  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # this branch has no rules module yet: the documented defaults are used
        assert promrules.thresholds("grpc_errors") == promrules.DEFAULTS["grpc_errors"]
        return
    for rule, names in promrules.DEFAULTS.items():
        params = BY_ID[rule].params()
        assert set(names) <= set(params), f"{rule}: thresholds {set(names) - set(params)} are gone"
        assert promrules.thresholds(rule) == {k: params[k] for k in names}


def test_for_override_and_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "prometheus", "--for", "0"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert {r["for"] for r in doc["groups"][0]["rules"]} == {"0s"}
    assert main(["rules", "prometheus", "--for", "1.5s"]) == 2
    err = capsys.readouterr().err
    assert "--for '1.5s'" in err and "not a Prometheus duration" in err


G = 'job="checkout",otel_scope_name="gotel.receivers.go_ebpf",rpc_system="grpc",rpc_service="shop.Cart",rpc_method="Add"'
GL = {"job": "checkout", "otel_scope_name": "gotel.receivers.go_ebpf", "rpc_system": "grpc",
      "rpc_service": "shop.Cart", "rpc_method": "Add"}
P = 'job="api",process_pid="42"'
PL = {"job": "api", "process_pid": "42"}


def _exp(rule: str, severity: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {**labels, "rule": rule, "severity": severity, "source": "gotel"}}


# (name, input series, eval time, alertname, expected alerts). Series use 1m steps; rates are per second.
CASES: list[tuple[str, list[tuple[str, str]], str, str, list[dict[str, Any]]]] = [
    ("throttling 30% warns, 70% is critical", [
        ('container_cpu_periods_total{gotel_cgroup_path="/a"}', "0+600x30"),
        ('container_cpu_throttled_periods_total{gotel_cgroup_path="/a"}', "0+180x30"),
        ('container_cpu_periods_total{gotel_cgroup_path="/b"}', "0+600x30"),
        ('container_cpu_throttled_periods_total{gotel_cgroup_path="/b"}', "0+420x30"),
        ('container_cpu_periods_total{gotel_cgroup_path="/c"}', "0+600x30"),
        ('container_cpu_throttled_periods_total{gotel_cgroup_path="/c"}', "0+6x30"),
    ], "20m", "GotelCPUThrottling", [
        _exp("cpu_throttling", "warning", gotel_cgroup_path="/a"),
        _exp("cpu_throttling", "warning", gotel_cgroup_path="/b"),
        _exp("cpu_throttling", "critical", gotel_cgroup_path="/b")]),
    ("run queue: 43% of wanted time waiting, 30 ms a slice; barely waiting, or many tiny waits, is fine", [
        (f"process_schedstat_run_delay_seconds_total{{{P}}}", "0+18x30"),
        (f"process_schedstat_timeslices_total{{{P}}}", "0+600x30"),
        (f'process_cpu_time_seconds_total{{{P},cpu_mode="user"}}', "0+12x30"),
        (f'process_cpu_time_seconds_total{{{P},cpu_mode="system"}}', "0+12x30"),
        ('process_schedstat_run_delay_seconds_total{job="idle"}', "0+0.6x30"),
        ('process_schedstat_timeslices_total{job="idle"}', "0+6x30"),
        ('process_cpu_time_seconds_total{job="idle",cpu_mode="user"}', "0+0.6x30"),
        ('process_schedstat_run_delay_seconds_total{job="chatty"}', "0+18x30"),
        ('process_schedstat_timeslices_total{job="chatty"}', "0+60000x30"),
        ('process_cpu_time_seconds_total{job="chatty",cpu_mode="user"}', "0+12x30"),
    ], "20m", "GotelRunQueueLatency", [_exp("run_queue_latency", "warning", **PL)]),
    ("GC pause p99 between 67 and 134 ms", [
        ('go_gc_pause_duration_seconds_bucket{job="a",go_gc_pause_phase="sweep_termination",le="0.067108864"}', "0+50x30"),
        ('go_gc_pause_duration_seconds_bucket{job="a",go_gc_pause_phase="sweep_termination",le="0.134217728"}', "0+60x30"),
        ('go_gc_pause_duration_seconds_bucket{job="a",go_gc_pause_phase="sweep_termination",le="+Inf"}', "0+60x30"),
        ('go_gc_pause_duration_seconds_bucket{job="b",go_gc_pause_phase="sweep_termination",le="0.001048576"}', "0+60x30"),
        ('go_gc_pause_duration_seconds_bucket{job="b",go_gc_pause_phase="sweep_termination",le="+Inf"}', "0+60x30"),
    ], "20m", "GotelGCPause", [_exp("gc", "warning", job="a")]),
    ("15 GC cycles per second", [('go_gc_cycles_total{job="a"}', "0+900x30"), ('go_gc_cycles_total{job="b"}', "0+60x30")],
     "20m", "GotelGCFrequency", [_exp("gc", "info", job="a")]),
    ("one thread blocked in nanosleep on average", [
        (f'process_syscall_slow_time_seconds_total{{{P},gotel_syscall_name="nanosleep"}}', "0+60x30"),
        (f'process_syscall_slow_time_seconds_total{{{P},gotel_syscall_name="read"}}', "0+6x30"),
    ], "20m", "GotelSlowSyscalls", [_exp("slow_syscall", "warning", **PL, gotel_syscall_name="nanosleep")]),
    ("half a second of waiting per second at main.contend", [
        ('gotel_lock_contention_delay_seconds_total{job="a",code_function_name="main.contend"}', "0+30x30"),
        ('gotel_lock_contention_delay_seconds_total{job="a",code_function_name="runtime.unlock"}', "0+0.06x30"),
    ], "20m", "GotelLockContention", [_exp("lock_contention", "warning", job="a", code_function_name="main.contend")]),
    ("goroutines: one more each minute is a leak; up and down is not; the runtime's detector is critical", [
        ('go_goroutine_count{job="leaky"}', "100+1x100"),
        ('go_goroutine_count{job="busy"}', "100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 "
                                            "200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 "
                                            "200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 "
                                            "200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 "
                                            "200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 200 100 "
                                            "200 100 200 100 200 100 200 100 200"),
        ('gotel_goroutine_leaked{job="detected"}', "0x90 7x10"),
    ], "100m", "GotelGoroutineLeak", [
        _exp("goroutine_leak", "warning", job="leaky"),
        _exp("goroutine_leak", "critical", job="detected")]),
    ("deadline: 20% of Add's calls end after the caller's deadline", [
        (f'rpc_server_call_duration_seconds_count{{{G},rpc_response_status_code="OK",server_port="1"}}', "0+48x30"),
        (f'rpc_server_call_duration_seconds_count{{{G},rpc_response_status_code="DEADLINE_EXCEEDED",server_port="1"}}',
         "0+12x30"),
        (f"gotel_rpc_server_deadline_exceeded_total{{{G}}}", "0+12x30"),
    ], "20m", "GotelDeadlineMissed", [_exp("deadline", "warning", **GL)]),
    ("gRPC errors: half the calls UNAVAILABLE, by code; calls without a code are not errors", [
        (f'rpc_server_call_duration_seconds_count{{{G},rpc_response_status_code="OK",server_port="1"}}', "0+57x30"),
        (f'rpc_server_call_duration_seconds_count{{{G},rpc_response_status_code="UNAVAILABLE",server_port="1"}}', "0+60x30"),
        (f'rpc_server_call_duration_seconds_count{{{G},rpc_response_status_code="NOT_FOUND",server_port="1"}}', "0+3x30"),
        ('rpc_server_call_duration_seconds_count{job="stripped",rpc_system="grpc"}', "0+60x30"),
    ], "20m", "GotelGRPCErrors", [
        _exp("grpc_errors", "warning", **GL, rpc_response_status_code="UNAVAILABLE"),
        _exp("grpc_errors", "critical", **GL, rpc_response_status_code="UNAVAILABLE")]),
    ("too few calls are not judged", [
        (f'rpc_server_call_duration_seconds_count{{{G},rpc_response_status_code="INTERNAL",server_port="1"}}', "0+1x30"),
    ], "20m", "GotelGRPCErrors", []),
    ("sockets: one more each minute", [
        (f'process_unix_file_descriptor_count{{{P},gotel_fd_kind="socket"}}', "10+1x100"),
        (f'process_unix_file_descriptor_count{{{P},gotel_fd_kind="file"}}', "5x100"),
    ], "100m", "GotelFDLeak", [_exp("fd_leak", "warning", **PL, gotel_fd_kind="socket")]),
    ("retransmits to one peer, over both of its connections' ports", [
        ('process_network_tcp_retransmits_total{job="a",network_peer_address="10.0.0.9",network_peer_port="443"}', "0+60x30"),
        ('process_network_tcp_retransmits_total{job="a",network_peer_address="10.0.0.9",network_peer_port="8443"}', "0+60x30"),
        ('process_network_tcp_retransmits_total{job="a",network_peer_address="10.0.0.7",network_peer_port="443"}', "0+6x30"),
    ], "20m", "GotelTCPRetransmits", [_exp("tcp_retransmits", "warning", job="a", network_peer_address="10.0.0.9")]),
]


def test_alert_logic_with_promtool(tmp_path: Path) -> None:
    """Annotations are left out of the copy promtool tests (it compares them verbatim after templating);
    the integration test reads rendered annotations from a live Prometheus."""
    doc = yaml.safe_load(COMMITTED.read_text())
    for r in doc["groups"][0]["rules"]:
        r.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc))
    tests = [{"interval": "1m", "name": name,
              "input_series": [{"series": s, "values": v} for s, v in series],
              "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": exp}]}
             for name, series, at, alert, exp in CASES]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                        "tests": tests}))
    r = subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {a.name for a in promrules.alerts()} == {c[3] for c in CASES}


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """config/examples/alerts-and-dashboards.yaml, the config docs/alerts-and-dashboards.md points to."""
    assert main(["validate", "-c", str(REPO / "config" / "examples" / "alerts-and-dashboards.yaml")]) == 0
    assert "valid (6 receivers" in capsys.readouterr().out
