"""Connector configs judged by gotel and by the real collector (v0.161.0, `otelcol validate`; it has spanmetrics and forward, not servicegraph): a
correct one is accepted by both; each broken rule (used on one side only, a signal pair the connector
lacks, a cycle, an unknown key) is refused by both, and gotel names the rule and the place."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import otelcol

pytestmark = pytest.mark.slow

GOTEL = str(Path(sys.executable).with_name("gotel"))

GOOD: dict[str, Any] = {
    "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
    "exporters": {"debug": {}},
    "connectors": {"forward": {}, "spanmetrics": {"metrics_flush_interval": "1s",
                                                   "dimensions": [{"name": "http.method", "default": "GET"}]}},
    "service": {"pipelines": {
        "traces": {"receivers": ["otlp"], "exporters": ["forward", "spanmetrics"]},
        "traces/2": {"receivers": ["forward"], "exporters": ["debug"]},
        "metrics": {"receivers": ["spanmetrics"], "exporters": ["debug"]},
    }},
}


def both(tmp_path: Path, cfg: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    g = subprocess.run([GOTEL, "validate", "-c", str(f)], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    return g, otelcol.validate(f, feature_gates=())


def test_connectors_config_is_accepted_by_both(tmp_path: Path) -> None:
    g, c = both(tmp_path, GOOD)
    assert g.returncode == 0, g.stdout + g.stderr
    assert "2 connectors" in g.stdout
    assert c.returncode == 0, c.stdout + c.stderr


def _pipes(c: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = c["service"]["pipelines"]
    return p


MISTAKES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "only_exported_to": (lambda c: _pipes(c).pop("traces/2"), "no pipeline receives from it"),
    "only_received_from": (lambda c: _pipes(c)["traces"]["exporters"].remove("forward"),
                           "no pipeline exports to it"),
    "pair_not_supported": (lambda c: _pipes(c)["metrics"]["receivers"].append("forward"),
                           "is of a signal it turns into metrics"),
    "cycle": (lambda c: _pipes(c)["traces/2"]["exporters"].append("forward/back") or
              c["connectors"].update({"forward/back": {}}) or _pipes(c)["traces"]["receivers"].append("forward/back"),
              "cycle in the pipeline graph"),
    "unknown_key": (lambda c: c["connectors"]["spanmetrics"].update(metrics_flush_intervall="1s"),
                    'unknown key "metrics_flush_intervall"'),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_each_broken_rule_is_refused_by_both(name: str, tmp_path: Path) -> None:
    cfg = copy.deepcopy(GOOD)
    change, words = MISTAKES[name]
    change(cfg)
    g, c = both(tmp_path, cfg)
    assert g.returncode != 0 and words in g.stdout + g.stderr, g.stdout + g.stderr
    assert len(re.findall(r"c\.yaml:\d+ ", g.stdout + g.stderr)) == 1, g.stdout + g.stderr  # one error, no follow-on
    assert c.returncode != 0, c.stdout + c.stderr
