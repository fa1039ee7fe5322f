"""Debian's real Prometheus, started on loopback with a temporary config and storage, stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, scrape_targets: list[str] | None = None, scrape_interval: str = "1s",
                 rule_files: list[str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="gotel-prom-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = ["global:", f"  scrape_interval: {scrape_interval}", f"  evaluation_interval: {scrape_interval}"]
        if rule_files:
            cfg += ["rule_files:"] + [f'  - "{f}"' for f in rule_files]
        if scrape_targets:
            cfg += ["scrape_configs:", "  - job_name: gotel", "    honor_labels: true",
                    f"    scrape_interval: {scrape_interval}", "    static_configs:",
                    "      - targets: [" + ", ".join(f'"{t}"' for t in scrape_targets) + "]"]
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            f.write("\n".join(cfg) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(self.dir, "prometheus.log")

    def start(self, timeout: float = 30.0) -> Prometheus:
        with open(self.log, "wb") as logf:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.dir}/prometheus.yml", f"--storage.tsdb.path={self.dir}/data",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-remote-write-receiver",
                 "--enable-feature=exemplar-storage", "--log.level=warn"],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                with open(self.log) as f:
                    raise RuntimeError(f"prometheus exited: {f.read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, path: str, **params: Any) -> Any:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/query", query=expr)["result"])

    def wait_query(self, expr: str, pred: Any = bool, timeout: float = 30.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        res: list[dict[str, Any]] = []
        while time.monotonic() < end:
            res = self.query(expr)
            if pred(res):
                return res
            time.sleep(0.3)
        raise AssertionError(f"{expr}: condition not met within {timeout}s; last result {res}")

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels, rendered annotations, state and value."""
        return list(self.api("/api/v1/alerts")["alerts"])

    def targets_health(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/targets")["activeTargets"])
