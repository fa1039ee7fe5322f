"""Config errors name file, line and `::` path; everything wrong is reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gotel.cli.main import main
from gotel.component.contract import ComponentConfig, ComponentID, ExporterFactory, Kind, ReceiverFactory
from gotel.component.registry import Registry, registry
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.pdata.batch import Signal


def errors(text: str, env: dict[str, str] | None = None, reg: Registry | None = None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config("config.yaml", text=textwrap.dedent(text), env=env or {}, reg=reg)
    return [str(i) for i in ei.value.issues]


GOOD = """\
receivers:
  synthetic:
    spans_per_second: 10
processors:
  batch:
exporters:
  debug:
  file:
    path: /tmp/x.jsonl
service:
  pipelines:
    traces:
      receivers: [synthetic]
      processors: [batch]
      exporters: [debug, file]
"""


def test_valid_config_loads_with_defaults_and_ids() -> None:
    cfg = load_config("config.yaml", text=GOOD, env={})
    assert cfg.summary() == "1 receiver, 1 processor, 2 exporters, 1 pipeline"
    p = cfg.service.pipelines["traces"]
    assert p.signal == Signal.TRACES
    assert p.exporters == [ComponentID("debug"), ComponentID("file")]
    assert cfg.processors[ComponentID("batch")].config.send_batch_size == 8192
    assert cfg.receivers[ComponentID("synthetic")].config.spans_per_second == 10
    assert cfg.service.telemetry.metrics.address == "127.0.0.1:8888"
    assert cfg.warnings == []


def test_yaml_syntax_error_has_line() -> None:
    errs = errors("receivers:\n  synthetic: {a: 1\nexporters:\n  debug:\n")
    assert len(errs) == 1
    assert errs[0].startswith("config.yaml:3: YAML syntax error:")


def test_unknown_type_lists_valid_ones() -> None:
    errs = errors(GOOD.replace("  debug:\n", "  debgu:\n").replace("[debug, file]", "[debgu, file]"))
    valid = ", ".join(registry().types(Kind.EXPORTER))
    assert errs == [f'config.yaml:7 exporters::debgu: unknown exporter type "debgu", did you mean "debug"? (valid: {valid})']


def test_typo_in_key_is_named_at_its_line() -> None:
    errs = errors(GOOD.replace("spans_per_second", "spans_per_secnd"))
    assert errs == ['config.yaml:3 receivers::synthetic::spans_per_secnd: unknown key "spans_per_secnd" (did you mean "spans_per_second"?)']


def test_nested_typo_and_bad_value() -> None:
    text = GOOD.replace("    path: /tmp/x.jsonl\n", "    path: /tmp/x.jsonl\n    rotation:\n      max_megabyte: 5\n      max_backups: many\n")
    errs = errors(text)
    assert 'config.yaml:11 exporters::file::rotation::max_megabyte: unknown key "max_megabyte" (did you mean "max_megabytes"?)' in errs
    assert any(e.startswith("config.yaml:12 exporters::file::rotation::max_backups: Input should be a valid integer") for e in errs)


def test_pipeline_names_missing_component() -> None:
    errs = errors(GOOD.replace("[debug, file]", "[debug, jaegr]"))
    assert errs == ['config.yaml:15 service::pipelines::traces::exporters: exporter "jaegr" is not configured (configured: debug, file)']


def test_missing_required_key() -> None:
    errs = errors(GOOD.replace("    path: /tmp/x.jsonl\n", ""))
    assert errs == ['config.yaml:8 exporters::file: missing required key "path"']


def test_env_references() -> None:
    text = GOOD.replace("spans_per_second: 10", "spans_per_second: ${env:RATE}").replace(
        "/tmp/x.jsonl", "${env:DIR:-/var/tmp}/$${literal}-${USER_X}.jsonl"
    )
    cfg = load_config("config.yaml", text=text, env={"RATE": "25", "USER_X": "me"})
    assert cfg.receivers[ComponentID("synthetic")].config.spans_per_second == 25
    assert cfg.exporters[ComponentID("file")].config.path == "/var/tmp/${literal}-me.jsonl"


def test_bad_env_references_are_reported_at_their_line() -> None:
    text = GOOD.replace("spans_per_second: 10", "spans_per_second: ${env:RATE}").replace("/tmp/x.jsonl", "${env:DIR:/x}")
    errs = errors(text)
    assert errs == [
        "config.yaml:3 receivers::synthetic::spans_per_second: environment variable RATE is not set (use ${env:RATE:-default} for a default)",
        "config.yaml:9 exporters::file::path: malformed reference ${env:DIR:/x}: expected ${NAME}, ${env:NAME} or ${env:NAME:-default}",
    ]


def test_all_errors_at_once_in_line_order() -> None:
    text = GOOD.replace("spans_per_second", "spans_per_secnd").replace("[debug, file]", "[debug, jaegr]").replace(
        "  batch:\n", "  batch:\n    timeout: soon\n"
    )
    errs = errors(text)
    assert [e.split(" ", 1)[0] for e in errs] == ["config.yaml:3", "config.yaml:6", "config.yaml:16"]
    assert "processors::batch::timeout: invalid duration 'soon'" in errs[1]


def test_pipeline_without_receivers_or_exporters_and_bad_pipeline_id() -> None:
    text = GOOD + "    logs:\n      receivers: [synthetic]\n    trace/x:\n      receivers: [synthetic]\n      exporters: [debug]\n"
    errs = errors(text)
    assert "config.yaml:16 service::pipelines::logs: pipeline logs has no exporters" in errs
    assert 'config.yaml:18 service::pipelines::trace/x: invalid pipeline id "trace/x": expected traces|metrics|logs|profiles[/name]' in errs


class _Cfg(ComponentConfig):
    pass


def _limited_registry() -> Registry:
    reg = Registry()
    for f in registry().factories[Kind.EXPORTER].values():
        reg.add(f)
    for f in registry().factories[Kind.PROCESSOR].values():
        reg.add(f)
    reg.add(ReceiverFactory(type="tracesonly", config=_Cfg, signals=frozenset({Signal.TRACES}), create=lambda *a: None))  # type: ignore[arg-type,return-value]
    reg.add(ExporterFactory(type="metricsonly", config=_Cfg, signals=frozenset({Signal.METRICS}),
                            aliases=("metrics_only",), create=lambda *a: None))  # type: ignore[arg-type,return-value]
    return reg


def test_signal_not_supported_and_alias_resolution() -> None:
    text = """\
    receivers:
      tracesonly:
    exporters:
      metrics_only:
      debug:
    service:
      pipelines:
        traces:
          receivers: [tracesonly]
          exporters: [metrics_only]
        logs:
          receivers: [tracesonly]
          exporters: [debug]
    """
    errs = errors(text, reg=_limited_registry())
    assert errs == [
        'config.yaml:10 service::pipelines::traces::exporters: exporter "metrics_only" does not support traces (type metricsonly supports: metrics)',
        'config.yaml:12 service::pipelines::logs::receivers: receiver "tracesonly" does not support logs (type tracesonly supports: traces)',
    ]


def test_unused_component_is_a_warning() -> None:
    cfg = load_config("config.yaml", text=GOOD.replace("  debug:\n", "  debug:\n  debug/2:\n"), env={})
    assert [str(w) for w in cfg.warnings] == [
        "config.yaml:8 exporters::debug/2: warning: exporter debug/2 is configured but not used by any pipeline; it will not run"
    ]


def test_telemetry_pipeline_may_have_no_receivers() -> None:
    text = """\
    exporters:
      debug:
    service:
      telemetry:
        metrics:
          address: 127.0.0.1:0
          pipelines: [metrics/self]
          interval: 2s
      pipelines:
        metrics/self:
          exporters: [debug]
    """
    cfg = load_config("config.yaml", text=textwrap.dedent(text), env={})
    assert cfg.service.telemetry.metrics.interval == 2.0
    errs = errors(text.replace("[metrics/self]\n", "[traces]\n"))
    assert any("service::telemetry::metrics::pipelines: pipeline \"traces\" is not configured" in e for e in errs)


def test_unknown_top_level_and_service_keys() -> None:
    errs = errors(GOOD.replace("service:\n", "exporter:\n  x: 1\nservice:\n  pipeline: {}\n"))
    assert 'config.yaml:10 exporter: unknown key "exporter" (did you mean "exporters"?)' in errs
    assert 'config.yaml:13 service::pipeline: unknown key "pipeline" (did you mean "pipelines"?)' in errs


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "config.yaml"
    good.write_text(GOOD)
    assert main(["validate", "-c", str(good)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "config.yaml: valid (1 receiver, 1 processor, 2 exporters, 1 pipeline)"
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("[debug, file]", "[debug, jaegr]").replace("spans_per_second", "spans_per_secnd"))
    assert main(["validate", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3 receivers::synthetic::spans_per_secnd: unknown key" in err
    assert f'{bad}:15 service::pipelines::traces::exporters: exporter "jaegr" is not configured' in err
    assert f"{bad}: 2 errors" in err


def test_embedded_default_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert "default.yaml (embedded): valid" in capsys.readouterr().out


def test_own_process_names_configured_receivers() -> None:
    text = GOOD.replace("service:\n", "service:\n  supervisor:\n    own_process: [synthetic, pprof]\n")
    errs = errors(text)
    assert errs == ["config.yaml:12 service::supervisor::own_process::1: receiver pprof is not configured (configured: synthetic)"]
    ok = load_config("config.yaml", text=text.replace(", pprof]", "]"), env={})
    assert ok.service.supervisor.own_process == ["synthetic"]


LAZY = r"""
import json, sys
from gotel.config.loader import load_config
text = sys.argv[1]
try:
    cfg = load_config("config.yaml", text=text, env={})
    out = {"ok": sorted(str(e.factory.type) for e in cfg.exporters.values())}
except Exception as e:
    out = {"error": str(e)}
out["loki"] = "gotel.exporters.loki" in sys.modules
print(json.dumps(out))
"""


def _lazy(text: str, env: dict[str, str] | None = None) -> dict[str, object]:
    import json
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", LAZY, text], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stderr
    out: dict[str, object] = json.loads(p.stdout)
    return out


def test_a_config_imports_only_the_components_it_names() -> None:
    """Unconfigured plugins stay unimported (their pages would be memory of every agent process);
    an alias or an unknown type still resolves through every installed plugin."""
    assert _lazy(GOOD) == {"ok": ["debug", "file"], "loki": False}
    assert _lazy(GOOD, {"GOTEL_ALL_PLUGINS": "1"}) == {"ok": ["debug", "file"], "loki": True}
    alias = _lazy(GOOD.replace("  debug:\n", "  logging:\n").replace("[debug, file]", "[logging, file]"))
    assert alias["ok"] == ["debug", "file"]
    unknown = _lazy(GOOD.replace("  debug:\n", "  debgu:\n").replace("[debug, file]", "[debgu, file]"))
    assert 'did you mean "debug"?' in str(unknown["error"]) and "loki" in str(unknown["error"])
