"""go_ebpf on every grpc-go layout era (tests/fixtures/goapps/grpcmatrix) and every toolchain that builds it.

For each build, a traced server and a traced client process (two processes): the client makes a plan of
calls (unary and the three streaming kinds, status codes, its own deadline passing, a DEADLINE_EXCEEDED
propagated from a downstream call with time left, an incoming traceparent) and logs each one; the spans
are checked against that log, the independent truth: codes exact, the server span the child of the client
span, addresses on both, `gotel.rpc.deadline.exceeded` exactly where the caller's own deadline passed and
`gotel.rpc.deadline.propagated` where it did not. One go_ebpf receiver per grpc-go version traces the
builds of every toolchain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal, attr_dict
from gotel.receivers.go_ebpf import Config, factory
from gotel.receivers.go_ebpf.events import CODES
from gotel.telemetry.counters import Telemetry
from tests.helpers import goapps
from tests.helpers.memsink import MemorySink
from tests.integration.go_ebpf.test_grpc import CLIENT, SERVER, _find_pid, until

TP_TRACE, TP_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
METHOD = {"unary": "Unary", "server": "ServerStream", "client": "ClientStream", "bidi": "Bidi"}
# few calls per kind; the deadline cases are spread over the kinds
PLAN: list[dict[str, Any]] = [
    {"stream": "unary", "code": 0, "traceparent": f"00-{TP_TRACE}-{TP_SPAN}-01"},
    {"stream": "unary", "code": 5, "message": "m5"},
    {"stream": "server", "code": 0, "deadline": "3s"},
    {"stream": "server", "code": 7, "message": "m7"},
    {"stream": "client", "code": 0},
    {"stream": "client", "code": 13, "message": "m13", "deadline": "3s"},
    {"stream": "bidi", "code": 0},
    {"stream": "bidi", "code": 9, "message": "m9"},
    # its own deadline passes while the handler waits
    {"stream": "unary", "deadline": "60ms", "delay": "400ms"},
    {"stream": "bidi", "deadline": "60ms", "delay": "400ms"},
    # the server calls itself with a 60 ms deadline that passes, and returns that DEADLINE_EXCEEDED: the
    # client gets it with ~3 s left
    {"stream": "unary", "deadline": "3s", "downstream": "self", "down-deadline": "60ms", "down-delay": "400ms",
     "propagate": True},
    {"stream": "server", "deadline": "3s", "downstream": "self", "down-deadline": "60ms", "down-delay": "400ms",
     "propagate": True},
]


# (code, own deadline passed) of each call of PLAN
EXPECT = [(p.get("code", 4 if "deadline" in p else 0), "deadline" in p and p["deadline"] != "3s") for p in PLAN]


def _spans(sink: MemorySink, pid: int, kind: int) -> list[Any]:
    out = []
    for b in list(sink.batches):
        for rs in b.peek().resource_spans:
            if attr_dict(rs.resource.attributes).get("process.pid") != pid:
                continue
            out += [s for ss in rs.scope_spans for s in ss.spans if s.kind == kind]
    return out


class Matrix:
    """One go_ebpf receiver (in-memory sink) tracing the builds of one grpc-go version."""

    def __init__(self, binaries: list[Path]) -> None:
        self.binaries = binaries
        self.sink = MemorySink()
        self.tel = Telemetry()
        self.apps: list[goapps.RunningApp] = []

    async def start(self) -> None:
        cfg = Config.model_validate({"discovery": {"exe_paths": [str(b) for b in self.binaries]},
                                     "flush_interval": 0.2, "export_interval": 1.0, "stitch_window": 0.3})
        ctx = Context(ComponentID("go_ebpf"), Kind.RECEIVER, logging.getLogger("go_ebpf"),
                      self.tel.component("go_ebpf", Kind.RECEIVER))
        self.r = factory.create(cfg, {Signal.TRACES: self.sink, Signal.METRICS: MemorySink()}, ctx)
        await self.r.start()

    async def server(self, binary: Path) -> goapps.RunningApp:
        app = await asyncio.to_thread(goapps.RunningApp, [str(binary), "server", "-log"])
        self.apps.append(app)
        await until(lambda: app.pid in self.r.attached_pids, 30)
        return app

    async def client(self, binary: Path, target: goapps.RunningApp, *args: str) -> tuple[int, list[dict[str, Any]]]:
        """A client process registered with the receiver before it execs (its first call comes at once)."""
        gate = Path(tempfile.mkdtemp(prefix="go_ebpf-matrix-")) / "go"
        script = f'while [ ! -e {gate} ]; do sleep 0.002; done; exec "$0" "$@"'
        argv = ["sh", "-c", script, str(binary), "client", "-target", f"127.0.0.1:{target.ports['grpc']}", *args]
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.setdefault("app", goapps.RunningApp(argv)), daemon=True)
        t.start()
        pid = await asyncio.to_thread(_find_pid, str(gate))
        self.r.trace_pid(pid, str(binary))
        gate.touch()
        await asyncio.to_thread(t.join, 60)
        app: goapps.RunningApp = box["app"]
        try:
            assert await asyncio.to_thread(app.wait, 60) == 0, app.stderr()
            return app.pid, app.records()
        finally:
            app.stop()
            gate.unlink(missing_ok=True)
            gate.parent.rmdir()

    async def close(self) -> None:
        for a in self.apps:
            a.stop()
        await self.r.shutdown()


def check_calls(m: Matrix, srv: goapps.RunningApp, cpid: int, calls: list[dict[str, Any]], label: str) -> None:
    """Every call of the plan against its spans (see the module docstring)."""
    port = srv.ports["grpc"]
    cspans = sorted(_spans(m.sink, cpid, CLIENT), key=lambda s: s.start_time_unix_nano)
    sspans = _spans(m.sink, srv.pid, SERVER)
    inner_clients = _spans(m.sink, srv.pid, CLIENT)
    assert len(cspans) == len(calls), "\n".join([f"{label}: {len(cspans)} client spans for {len(calls)} calls"] + [
        f"{s.name} {attr_dict(s.attributes).get('rpc.response.status_code')} start {s.start_time_unix_nano} "
        f"end {s.end_time_unix_nano} span {s.span_id.hex()}" for s in cspans] + [json.dumps(c) for c in calls])
    handled = [r for r in srv.records() if r.get("event") == "handled"]
    for call, step, cs in zip(calls, PLAN, cspans, strict=True):
        what = f"{label} call {call['i']} {step}"
        a = attr_dict(cs.attributes)
        assert cs.name == f"gotelfix.Echo/{METHOD[call['stream']]}", what
        assert a["rpc.response.status_code"] == CODES[call["code"]], (what, a)
        # addresses on the client span
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == port, (what, a)
        assert a.get("network.local.port"), (what, a)
        # deadline semantics against the program's own verdict
        if call["has_deadline"]:
            assert a["gotel.rpc.deadline.exceeded"] is call["deadline_passed"], (what, a)
            propagated = call["code"] == 4 and not call["deadline_passed"]
            assert a.get("gotel.rpc.deadline.propagated", False) is propagated, (what, a)
            assert (a["gotel.rpc.deadline.remaining"] > 0) is not call["deadline_passed"], (what, a)
        else:
            assert "gotel.rpc.deadline.exceeded" not in a, (what, a)
        # the server span in the other process is the client span's child
        kids = [s for s in sspans if s.parent_span_id == cs.span_id]
        assert len(kids) == 1, (what, len(kids))
        ss = kids[0]
        assert ss.trace_id == cs.trace_id, what
        b = attr_dict(ss.attributes)
        assert b["rpc.method"] == METHOD[call["stream"]], (what, b)
        assert b["server.port"] == port and b["client.port"] == a["network.local.port"], (what, a, b)
        assert b["client.address"] == "127.0.0.1" and b["server.address"] == "127.0.0.1", (what, b)
        if call["has_deadline"]:
            assert b["gotel.rpc.deadline.timeout"] > 0, (what, b)
        if step.get("traceparent"):
            # the caller's traceparent is continued by both halves of the call
            assert cs.trace_id.hex() == TP_TRACE and cs.parent_span_id.hex() == TP_SPAN, what
        if step.get("propagate"):
            # the server got DEADLINE_EXCEEDED from its own downstream call (whose deadline passed) and
            # returned it with ~3 s left: propagated on the server span too, exceeded on the inner client's
            assert b["rpc.response.status_code"] == "DEADLINE_EXCEEDED", (what, b)
            assert b["gotel.rpc.deadline.exceeded"] is False and b["gotel.rpc.deadline.propagated"] is True, b
            (inner,) = [s for s in inner_clients if s.parent_span_id == ss.span_id]
            c = attr_dict(inner.attributes)
            (rec,) = [r for r in handled if r["id"] == call["i"] + 1 and r.get("downstream")]
            assert rec["downstream"]["deadline_passed"] is True
            assert c["rpc.response.status_code"] == "DEADLINE_EXCEEDED" and c["gotel.rpc.deadline.exceeded"] is True, c
            assert "gotel.rpc.deadline.propagated" not in c, c
            (leaf,) = [s for s in sspans if s.parent_span_id == inner.span_id]
            assert leaf.trace_id == cs.trace_id, what
        elif call["deadline_passed"]:
            # the handler saw the deadline pass (DEADLINE_EXCEEDED) or the client's cancel first (CANCELLED)
            recs = [r for r in handled if r["id"] == call["i"] + 1]
            assert recs and b["rpc.response.status_code"] == CODES[recs[-1]["code"]], (what, b, recs)
        else:
            assert b["rpc.response.status_code"] == CODES[call["code"]], (what, b)


async def run_version(binaries: list[Path], label: str) -> tuple[Matrix, list[str]]:
    m = Matrix(binaries)
    await m.start()
    try:
        for binary in binaries:
            srv = await m.server(binary)
            cpid, recs = await m.client(binary, srv, "-plan", json.dumps(PLAN))
            calls = [r for r in recs if "i" in r]
            # the program did what the plan says (else the checks below would test something else)
            assert [(c["code"], c["deadline_passed"]) for c in calls] == EXPECT, calls
            want = len(calls) + sum(1 for p in PLAN if p.get("propagate"))  # + the downstream calls' servers

            def complete(srv: goapps.RunningApp = srv, cpid: int = cpid, want: int = want) -> bool:
                return (len(_spans(m.sink, cpid, CLIENT)) >= len(PLAN)
                        and len(_spans(m.sink, srv.pid, SERVER)) >= want)

            try:
                await until(complete, 15)
            except TimeoutError:
                raise AssertionError(f"{label} {binary.name}: {len(_spans(m.sink, cpid, CLIENT))} client spans of "
                                     f"{len(PLAN)}, {len(_spans(m.sink, srv.pid, SERVER))} server spans of {want}; "
                                     f"names {[s.name for s in _spans(m.sink, srv.pid, SERVER)]}") from None
            await asyncio.sleep(0.5)  # a stitched parent may still be pending
            check_calls(m, srv, cpid, calls, f"{label} {binary.name}")
            srv.stop()
    except BaseException:
        await m.close()
        raise
    return m, []


def _builds(version: str) -> list[Path]:
    return [goapps.build(goapps.grpc_app(version), t) for v, t in goapps.grpc_matrix() if v == version]


@pytest.mark.parametrize("version", goapps.grpc_versions())
async def test_grpc_version_matrix(version: str, caplog: pytest.LogCaptureFixture) -> None:
    binaries = await asyncio.to_thread(_builds, version)
    with caplog.at_level(logging.WARNING):
        m, _ = await run_version(binaries, version)
    await m.close()
    # a binary with DWARF whose layout go_ebpf knows loses nothing of its gRPC spans, and says so
    assert_no_grpc_loss(binaries, caplog)


def assert_no_grpc_loss(binaries: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    from gotel.golang import analyze
    from gotel.receivers.go_ebpf.layout import grpc_losses, layout_for

    for b in binaries:
        assert grpc_losses(layout_for(analyze(b)).missing) == [], b
    said = [r.getMessage() for r in caplog.records if "missing:" in r.getMessage()]
    assert not [m for m in said if grpc_losses(m.split("missing: ", 1)[1].split(", "))], said


async def test_devel_build_resolves_its_layout_from_dwarf(caplog: pytest.LogCaptureFixture) -> None:
    """grpc through `replace => ./grpc`: build info says (devel); traceparents are still continued and
    nothing is assumed from a version number."""
    binary = await asyncio.to_thread(goapps.build, "grpcmatrix/devel", "go1.27")
    from gotel.golang import analyze

    assert analyze(binary).module_version(goapps.GRPC_MODULE) == "(devel)"
    with caplog.at_level(logging.WARNING):
        m, _ = await run_version([binary], "devel")
    await m.close()
    assert_no_grpc_loss([binary], caplog)
    assert not [r for r in caplog.records if "assum" in r.getMessage()]


async def test_stripped_newest_grpc_degrades_as_1_33_does(caplog: pytest.LogCaptureFixture) -> None:
    """Without DWARF: timing, client method names and local parenting stay; what is lost is logged once
    and marked on the spans."""
    binary = await asyncio.to_thread(goapps.build, goapps.grpc_app(goapps.grpc_versions()[-1]), "go1.27", True)
    m = Matrix([binary])
    await m.start()
    try:
        with caplog.at_level(logging.WARNING):
            srv = await m.server(binary)
            cpid, recs = await m.client(binary, srv, "-plan", json.dumps(PLAN[:8]))
        await until(lambda: len(_spans(m.sink, cpid, CLIENT)) >= 8 and len(_spans(m.sink, srv.pid, SERVER)) >= 8, 15)
        lost = [r.getMessage() for r in caplog.records if "lacks DWARF" in r.getMessage()]
        assert len(lost) == 1, lost  # once per binary, though two processes run it
        cspans = sorted(_spans(m.sink, cpid, CLIENT), key=lambda s: s.start_time_unix_nano)
        for call, cs in zip([r for r in recs if "i" in r], cspans, strict=True):
            assert cs.name == f"gotelfix.Echo/{METHOD[call['stream']]}"
            a = attr_dict(cs.attributes)
            # a nil error is OK without offsets; any other code needs them and is not guessed
            assert a.get("rpc.response.status_code", "OK") == "OK" and "gotel.missing" in a, a
            assert call["code"] == 0 or "rpc.response.status_code" not in a, a
        for ss in _spans(m.sink, srv.pid, SERVER):
            assert "rpc.method" in attr_dict(ss.attributes)["gotel.missing"]
    finally:
        await m.close()


# what `gotel inspect` must say each era has (the names in the grpc-go sources of that version)
ERA_NAMES = {
    "v1.33": ("remoteAddr", "csAttempt.t", "< 1.69"),
    "v1.58.3": ("remoteAddr", "csAttempt.t", "< 1.69"),
    "v1.64.1": ("peer.Addr", "csAttempt.t", "< 1.69"),
    "v1.70.0": ("peer.Addr", "csAttempt.t", "1.69-1.76"),
    "v1.77.0": ("peer.Addr", "csAttempt.transport", ">= 1.77"),
    "v1.83.1": ("peer.Addr", "csAttempt.transport", ">= 1.77"),
    "v1.85.0": ("peer.Addr", "csAttempt.transport", ">= 1.77"),
}


@pytest.mark.parametrize("version", goapps.grpc_versions())
def test_inspect_names_each_eras_fields_without_false_alarms(version: str) -> None:
    from gotel.cli.commands.inspect import collect

    binary = goapps.build(goapps.grpc_app(version), "go1.26")
    info = collect(str(binary), "go_ebpf")
    g = info["go_ebpf_grpc"]
    addr, transport, stream = ERA_NAMES[version]
    assert g["server_addresses"].endswith(addr) and g["client_transport"].endswith(transport), g
    assert stream in g["stream"] and g["operate_headers"] == (
        "(frame, ...)" if version in ("v1.33", "v1.58.3") else "(ctx, frame, ...)"), g
    assert g["status_error"] and g["call_start"], g
    # every gRPC probe attaches with all its fields: none is flagged degraded (status.Error.e|s included)
    grpc = [p for p in info["probes"] if p["id"].startswith("grpc.")]
    # grpc >= 1.84 serves unary and streaming calls in one processRPC: no processStreamingRPC to probe (its
    # streaming methods come from the binary's service descriptors instead; docs/go_ebpf.md); grpc 1.33 has no
    # earlyAbortStream (its tap refuses streams with REFUSED_STREAM)
    absent = {"v1.85.0": {"grpc.flow.server_streaming"}, "v1.33": {"grpc.flow.early_abort"}}.get(version, set())
    assert grpc and all(p["status"] == "ok" or (p["id"] in absent and p["status"] == "not-present")
                        for p in grpc), [(p["id"], p["status"], p["reasons"]) for p in grpc]
