"""go_metrics against a real Go program with client_golang's Go collector: Prometheus itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotel.receivers.go_metrics import GoMetricsReceiver, factory
from tests.helpers.pprofkit import MemSink, context, metric_points

pytestmark = pytest.mark.slow


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert os.path.exists(binary), "Debian's prometheus is installed by scripts/bootstrap.sh"
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 60s}\nscrape_configs: []\n")
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={tmp_path / 'data'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_client_golang_metrics_mapped_to_semconv(prometheus: str) -> None:
    cfg = factory.config.model_validate({"targets": [{"endpoint": prometheus, "service_name": "prometheus"}]})
    sink = MemSink()
    r = GoMetricsReceiver(cfg, {"metrics": sink}, context("go_metrics"))  # type: ignore[dict-item]
    try:
        from urllib.parse import urlsplit

        from gotel.receiverhelper.targets import Target

        u = urlsplit(prometheus)
        n = await r.scrape(Target(url=f"http://{u.netloc}", attributes={"service.name": "prometheus"}), "/metrics",
                           "prometheus")
        assert n > 5
        text = urllib.request.urlopen(prometheus).read().decode()
        threads = next(float(x.split()[1]) for x in text.splitlines() if x.startswith("go_threads "))
        (res, dp), = metric_points(sink, "process.thread.count")
        assert abs(dp.as_int - threads) <= 4 and res["service.name"] == "prometheus"
        if "go_sched_gomaxprocs_threads" in text:  # client_golang >= 1.15 only
            assert metric_points(sink, "go.processor.limit")
        (_r, g), = metric_points(sink, "go.goroutine.count")
        assert g.as_int > 5
        used = metric_points(sink, "go.memory.used")
        assert {dp.attributes[0].value.string_value for _r, dp in used} == {"stack", "other"}
        assert all(dp.as_int > 0 for _r, dp in used)
        (_r, alloc), = metric_points(sink, "go.memory.allocated")
        assert alloc.as_int > 1 << 20 and alloc.start_time_unix_nano > 0
        (_r, goal), = metric_points(sink, "go.memory.gc.goal")
        assert goal.as_int > 0
        (_r, cycles), = metric_points(sink, "go.gc.cycles")
        assert cycles.as_int >= 0 and metric_points(sink, "go.gc.pause.duration")
    finally:
        await r.shutdown()


async def test_not_go_metrics_is_reported(prometheus: str) -> None:
    cfg = factory.config.model_validate({"targets": [{"endpoint": prometheus.replace("/metrics", "/-/healthy")}]})
    ctx = context("go_metrics")
    r = GoMetricsReceiver(cfg, {"metrics": MemSink()}, ctx)  # type: ignore[dict-item]
    try:
        from urllib.parse import urlsplit

        from gotel.receiverhelper.targets import Target

        t = Target(url=f"http://{urlsplit(prometheus).netloc}")
        assert await r.scrape(t, "/-/healthy", "prometheus") == 0
        v = ctx.telemetry.t.registry.get_sample_value("gotel_go_metrics_scrape_failures_total", {
            "component": "go_metrics", "kind": "receiver", "target": t.describe(), "class": "bad_format"})
        assert v == 1
    finally:
        await r.shutdown()
