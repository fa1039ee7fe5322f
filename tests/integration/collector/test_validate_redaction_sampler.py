"""The redaction and probabilistic_sampler READMEs' examples are accepted by `gotel validate` and by the
real collector's `otelcol validate` (v0.161.0); the same files with one mistake are refused by both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import otelcol
from tests.integration.collector.test_validate import gotel_validate
from tests.unit.core.test_redaction import README_1, README_2, README_3, README_4

pytestmark = pytest.mark.slow

SAMPLER_EXAMPLES = [
    {"sampling_percentage": 15},
    {"sampling_percentage": 15, "attribute_source": "record", "from_attribute": "logID"},
    {"sampling_percentage": 15, "sampling_priority": "priority"},
]


def config(processor: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
        "processors": {processor: body},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"logs": {"receivers": ["otlp"], "processors": [processor],
                                           "exporters": ["debug"]}}},
    }


def both(tmp_path: Path, cfg: dict[str, Any]) -> tuple[Any, Any]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return gotel_validate(path), otelcol.validate(path, feature_gates=())


@pytest.mark.parametrize("processor, body", [
    *[("redaction", yaml.safe_load(x)) for x in (README_1, README_2, README_3, README_4)],
    *[("probabilistic_sampler", x) for x in SAMPLER_EXAMPLES],
], ids=["redaction-1", "redaction-2", "redaction-3", "redaction-4", "sampler-1", "sampler-2", "sampler-3"])
def test_readme_examples_accepted_by_both(tmp_path: Path, processor: str, body: dict[str, Any]) -> None:
    g, c = both(tmp_path, config(processor, body))
    assert g.returncode == 0, g.stdout + g.stderr
    assert c.returncode == 0, c.stdout + c.stderr


@pytest.mark.parametrize("processor, body, gotel_says, collector_says", [
    ("redaction", {"blocked_values": ["a("]}, "bad regex", "error compiling regex"),
    ("redaction", {"hash_function": "sha256"}, "hash_function", "unknown HashFunction"),
    ("redaction", {"hash_function": "hmac-sha256", "hmac_key": "short"}, "at least 32 bytes", "at least 32 bytes"),
    ("redaction", {"allowed_key": ["a"]}, "allowed_key", "allowed_key"),
    ("probabilistic_sampler", {"sampling_percentage": -1}, "negative", "negative"),
    ("probabilistic_sampler", {"sampling_percentage": 5, "mode": "fast"}, "mode", "unsupported sampler mode"),
    ("probabilistic_sampler", {"sampling_percentage": 5, "sampling_precision": 15}, "sampling_precision", "precision"),
    ("probabilistic_sampler", {"sampling_percentage": 5, "attribute_source": "body"}, "attribute_source",
     "invalid attribute source"),
])
def test_one_mistake_refused_by_both(tmp_path: Path, processor: str, body: dict[str, Any], gotel_says: str,
                                     collector_says: str) -> None:
    g, c = both(tmp_path, config(processor, body))
    assert g.returncode == 1 and gotel_says in g.stdout + g.stderr, g.stdout + g.stderr
    assert c.returncode != 0 and collector_says in c.stdout + c.stderr, c.stdout + c.stderr
