"""The README stays true to the code: its config example is valid, its tables name every component and command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gotel.cli.main import COMMANDS
from gotel.component.contract import Kind
from gotel.component.registry import registry
from gotel.config.loader import load_config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_config_example_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = re.search(r"```yaml\n(.*?)```", README, re.S)
    assert example, "README has no yaml example"
    f = tmp_path / "gotel.yaml"
    f.write_text(example.group(1))
    monkeypatch.setenv("OTLP_TOKEN", "t")
    cfg = load_config(f)
    assert len(cfg.service.pipelines) == 3
    assert not cfg.warnings, cfg.warnings


@pytest.mark.parametrize("kind", [Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER])
def test_component_table_lists_every_installed_type(kind: Kind) -> None:
    rows = re.findall(rf"^\| {kind.value} \| `([a-z0-9_]+)`", README, re.M)
    assert sorted(rows) == registry().types(kind)


def test_command_table_lists_every_command() -> None:
    rows = re.findall(r"^\| `gotel ([a-z]+)", README, re.M)
    assert sorted(set(rows)) == sorted(COMMANDS)
