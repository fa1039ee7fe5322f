"""A config file made only of components both gotel and the collector have is accepted by both:
`gotel validate -c FILE` and the real collector's `otelcol validate --config FILE` (v0.161.0). The
same file with one mistake is refused by both, so the acceptance is not a validator that says yes to
anything.

Keys are written so that both read them the same: durations with a unit (a bare number is seconds to
gotel but nanoseconds to the collector), and `sending_queue.sizer` explicit (gotel's default sizer is
bytes, the collector's requests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import otelcol

pytestmark = pytest.mark.slow

SHARED = Path(__file__).with_name("shared-config.yaml")
GOTEL = str(Path(sys.executable).with_name("gotel"))


RELAY = Path(__file__).resolve().parents[3] / "config" / "examples" / "otlp-relay.yaml"


def gotel_validate(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GOTEL, "validate", "-c", str(path)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env)


def test_shared_config_is_accepted_by_both() -> None:
    g = gotel_validate(SHARED)
    assert g.returncode == 0, g.stdout + g.stderr
    assert "4 pipelines" in g.stdout
    c = otelcol.validate(SHARED)
    assert c.returncode == 0, c.stdout + c.stderr
    # profiles pipelines exist in the collector only behind its feature gate
    c = otelcol.validate(SHARED, feature_gates=())
    assert c.returncode != 0 and otelcol.PROFILES_GATE in c.stdout + c.stderr


def test_relay_example_is_accepted_by_both() -> None:
    """gotel's own OTLP relay example (config/examples/otlp-relay.yaml) is a valid collector config too."""
    env = dict(os.environ, OTLP_TOKEN="t0ken")  # gotel refuses an unset variable without a default
    g = gotel_validate(RELAY, env)
    assert g.returncode == 0, g.stdout + g.stderr
    c = subprocess.run([str(otelcol.binary()), "validate", "--config", str(RELAY)], capture_output=True,
                       text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert c.returncode == 0, c.stdout + c.stderr


@pytest.mark.parametrize("mistake, where", [
    (lambda c: c["processors"]["batch"].update(send_batch_sise=10), "send_batch_sise"),
    (lambda c: c["service"]["pipelines"]["traces"]["exporters"].append("otlp_grpc/missing"), "otlp_grpc/missing"),
    (lambda c: c["exporters"]["otlphttp"].update(encoding="xml"), "encoding"),
], ids=["unknown-key", "unconfigured-exporter", "bad-value"])
def test_one_mistake_is_refused_by_both(tmp_path: Path, mistake: object, where: str) -> None:
    cfg = yaml.safe_load(SHARED.read_text())
    mistake(cfg)  # type: ignore[operator]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    g = gotel_validate(bad)
    assert g.returncode == 1 and where in g.stdout + g.stderr, g.stdout + g.stderr
    c = otelcol.validate(bad)
    assert c.returncode != 0 and where in c.stdout + c.stderr, c.stdout + c.stderr
