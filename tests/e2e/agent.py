"""Runs the real `gotel` command in a subprocess and reads its telemetry endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gotel.pdata.batch import attr_dict
from tests.helpers.otlp_sink import OTLPGrpcSink

GOTEL = str(Path(sys.executable).with_name("gotel"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    def __init__(self, config: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(config.replace("@TELEMETRY@", f"127.0.0.1:{self.port}"))
        self.log_path = workdir / "gotel.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([GOTEL, "run", "-c", str(self.config_path)], cwd=self.workdir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> dict[str, Any] | None:
        code, body = self.get("/readyz")
        return json.loads(body) if code in (200, 503) and body else None

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.ready()
            if r and r["ready"]:
                return r
            assert self.proc is not None and self.proc.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"gotel not ready within {timeout}s:\n{self.output()}")

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if hasattr(self, "log"):
            self.log.close()


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def spans_of(sink: OTLPGrpcSink) -> list[tuple[dict[str, Any], Any]]:
    """(resource attributes, span) of every span the sink received."""
    return [(attr_dict(rs.resource.attributes), s) for r in list(sink.received.traces) for rs in r.resource_spans
            for ss in rs.scope_spans for s in ss.spans]
