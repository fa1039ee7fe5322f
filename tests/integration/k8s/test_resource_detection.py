"""resource_detection on real processes: Go binaries of both toolchains, a non-Go process, a dead pid."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from gotel.pdata.batch import Signal
from gotel.processors.resource_detection import Config, factory, go_version, parse_resource_env
from tests.helpers import goapps
from tests.unit.k8s.conftest import Collect, make_ctx, resource_attrs, traces_with


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)


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


@pytest.mark.parametrize("stripped", [False, True], ids=["plain", "stripped"])
@pytest.mark.parametrize("toolchain", goapps.TOOLCHAINS)
async def test_go_process_facts_and_service_name_from_its_environment(toolchain: str, stripped: bool) -> None:
    binary = str(goapps.build("httpapp", toolchain, stripped))
    version = goapps.go_version(toolchain)
    assert go_version(binary) == version
    env = {"OTEL_SERVICE_NAME": "checkout", "PATH": "/usr/bin"}
    with goapps.RunningApp([binary, "server"], env=env) as app:
        [r] = await detect({}, {"process.pid": app.pid})
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
