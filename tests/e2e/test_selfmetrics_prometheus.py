"""gotel's own metrics on the telemetry endpoint, scraped by a real Prometheus: every series once.

Each receiver process has internal exporters of the same ids (otlp/sink, otlp/telemetry); merged
into the pipeline's endpoint they used to appear once per receiver process with different values,
and Prometheus silently kept one of them (counting the rest as duplicate samples).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.agent import Agent
from tests.helpers.prometheus_server import Prometheus

pytestmark = pytest.mark.slow

CONFIG = """
receivers:
  synthetic/a: {spans_per_second: 50, metrics_per_second: 20, logs_per_second: 5, profiles_per_second: 0}
  synthetic/b: {spans_per_second: 50, metrics_per_second: 20, logs_per_second: 5, profiles_per_second: 0}
exporters:
  debug: {}
service:
  telemetry: {metrics: {address: "@TELEMETRY@"}}
  pipelines:
    traces: {receivers: [synthetic/a, synthetic/b], exporters: [debug]}
    metrics: {receivers: [synthetic/a, synthetic/b], exporters: [debug]}
    logs: {receivers: [synthetic/a, synthetic/b], exporters: [debug]}
"""


def _series(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [(s.name, tuple(sorted(s.labels.items())))
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("gotel_")]


def test_prometheus_scrape_of_self_metrics_has_no_duplicate_series(tmp_path: Path) -> None:
    agent = Agent(CONFIG, tmp_path).start()
    prom: Prometheus | None = None
    # synthetic series stop changing after start-up, so each scrape has the same series
    try:
        agent.wait_ready(60)
        # both receiver processes have shipped their registries (their exporters' counters) at least once
        end = time.monotonic() + 60
        while agent.metric("gotel_exporter_sent_items_total", signal="metrics") == 0 or len(
                {lab for n, labs in _series(agent.get("/metrics")[1]) for lab in labs if lab[0] == "component"
                 and lab[1].startswith("synthetic/")}) < 2:
            assert time.monotonic() < end, agent.output()[-3000:]
            time.sleep(0.5)
        time.sleep(6)  # a second round of telemetry from each receiver process
        code, text = agent.get("/metrics")
        assert code == 200
        series = _series(text)
        dups = [k for k, n in Counter(series).items() if n > 1]
        assert not dups, f"{len(dups)} duplicated series, e.g. {dups[:3]}"

        prom = Prometheus([f"127.0.0.1:{agent.port}"]).start()
        up = prom.wait_query('up{job="gotel"}', lambda r: bool(r) and r[0]["value"][1] == "1", 60)
        assert up
        # Prometheus's own account: the samples of the last scrape (duplicates included) against the
        # series it stored from them (a duplicate is refused as "duplicate sample for timestamp")
        end = time.monotonic() + 30
        while True:
            scraped = prom.query('scrape_samples_scraped{job="gotel"}')
            stored = prom.query('count({job="gotel", __name__!~"up|scrape_.+"})')
            if scraped and stored and scraped[0]["value"][1] == stored[0]["value"][1]:
                break
            assert time.monotonic() < end, f"scraped {scraped}, stored {stored}"
            time.sleep(1)
        sent = prom.query('gotel_exporter_sent_items_total{component="otlp/telemetry"}')
        assert len(sent) >= 2, sent  # one series per receiver process, each kept
    finally:
        if prom is not None:
            prom.stop()
        agent.stop()
