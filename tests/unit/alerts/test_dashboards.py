"""The Grafana dashboards in config/grafana: current schema, the datasource a variable, panels the issue asks
for, and only metric names gotel exports (tests/integration/alerts runs every query against a real scrape)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gotel.diagnose import promrules

GRAFANA = Path(__file__).resolve().parents[3] / "config" / "grafana"
REQUIRED = {
    "gotel-grpc.json": {"Requests per second (server)", "Error ratio by code (server)", "Duration p50 / p99 (server)",
                        "Drop Rate", "Deadline Miss Ratio (server)", "Stream Age p99"},
    "gotel-go-runtime.json": {"GC cycles per second", "GC stop-the-world pause p99", "Other stop-the-world pauses p99",
                              "Run-queue latency p99", "Goroutines", "CPU throttling"},
    "gotel-findings.json": {"Findings by rule and severity", "Firing gotel alerts"},
}


def _load() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))}


def test_the_three_dashboards_and_their_panels() -> None:
    dashes = _load()
    assert set(dashes) == set(REQUIRED)
    assert len({d["uid"] for d in dashes.values()}) == len(dashes)
    for name, d in dashes.items():
        titles = {p["title"] for p in d["panels"]}
        assert REQUIRED[name] <= titles, (name, REQUIRED[name] - titles)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_schema_and_datasource_variable(name: str) -> None:
    d = _load()[name]
    assert d["schemaVersion"] >= 39 and "id" not in d  # importable anywhere: Grafana assigns the id
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in d["panels"]]
    assert len(set(ids)) == len(ids)
    for p in d["panels"]:
        assert p["datasource"] == ds and p["description"] and p["targets"], p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p["targets"]:
            assert t["datasource"] == ds and t["expr"], p["title"]
            used = {m for m in re.findall(r"\$\{?(\w+)", t["expr"]) if not m.startswith("__")}
            assert used <= set(variables), (p["title"], used)


def test_queries_name_only_exported_metrics() -> None:
    for name, d in _load().items():
        for p in d["panels"]:
            for t in p["targets"]:
                expr = re.sub(r'"[^"]*"', '""', t["expr"])
                for tok in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr):
                    base = next((tok.removesuffix(s) for s in ("_bucket", "_count", "_sum") if tok.endswith(s)
                                 and tok.removesuffix(s) in promrules.BY_PROM), tok)
                    assert base in promrules.BY_PROM or tok == "ALERTS", f"{name} {p['title']!r}: {tok}"
                if promrules.m("gotel.findings") in expr:
                    labels = set(re.findall(r"gotel_finding_\w+", t["expr"]))
                    assert labels <= {promrules.FINDING_RULE_LABEL, promrules.FINDING_SEVERITY_LABEL}, labels
