"""Port clashes: inside a config at `gotel validate`, and against other processes when the agent starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.config.ports import busy_ports

GOTEL = str(Path(sys.executable).with_name("gotel"))

THREE_ON_ONE_PORT = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:8888"}
      http: {endpoint: "0.0.0.0:8888"}
exporters:
  prometheus: {endpoint: "localhost:8888"}
  prometheus/other: {endpoint: "127.0.0.1:9999"}
service:
  pipelines:
    metrics: {receivers: [otlp], exporters: [prometheus, prometheus/other]}
"""


def test_validate_names_both_keys_of_each_clash() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config("config.yaml", text=textwrap.dedent(THREE_ON_ONE_PORT), env={})
    got = [str(i) for i in ei.value.issues]
    tail = "is also service::telemetry::metrics::address (127.0.0.1:8888): two listeners cannot share a port; give one of them another port"
    assert got == [
        f"config.yaml:5 receivers::otlp::protocols::grpc::endpoint: 127.0.0.1:8888 {tail}",
        f"config.yaml:6 receivers::otlp::protocols::http::endpoint: 0.0.0.0:8888 {tail}",
        f"config.yaml:8 exporters::prometheus::endpoint: localhost:8888 {tail}",
    ]


def test_different_hosts_or_unused_components_do_not_clash() -> None:
    text = """
    receivers:
      otlp: {protocols: {grpc: {endpoint: "127.0.0.2:4317"}}}
    exporters:
      prometheus: {endpoint: "127.0.0.1:4317"}
      prometheus/unused: {endpoint: "127.0.0.1:4317"}
    service:
      telemetry: {metrics: {address: "127.0.0.1:0"}}
      pipelines:
        metrics: {receivers: [otlp], exporters: [prometheus]}
    """
    load_config("config.yaml", text=textwrap.dedent(text), env={})


@pytest.fixture
def held_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _config(key: str, port: int) -> str:
    if key == "prometheus":
        return f"""
receivers: {{synthetic: {{}}}}
exporters: {{prometheus: {{endpoint: "127.0.0.1:{port}"}}}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:0"}}}}
  pipelines: {{metrics: {{receivers: [synthetic], exporters: [prometheus]}}}}
"""
    if key == "telemetry":
        return f"""
receivers: {{synthetic: {{}}}}
exporters: {{debug: {{}}}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{port}"}}}}
  pipelines: {{traces: {{receivers: [synthetic], exporters: [debug]}}}}
"""
    return f"""
receivers: {{otlp: {{protocols: {{{key}: {{endpoint: "127.0.0.1:{port}"}}}}}}}}
exporters: {{debug: {{}}}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:0"}}}}
  pipelines: {{traces: {{receivers: [otlp], exporters: [debug]}}}}
"""


@pytest.mark.parametrize(("key", "path"), [
    ("grpc", "receivers::otlp::protocols::grpc::endpoint"),
    ("http", "receivers::otlp::protocols::http::endpoint"),
    ("prometheus", "exporters::prometheus::endpoint"),
    ("telemetry", "service::telemetry::metrics::address"),
])
def test_port_held_by_another_process_is_one_line_at_start(tmp_path: Path, held_port: int, key: str, path: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(_config(key, held_port))
    assert busy_ports(load_config(str(cfg))) == [
        f"{path}: 127.0.0.1:{held_port} is already in use by another process (pid {os.getpid()}, "
        f"{Path(f'/proc/{os.getpid()}/comm').read_text().strip()})"]
    r = subprocess.run([GOTEL, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if " ERROR " in x]
    assert len(errors) == 1, r.stderr
    assert errors[0].endswith(f"gotel failed to start: {path}: 127.0.0.1:{held_port} is already in use by another "
                              f"process (pid {os.getpid()}, {Path(f'/proc/{os.getpid()}/comm').read_text().strip()})")
    assert "Traceback" not in r.stderr and "add_port.cc" not in r.stderr  # nor grpc core's own log line
    assert len(r.stderr.splitlines()) <= 3, r.stderr
