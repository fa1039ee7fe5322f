"""The real OpenTelemetry Collector (tests/peers/otelcol, built by scripts/bootstrap_go.sh) as a test peer.

`Collector(config, workdir).start()` writes the config (YAML), adds a `health_check` extension on a free
loopback port, switches the collector's own metrics endpoint off (its default is the fixed port 8888),
starts the binary and returns once health_check answers 200, i.e. every pipeline is running. `stop()`
ends it by pid. `sink_config()` is the usual shape: an `otlp` receiver on free loopback ports whose
every signal goes to a `file` exporter (OTLP/JSON, one request per line) that `requests()` reads back.

Profiles need the collector's alpha feature gate `service.profilesSupport` (v0.112.0 on; still alpha at
v0.161.0); `Collector` enables it unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.message import Message

from gotel.pdata.batch import Profiles, Signal, batch_type, value_of
from gotel.pdata.otlp import json_to_message
from tests.helpers.peers import peer_binary
from tests.helpers.prometheus_server import free_port

PROFILES_GATE = "service.profilesSupport"


def binary() -> Path:
    """The collector binary (built by the bootstrap; built here if `make bootstrap` has not run)."""
    return peer_binary("otelcol")


def sink_config(signals: tuple[Signal, ...] = tuple(Signal)) -> tuple[dict[str, Any], int, int]:
    """(config, gRPC port, HTTP port): an `otlp` receiver on loopback whose signals each go to
    `file/<signal>` writing <signal>.json in the collector's folder (its working directory)."""
    grpc_port, http_port = free_port(), free_port()
    cfg: dict[str, Any] = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                                             "http": {"endpoint": f"127.0.0.1:{http_port}"}}}},
        "exporters": {f"file/{s.value}": {"path": f"{s.value}.json", "flush_interval": "100ms"}
                      for s in signals},
        "service": {"pipelines": {s.value: {"receivers": ["otlp"], "exporters": [f"file/{s.value}"]}
                                  for s in signals}},
    }
    return cfg, grpc_port, http_port


class CollectorError(RuntimeError):
    """The collector exited or never became healthy; the message carries the end of its log."""


class Collector:
    def __init__(self, config: dict[str, Any], workdir: Path, feature_gates: tuple[str, ...] = (PROFILES_GATE,)) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.health_port = free_port()
        cfg = json.loads(json.dumps(config))  # a deep copy the caller's dict is safe from
        cfg.setdefault("extensions", {})["health_check"] = {"endpoint": f"127.0.0.1:{self.health_port}"}
        service = cfg.setdefault("service", {})
        exts = service.setdefault("extensions", [])
        if "health_check" not in exts:
            exts.append("health_check")
        telemetry = service.setdefault("telemetry", {})
        telemetry.setdefault("metrics", {"level": "none"})
        telemetry.setdefault("logs", {"level": "info", "encoding": "console"})
        self.config = cfg
        self.config_path = workdir / "otelcol.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log_path = workdir / "otelcol.log"
        self.feature_gates = feature_gates
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def argv(self) -> list[str]:
        argv = [str(binary()), "--config", str(self.config_path)]
        if self.feature_gates:
            argv.append("--feature-gates=" + ",".join(self.feature_gates))
        return argv

    def start(self, timeout: float = 60.0) -> Collector:
        argv = self.argv()
        with open(self.log_path, "wb") as logf:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CollectorError(f"otelcol exited with {self.proc.returncode} before it was healthy:\n{self.log()}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise CollectorError(f"otelcol not healthy within {timeout}s:\n{self.log()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (the collector drains and flushes its exporters), SIGKILL after `grace`; by pid only."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def requests(self, signal_: Signal, name: str | None = None) -> list[Message]:
        """The export requests the file exporter `file/<name or signal>` wrote, parsed from OTLP/JSON."""
        path = self.workdir / f"{name or signal_.value}.json"
        if not path.exists():
            return []
        cls = batch_type(signal_)
        out = []
        data = path.read_bytes()
        # each request is one line ending in a newline; a last line without one is still being written
        for line in data[:data.rfind(b"\n") + 1].splitlines():
            if line.strip():
                out.append(json_to_message(line, cls.request_type()))
        return out

    def wait_requests(self, signal_: Signal, pred: Callable[[list[Message]], bool], timeout: float = 30.0,
                      name: str | None = None) -> list[Message]:
        """Polls the file until pred(requests) holds; the assertion names what the file held last."""
        end = time.monotonic() + timeout
        reqs: list[Message] = []
        while time.monotonic() < end:
            with contextlib.suppress(ValueError):  # a line the exporter is still writing
                reqs = self.requests(signal_, name)
                if pred(reqs):
                    return reqs
            time.sleep(0.1)
        raise AssertionError(f"collector's file/{name or signal_.value} did not reach the expected content within "
                             f"{timeout}s ({len(reqs)} requests)\n{self.log()}")

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def validate(config_path: Path, feature_gates: tuple[str, ...] = (PROFILES_GATE,)) -> subprocess.CompletedProcess[str]:
    """`otelcol validate --config FILE`: exit 0 when the collector accepts the file."""
    argv = [str(binary()), "validate", "--config", str(config_path)]
    if feature_gates:
        argv.append("--feature-gates=" + ",".join(feature_gates))
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def items(signal_: Signal, requests: list[Any]) -> list[bytes | str]:
    """Every item of the requests (span, metric, log record: with its resource and scope; profile: fully
    resolved), sorted: equal lists mean the same items, each exactly once, however they were grouped
    into requests. An absent resource or scope counts as an empty one, as in pdata."""
    if Signal(signal_) is Signal.PROFILES:
        return sorted(p for r in requests for p in resolved_profiles(r))
    out: list[bytes | str] = []
    for req in requests:
        for r in getattr(req, req.DESCRIPTOR.fields[0].name):  # resource_spans, resource_metrics, ...
            res = type(r.resource).FromString(r.resource.SerializeToString())
            for s in getattr(r, r.DESCRIPTOR.fields_by_number[2].name):  # scope_spans, ...
                scope = s.scope.SerializeToString(deterministic=True)
                for item in getattr(s, s.DESCRIPTOR.fields_by_number[2].name):  # spans, metrics, log_records
                    out.append(res.SerializeToString(deterministic=True) + b"|" + scope + b"|"
                               + item.SerializeToString(deterministic=True))
    return sorted(out)


def resolved_profiles(req: Any) -> list[str]:
    """Each profile of a request with its dictionary references resolved (strings, frames, links,
    attributes). The collector rewrites the dictionary (it moves resource attributes into the string
    table), so profiles are compared by what they say, not by their indices."""
    b = Profiles(type(req).FromString(req.SerializeToString()))
    b.resolve_string_refs()
    m = b.peek()
    d, st = m.dictionary, m.dictionary.string_table

    def attrs(indices: Any) -> tuple[Any, ...]:
        return tuple((st[d.attribute_table[i].key_strindex], value_of(d.attribute_table[i].value),
                      st[d.attribute_table[i].unit_strindex]) for i in indices)

    def frame(i: int) -> tuple[Any, ...]:
        loc = d.location_table[i]
        mapping = d.mapping_table[loc.mapping_index]
        lines = tuple((st[d.function_table[ln.function_index].name_strindex],
                       st[d.function_table[ln.function_index].filename_strindex], ln.line, ln.column)
                      for ln in loc.lines)
        return loc.address, st[mapping.filename_strindex], lines, attrs(loc.attribute_indices)

    out = []
    for rp in m.resource_profiles:
        res = sorted((kv.key, repr(value_of(kv.value))) for kv in rp.resource.attributes)
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                samples = [(tuple(frame(i) for i in d.stack_table[s.stack_index].location_indices),
                            tuple(s.values), tuple(s.timestamps_unix_nano),
                            (d.link_table[s.link_index].trace_id, d.link_table[s.link_index].span_id),
                            attrs(s.attribute_indices)) for s in p.samples]
                out.append(repr((res, sp.scope.name, sp.scope.version,
                                 (st[p.sample_type.type_strindex], st[p.sample_type.unit_strindex]),
                                 (st[p.period_type.type_strindex], st[p.period_type.unit_strindex]), p.period,
                                 p.time_unix_nano, p.duration_nano, p.profile_id, attrs(p.attribute_indices),
                                 samples)))
    return out


@pytest.fixture
def otelcol(tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Start real collectors with `otelcol(config)` (a dict); each gets its own folder under tmp_path and
    is stopped by pid at teardown."""
    started: list[Collector] = []

    def _start(config: dict[str, Any], **kw: Any) -> Collector:
        c = Collector(config, tmp_path / f"otelcol-{len(started)}", **kw)
        started.append(c)
        return c.start()

    yield _start
    for c in reversed(started):
        c.stop()
