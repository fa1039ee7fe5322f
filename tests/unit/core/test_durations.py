"""Durations the collector's way in every config key: the grammar, its errors, and a walk over every model."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from gotel.cli.main import main
from gotel.component.contract import ComponentConfig, ComponentID, Kind, RenamedKey
from gotel.component.registry import registry
from gotel.config.loader import load_config
from gotel.config.model import ConfigError, SupervisorConfig, TelemetryConfig
from gotel.config.types import Duration, format_duration, is_duration_field, parse_duration

# --- the grammar: Go's time.ParseDuration, plus a bare number meaning seconds ---------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("250ms", 0.25), ("1m30s", 90.0), ("1h", 3600.0), ("500us", 0.0005),
    ("1.5s", 1.5), (".5s", 0.5), ("1.s", 1.0), ("2h45m", 9900.0), ("1h0m1s", 3601.0), ("300ns", 3e-7),
    ("2\u00b5s", 2e-6), ("2\u03bcs", 2e-6),  # both micro signs, as Go accepts
    ("1m1.5s", 61.5), ("+5s", 5.0), ("0", 0.0), ("0s", 0.0),
    # a bare number is seconds (existing files keep working); from YAML it arrives as int/float
    (10, 10.0), (0.25, 0.25), ("10", 10.0), ("1.5", 1.5),
])
def test_parses_what_the_collector_writes(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("text", "why"), [
    ("10sec", "unknown unit 'sec'"),
    ("10S", "unknown unit 'S'"),
    ("5 s", "unknown unit ' s'"),
    ("1m30", "missing unit after 30"),
    ("ms", "expected a number"),
    ("ten seconds", "expected a number"),
    ("-5s", "must not be negative"),
    (-1, "must not be negative"),
    ("", "empty"),
    ("2562048h", "too large: at most 2562047h"),
    (1e300, "too large"),
    (float("inf"), "must be finite"),
    ("nan", "expected a number"),
    (True, "got bool"),
    ([1], "got list"),
])
def test_rejects_with_one_line_naming_value_and_examples(text: Any, why: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    msg = str(e.value)
    assert why in msg and "\n" not in msg
    assert "e.g. 10s, 250ms, 1m30s" in msg or "must not be negative" in msg


@pytest.mark.parametrize(("seconds", "text"), [
    (10.0, "10s"), (0.25, "250ms"), (90.0, "1m30s"), (3600.0, "1h"), (0.0005, "500us"), (1.5, "1.5s"),
    (0.0, "0s"), (300.0, "5m"), (3601.0, "1h1s"), (1e-9, "1ns"), (0.0015, "1.5ms"), (86400.0, "24h"),
])
def test_formats_as_the_collector_writes(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [0.1234567891, 1 / 3, 123456789.5, 7e-9, 59.999999999])
def test_format_parse_round_trip_to_the_nanosecond(seconds: float) -> None:
    """Receiver processes get their config as JSON (durations as strings): nothing may be lost there."""
    assert round(parse_duration(format_duration(seconds)) * 1e9) == round(seconds * 1e9)


# --- every registered component, and the service's own settings, use the one Duration type ---------------

TIME_WORDS = {"interval", "timeout", "timeouts", "threshold", "age", "period", "wait", "delay", "backoff", "ttl",
              "expiration", "expiry", "expire", "window", "elapsed", "duration", "after", "deadline", "grace",
              "linger", "lifetime", "time", "idle", "keepalive", "retention", "cooldown", "every", "staleness"}
# a key that names another unit (the collector's rebound_needed_threshold_mib) is a size or a count, not a time
# (and health_check's exporter_failure_threshold counts failures)
NON_TIME_UNITS = {"mib", "kib", "gib", "bytes", "percent", "percentage", "count", "items", "spans", "ratio", "failure"}
# the collector's own keys that only look like a unit: log_severity_number's `min` is the lowest severity
NOT_UNITS = {("SeverityNumberMatch", "min")}
UNIT_WORDS = {"ns", "us", "ms", "s", "sec", "secs", "second", "seconds", "min", "mins", "minute", "minutes",
              "hour", "hours", "day", "days", "millis", "micros", "nanos", "msec", "usec", "nsec"}


def _models(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _models(a)]


def _unit_suffix(name: str) -> bool:
    words = name.lower().split("_")
    # a rate (spans_per_second) is not a duration; a key that is only a unit (seconds: 10) is
    return words[-1] in UNIT_WORDS and (len(words) == 1 or words[-2] != "per")


def time_field_problems(model: type[BaseModel], where: str, seen: set[type[BaseModel]] | None = None) -> list[str]:
    """Every time-like field that is not the shared Duration type, and every key with a unit in its name."""
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    out = []
    for old, r in getattr(model, "renamed_keys", {}).items():
        if r.new not in model.model_fields:
            out.append(f"{where}::{old}: renamed to {r.new!r}, which is not a key")
    for name, f in model.model_fields.items():
        nested = _models(f.annotation)
        words = set(name.lower().split("_"))
        if _unit_suffix(name) and (model.__name__, name) not in NOT_UNITS:
            better = name.rsplit("_", 1)[0] if "_" in name else "duration"
            out.append(f"{where}::{name}: the unit is in the key (write {better}: 10ms instead)")
        elif words & TIME_WORDS and not words & NON_TIME_UNITS and not nested and f.annotation is not bool and not is_duration_field(f.annotation, f.metadata):
            out.append(f"{where}::{name}: {f.annotation!r} is not gotel.config.types.Duration")
        for m in nested:
            out += time_field_problems(m, f"{where}::{name}", seen)
    return out


def _all_subclasses(cls: type) -> list[type]:
    return [c for s in cls.__subclasses__() for c in (s, *_all_subclasses(s))]


def test_every_time_like_config_key_is_a_duration() -> None:
    reg = registry(refresh=True)
    assert not reg.errors, reg.errors  # a component that fails to import would escape the walk
    assert {Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.EXTENSION} <= set(reg.factories)
    problems: list[str] = []
    walked = 0
    for kind, factories in reg.factories.items():
        for typ, f in sorted(factories.items()):
            problems += time_field_problems(f.config, f"{kind.value}s::{typ}")
            walked += 1
    assert walked >= 20, walked  # every entry point, not an empty registry
    problems += time_field_problems(TelemetryConfig, "service::telemetry")
    problems += time_field_problems(SupervisorConfig, "service::supervisor")
    # models validated from a dict field (pprof's kubernetes block) are not reachable through annotations
    for m in _all_subclasses(ComponentConfig):
        if m.__module__.startswith("gotel."):
            problems += time_field_problems(m, f"{m.__module__}.{m.__qualname__}")
    assert not sorted(set(problems)), "\n".join(sorted(set(problems)))


def test_the_walk_finds_a_bad_field_in_a_nested_model() -> None:
    """The guard itself: a seconds-as-float field two levels down, a unit-suffixed key, a bad rename."""

    class Inner(ComponentConfig):
        flush_timeout: float = 1.0
        spans_per_second: float = 1.0  # a rate: fine
        wait_for_sync: bool = False  # a switch: fine

    class Middle(ComponentConfig):
        items: list[Inner] = Field(default_factory=list)
        retry_delay_ms: Duration = 0.1
        minutes: int = 3

    class Outer(ComponentConfig):
        renamed_keys = types.MappingProxyType({"poll_ms": RenamedKey("poll", "ms")})
        middle: Middle | None = None
        collection_interval: Duration = 10.0

    problems = time_field_problems(Outer, "x")
    assert sorted(problems) == [
        "x::middle::items::flush_timeout: <class 'float'> is not gotel.config.types.Duration",
        "x::middle::minutes: the unit is in the key (write duration: 10ms instead)",
        "x::middle::retry_delay_ms: the unit is in the key (write retry_delay: 10ms instead)",
        "x::poll_ms: renamed to 'poll', which is not a key",
    ]


# --- through the config loader, as `gotel validate` reports ---------------------------------------------

def _sched_yaml(body: str) -> str:
    return (
        "receivers:\n"
        "  sched:\n"
        f"{body}"
        "exporters:\n"
        "  debug: {}\n"
        "service:\n"
        "  pipelines:\n"
        "    metrics: {receivers: [sched], exporters: [debug]}\n"
    )


def _sched(text: str) -> tuple[Any, list[str]]:
    cfg = load_config("t.yaml", text=text)
    return cfg.receivers[ComponentID("sched")].config, [str(w) for w in cfg.warnings]


def test_sched_accepts_durations_and_bare_seconds() -> None:
    c, warnings = _sched(_sched_yaml("    collection_interval: 2s\n    slow_syscall_threshold: 250us\n"))
    assert (c.collection_interval, c.slow_syscall_threshold, warnings) == (2.0, 0.00025, [])
    c, warnings = _sched(_sched_yaml("    collection_interval: 2\n    slow_syscall_threshold: 0.5\n"))
    assert (c.collection_interval, c.slow_syscall_threshold, warnings) == (2.0, 0.5, [])


def test_deprecated_key_warns_naming_the_new_one_and_keeps_its_unit() -> None:
    c, warnings = _sched(_sched_yaml("    collection_interval: 2s\n    slow_syscall_threshold_ms: 25\n"))
    assert c.slow_syscall_threshold == pytest.approx(0.025)
    assert warnings == ['t.yaml:4 receivers::sched::slow_syscall_threshold_ms: warning: '
                        '"slow_syscall_threshold_ms" is deprecated: write slow_syscall_threshold: 25ms']
    with pytest.raises(ConfigError) as e:
        _sched(_sched_yaml("    slow_syscall_threshold_ms: 25\n    slow_syscall_threshold: 25ms\n"))
    assert [str(i) for i in e.value.issues] == [
        't.yaml:2 receivers::sched: "slow_syscall_threshold_ms" is the deprecated name of "slow_syscall_threshold": '
        'give only "slow_syscall_threshold"']


def test_bad_value_under_a_deprecated_key_is_an_error_at_that_key() -> None:
    """The warning at the same line must not hide the error (nor drop the receiver silently)."""
    with pytest.raises(ConfigError) as e:
        _sched(_sched_yaml("    collection_interval: 2s\n    slow_syscall_threshold_ms: 10sec\n"))
    assert [str(i) for i in e.value.issues] == [
        "t.yaml:4 receivers::sched::slow_syscall_threshold_ms: invalid duration '10sec': unknown unit 'sec', "
        "expected one of ns, us, ms, s, m, h (e.g. 10s, 250ms, 1m30s, 1h, 500us; a bare number is seconds)"]
    assert [w.path for w in e.value.warnings] == ["receivers::sched::slow_syscall_threshold_ms"]


def test_deprecated_keys_in_nested_models_warn_at_their_line() -> None:
    text = ("receivers:\n"
            "  pprof:\n"
            "    targets: [{endpoint: 'http://127.0.0.1:6060'}]\n"
            "    profiles:\n"
            "      cpu: {interval: 30s, seconds: 10}\n"
            "    diagnostics:\n"
            "      blocked_minutes: 45\n"
            "exporters: {debug: {}}\n"
            "service: {pipelines: {profiles: {receivers: [pprof], exporters: [debug]}}}\n")
    cfg = load_config("p.yaml", text=text)
    c = cfg.receivers[ComponentID("pprof")].config
    assert (c.profiles.cpu.duration, c.diagnostics.blocked_threshold) == (10.0, 2700.0)
    assert [str(w) for w in cfg.warnings] == [
        'p.yaml:5 receivers::pprof::profiles::cpu::seconds: warning: "seconds" is deprecated: write duration: 10s',
        'p.yaml:7 receivers::pprof::diagnostics::blocked_minutes: warning: '
        '"blocked_minutes" is deprecated: write blocked_threshold: 45m',
    ]


def test_bad_duration_is_one_error_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(_sched_yaml("    collection_interval: 10sec\n")
                 + "  telemetry:\n    metrics: {interval: 1m30}\n")
    assert main(["validate", "-c", str(f)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{f}:3 receivers::sched::collection_interval: invalid duration '10sec': unknown unit 'sec', expected one of "
        "ns, us, ms, s, m, h (e.g. 10s, 250ms, 1m30s, 1h, 500us; a bare number is seconds)",
        f"{f}:10 service::telemetry::metrics::interval: invalid duration '1m30': missing unit after 30 "
        "(e.g. 10s, 250ms, 1m30s, 1h, 500us; a bare number is seconds)",
        f"{f}: 2 errors",
    ]


def test_bounds_of_a_duration_are_written_as_durations() -> None:
    text = ("receivers:\n"
            "  pprof:\n"
            "    targets: [{endpoint: 'http://127.0.0.1:1'}]\n"
            "    profiles: {heap: {interval: 500ms}, cpu: {duration: 0s}}\n"
            "  go_ebpf: {poll_interval: 6s}\n"
            "  sched: {collection_interval: 0s}\n"
            "exporters: {debug: {}}\n"
            "service:\n"
            "  pipelines:\n"
            "    profiles: {receivers: [pprof], exporters: [debug]}\n"
            "    traces: {receivers: [go_ebpf], exporters: [debug]}\n"
            "    metrics: {receivers: [sched], exporters: [debug]}\n")
    with pytest.raises(ConfigError) as e:
        load_config("b.yaml", text=text)
    assert [str(i) for i in e.value.issues] == [
        "b.yaml:4 receivers::pprof::profiles::cpu::duration: must be more than 0s (got 0s)",
        "b.yaml:4 receivers::pprof::profiles::heap::interval: must be at least 1s (got 500ms)",
        "b.yaml:5 receivers::go_ebpf::poll_interval: must be at most 5s (got 6s)",
        "b.yaml:6 receivers::sched::collection_interval: must be more than 0s (got 0s)",
    ]


def test_service_shutdown_timeout_is_a_duration() -> None:
    text = _sched_yaml("    collection_interval: 2s\n") + "  shutdown_timeout: 1m30s\n"
    assert load_config("s.yaml", text=text).service.shutdown_timeout == 90.0
    with pytest.raises(ConfigError) as e:
        load_config("s.yaml", text=_sched_yaml("") + "  shutdown_timeout: 5 minutes\n")
    assert [i.path for i in e.value.issues] == ["service::shutdown_timeout"]
    assert re.search(r"invalid duration '5 minutes'", str(e.value))


def test_components_shows_durations_as_durations(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gotel.cli.commands.components import describe

    monkeypatch.setenv("COLUMNS", "200")  # one table row per line

    data = describe()
    sched = next(i for i in data["receivers"] if i["type"] == "sched")["schema"]["properties"]
    assert sched["collection_interval"]["default"] == "10s" and sched["collection_interval"]["format"] == "duration"
    assert sched["slow_syscall_threshold"]["default"] == "10ms"
    assert sched["slow_syscall_threshold_ms"]["deprecated"] is True
    batch = next(i for i in data["processors"] if i["type"] == "batch")["schema"]["properties"]
    assert batch["timeout"]["default"] == "200ms"
    otlp = next(i for i in data["exporters"] if i["type"] == "otlp")["schema"]["$defs"]["RetryConfig"]["properties"]
    assert (otlp["initial_interval"]["default"], otlp["max_elapsed_time"]["default"]) == ("5s", "5m")
    assert main(["components", "pprof"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"profiles\.cpu\.interval\s+│ duration\s+│ 15s", out), out
    assert re.search(r"diagnostics\.blocked_threshold\s+│ duration\s+│ 30m", out), out


# --- the shipped configs write durations as durations ---------------------------------------------------

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"


def bare_durations(model: type[BaseModel], body: Any, path: str) -> list[str]:
    """Duration keys written as bare numbers (valid, but not how the collector writes them)."""
    if not isinstance(body, dict):
        return []
    out = []
    for key, value in body.items():
        f = model.model_fields.get(str(key)) or next((x for x in model.model_fields.values() if x.alias == key), None)
        if f is None:  # the loader validated the file: an unknown key would have failed there
            continue
        if is_duration_field(f.annotation, f.metadata) and isinstance(value, int | float) and not isinstance(value, bool):
            out.append(f"{path}::{key}: {value!r}")
        for m in _models(f.annotation):
            items = value if isinstance(value, list) else [value]
            for v in items:
                out += bare_durations(m, v, f"{path}::{key}")
    return out


@pytest.mark.parametrize("file", sorted([CONFIG_DIR / "default.yaml", *(CONFIG_DIR / "examples").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_shipped_configs_write_durations_as_durations(file: Path) -> None:
    text = file.read_text()
    # references without a default get a value (a number only where one is expected)
    env = {n: "1" if n.endswith("PID") else "x" for n in re.findall(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    cfg = load_config(str(file), text=text, env=env)
    assert not [w for w in cfg.warnings if "deprecated" in w.message]
    reg = registry()
    import yaml

    data = yaml.safe_load(text)
    problems = []
    for section, kind in (("receivers", Kind.RECEIVER), ("processors", Kind.PROCESSOR), ("exporters", Kind.EXPORTER)):
        for cid, body in (data.get(section) or {}).items():
            factory = reg.get(kind, ComponentID.parse(cid).type)
            assert factory is not None, cid
            problems += bare_durations(factory.config, body or {}, f"{section}::{cid}")
    svc = data.get("service") or {}
    problems += bare_durations(TelemetryConfig, svc.get("telemetry") or {}, "service::telemetry")
    problems += bare_durations(SupervisorConfig, svc.get("supervisor") or {}, "service::supervisor")
    if isinstance(svc.get("shutdown_timeout"), int | float):
        problems.append(f"service::shutdown_timeout: {svc['shutdown_timeout']!r}")
    assert problems == []
