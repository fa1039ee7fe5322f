"""`gotel inspect` against the fixtures: agrees with `go version -m`, finds functions in stripped binaries
and names the attributes their probes lose, lists USDT probes of a running process."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest

from gotel.cli.commands import inspect
from tests.helpers import goapps

TOOLCHAINS = ["go1.19", "go1.27"]


def run_inspect(target: str, *, as_json: bool = True) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = inspect.run(argparse.Namespace(target=target, json=as_json, receiver=None))
    return code, out.getvalue(), err.getvalue()


def go_version_m(toolchain: str, path: str) -> dict[str, Any]:
    r = subprocess.run([str(goapps.go_tool(toolchain)), "version", "-m", path], capture_output=True, text=True,
                       check=True)
    lines = r.stdout.splitlines()
    info: dict[str, Any] = {"go": lines[0].split(": ", 1)[1].strip(), "path": None, "mods": {}, "settings": {}}
    for ln in lines[1:]:
        f = ln.strip().split("\t")
        if f[0] == "path":
            info["path"] = f[1]
        elif f[0] in ("mod", "dep"):
            info["mods"][f[1]] = f[2]
        elif f[0] == "build":
            k, _, v = f[1].partition("=")
            info["settings"][k] = json.loads(v) if v.startswith('"') else v  # Go quotes values with spaces
    return info


@pytest.mark.parametrize("stripped", [False, True], ids=["plain", "stripped"])
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
@pytest.mark.parametrize("app", goapps.APPS)
def test_inspect_agrees_with_go_version_m(app: str, toolchain: str, stripped: bool) -> None:
    path = str(goapps.build(app, toolchain, stripped))
    code, out, err = run_inspect(path)
    assert code == 0, err
    got = json.loads(out)
    want = go_version_m(toolchain, path)
    assert got["go_version"] == want["go"]
    assert got["main_package"] == want["path"]
    assert got["modules"] == want["mods"]
    assert got["build_settings"] == want["settings"]
    assert got["has_dwarf"] is (not stripped)
    assert got["functions_from"] == ("pclntab" if stripped else "symtab")
    probes = {p["id"]: p for p in got["probes"]}
    # functions are found in stripped binaries too (.gopclntab), with their RETs
    assert probes["runtime.newproc1"]["status"] == "ok"
    stw = probes["runtime.startTheWorldWithSema"]
    assert stw["status"] == "ok" and stw["ret_probes"] >= 1
    http = probes["http.server.serve"]  # every fixture serves net/http/pprof
    if stripped:
        assert http["status"] == "degraded" and http["attachable"]
        assert {"http.request.method", "url.path"} <= set(http["lost_attributes"])
        assert "no DWARF" in http["reasons"][0]
    else:
        assert http["status"] == "ok" and http["lost_attributes"] == []
    # go_ebpf's own probe specs come through the gotel.probespecs entry points, without importing receivers
    grpc = probes["grpc.server.handle_stream"]
    assert grpc["receiver"] == "go_ebpf"
    if app == "grpcapp":
        assert grpc["status"] == ("degraded" if stripped else "ok")
        if stripped:
            assert "rpc.method" in grpc["lost_attributes"], "a stripped binary must say which attributes go_ebpf loses"
    else:
        assert grpc["status"] == "not-present"
    # the names are the agent's: what go_ebpf logs as "traced pid N (...): <probe ids>" for this binary
    from gotel.receivers.go_ebpf import below
    from gotel.receivers.go_ebpf.probes import plan_for

    exe = str(goapps.build(app, toolchain, stripped))
    # the context and TLS probes are logged in a line of their own (with contexts: true for context.leaks);
    # inspect lists the opt-in probes too: the agent's plan with them on (inject_traceparent, contexts)
    logged = plan_for(exe, inject=True).probe_ids + below.plan_for(exe, contexts=True, tls=True).probe_ids
    assert logged, "go_ebpf traces every fixture (net/http)"
    attachable = {i for i, p in probes.items() if p["attachable"]}
    assert set(logged) <= attachable, f"logged {logged}, inspect: {sorted(attachable)}"
    go_ebpf_ids = {i for i, p in probes.items() if p["receiver"] == "go_ebpf"}
    assert go_ebpf_ids - set(logged) <= {i for i, p in probes.items() if not p["attachable"]}


def test_inspect_a_running_process_with_usdt_probes(goapp: Callable[..., Any]) -> None:
    app = goapp("usdtapp", toolchain="go1.27")
    code, out, err = run_inspect(str(app.pid))
    assert code == 0, err
    got = json.loads(out)
    assert got["pid"] == app.pid and got["path"] == str(app.binary)
    assert got["service_name"] == app.binary.name
    probes = {p["name"]: p for p in got["usdt_probes"]}
    assert set(probes) == {"req_start", "req_end", "tick", "message", "guarded"}
    assert all(p["provider"] == "gotelfix" for p in probes.values())
    assert [n for n, p in probes.items() if p["semaphore"]] == ["guarded"]
    assert len(probes["tick"]["arguments"]) == 4
    code, text, _ = run_inspect(str(app.pid), as_json=False)
    assert code == 0 and "gotelfix:req_start" in text and "runtime.newproc1" in text


def test_inspect_bad_targets() -> None:
    code, out, _ = run_inspect("/bin/sleep")
    assert code == 0 and json.loads(out)["is_go"] is False
    code, _, err = run_inspect("/nonexistent/binary")
    assert code == 1 and "no such file" in err
    code, _, err = run_inspect("999999999")
    assert code == 1 and "no process 999999999" in err


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_inspect_module_mode_build_lists_main_module_and_dependencies(toolchain: str) -> None:
    path = str(goapps.build("modapp", toolchain))
    code, out, err = run_inspect(path)
    assert code == 0, err
    got = json.loads(out)
    want = go_version_m(toolchain, path)
    assert want["mods"], "module-mode build: go version -m lists mod/dep lines"
    assert got["modules"] == want["mods"]
    assert got["main_module"].split()[0] in want["mods"]
    assert got["build_settings"] == want["settings"]
