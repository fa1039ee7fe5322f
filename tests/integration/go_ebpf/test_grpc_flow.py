"""Flow control and stream limits (issue 19) against the fixture's own log, on grpc-go versions of the matrix.

One traced `grpcapp flowserver -max-streams 1` and traced clients (`grpcapp flow ...`, tests/fixtures/goapps/
grpcapp/flow.go) that cause each condition a known number of times:
* quota: a warm-up call, then 4 concurrent calls that each hold the server's only stream 200 ms: 3 of them wait
  for the stream quota, each as long as its own log says (its start to the server handler's start);
* flood: a server stream whose reader sleeps 1 s before reading: the server's sends wait for the stream window;
* rawflood: a raw HTTP/2 reader that gives streams a 1 GiB window but the connection its first 65,535 bytes
  only after 1 s: the server's sends wait for the connection's window;
* limited: calls the server's tap (InTapHandle, a limit before any handler) refuses: grpc >= 1.5x answers and
  resets each before a handler saw it (reset_before_headers), 1.33 refuses the stream (REFUSED_STREAM);
* raw: a raw HTTP/2 connection that opens 3 streams at once (2 refused) and pings 10 times (GOAWAY
  ENHANCE_YOUR_CALM "too_many_pings"), logging every RST_STREAM and GOAWAY it receives;
* open: a bidi stream held open 3 s: its age is reported while it is open and at its end, on both sides
  (grpc >= 1.84 has no processStreamingRPC: the server side comes from the binary's service descriptors).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal, attr_dict
from gotel.receivers.go_ebpf import Config, factory
from gotel.telemetry.counters import Telemetry
from tests.helpers import goapps
from tests.helpers.memsink import MemorySink
from tests.integration.go_ebpf.test_grpc import CLIENT, _find_pid, until

# Debian's GOPATH 1.33 with Debian's Go, 1.70.0 (ServerStream era) with Go 1.26 and the newest with Go 1.27;
# GOTEL_FLOW_MATRIX=1: every build of the grpc-go matrix (17, ~1 min each)
VERSIONS = goapps.grpc_matrix() if os.environ.get("GOTEL_FLOW_MATRIX") == "1" else [
    ("v1.33", "go1.19"), ("v1.70.0", "go1.26"), ("v1.85.0", "go1.27")]


class Flow:
    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.traces = MemorySink()
        self.metrics = MemorySink()
        self.apps: list[goapps.RunningApp] = []

    async def start(self) -> None:
        cfg = Config.model_validate({"discovery": {"exe_paths": [str(self.binary)]}, "flush_interval": 0.2,
                                     "export_interval": 0.5, "stitch_window": 0.2})
        tel = Telemetry()
        ctx = Context(ComponentID("go_ebpf"), Kind.RECEIVER, logging.getLogger("go_ebpf"),
                      tel.component("go_ebpf", Kind.RECEIVER))
        self.r = factory.create(cfg, {Signal.TRACES: self.traces, Signal.METRICS: self.metrics}, ctx)
        await self.r.start()

    async def server(self, *args: str) -> goapps.RunningApp:
        app = await asyncio.to_thread(goapps.RunningApp, [str(self.binary), "flowserver", *args])
        self.apps.append(app)
        await until(lambda: app.pid in self.r.attached_pids, 30)  # a loaded machine: compiles are slow
        return app

    async def client(self, srv: goapps.RunningApp, *args: str, during: Any = None) -> tuple[int, list[dict[str, Any]]]:
        """A traced client process (registered before its exec); `during(pid)` runs while it is alive."""
        gate = Path(tempfile.mkdtemp(prefix="go_ebpf-flow-")) / "go"
        script = f'while [ ! -e {gate} ]; do sleep 0.002; done; exec "$0" "$@"'
        argv = ["sh", "-c", script, str(self.binary), "flow", "-target", f"127.0.0.1:{srv.ports['grpc']}", *args]
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.setdefault("app", goapps.RunningApp(argv)),
                             daemon=True)
        t.start()
        pid = await asyncio.to_thread(_find_pid, str(gate))
        self.r.trace_pid(pid, str(self.binary))
        gate.touch()
        await asyncio.to_thread(t.join, 60)
        app: goapps.RunningApp = box["app"]
        try:
            if during is not None:
                await during(app)
            assert await asyncio.to_thread(app.wait, 60) == 0, app.stderr()
            return app.pid, app.records()
        finally:
            app.stop()
            gate.unlink(missing_ok=True)
            gate.parent.rmdir()

    def last(self, name: str, pid: int) -> list[tuple[dict[str, Any], Any]]:
        """The newest data point of each series of `name` for one process."""
        seen: dict[tuple[Any, ...], tuple[dict[str, Any], Any]] = {}
        for res, a, p in self.metrics.points(name):
            if res.get("process.pid") == pid:
                seen[tuple(sorted(a.items()))] = (a, p)
        return list(seen.values())

    async def close(self) -> None:
        for a in self.apps:
            a.stop()
        await self.r.shutdown()


def _counter(f: Flow, name: str, pid: int, **want: str) -> int:
    return sum(p.as_int for a, p in f.last(name, pid) if all(a.get(k) == v for k, v in want.items()))


@pytest.mark.parametrize("version,toolchain", VERSIONS)
async def test_flow_control_and_stream_limits(version: str, toolchain: str) -> None:
    binary = await asyncio.to_thread(goapps.build, goapps.grpc_app(version), toolchain)
    f = Flow(binary)
    await f.start()
    try:
        srv = await f.server("-max-streams", "1")

        # ---- stream quota: 4 calls on a connection that allows 1 stream, each holding it 200 ms
        cpid, recs = await f.client(srv, "-n", "4", "-delay", "200ms", "quota")
        calls = [r for r in recs if "call" in r]
        assert len(calls) == 4 and all(c["ok"] for c in calls), recs
        truth = sorted((c["server_start_ns"] - c["start_ns"]) / 1e9 for c in calls)
        waited = [w for w in truth if w > 0.05]
        assert len(waited) == 3, truth  # the fixture did what it says

        def quota() -> list[tuple[dict[str, Any], Any]]:
            return f.last("gotel.grpc.client.stream_quota.wait", cpid)

        await until(lambda: sum(p.count for _, p in quota()) >= 3, 30)
        pts = quota()
        assert len(pts) == 1, pts
        a, p = pts[0]
        assert a["rpc.service"] == "gotelfix.Flow" and a["rpc.method"] == "Hold", a
        assert a["server.port"] == srv.ports["grpc"] and a["server.address"] == "127.0.0.1", a
        assert p.count == 3, (p, truth)
        # each wait ends when the stream is granted, a little before the handler starts: within 30 ms a call
        assert abs(p.sum - sum(waited)) < 0.03 * 3, (p.sum, waited)
        assert abs(p.max - max(waited)) < 0.03 and abs(p.min - min(waited)) < 0.03, (p.min, p.max, waited)
        # the span event on each waiting call's span, with the same wait
        await until(lambda: len([s for b in f.traces.batches for rs in b.peek().resource_spans
                                 for ss in rs.scope_spans for s in ss.spans if s.kind == CLIENT
                                 and attr_dict(rs.resource.attributes).get("process.pid") == cpid]) >= 5, 10)
        spans = [s for b in f.traces.batches for rs in b.peek().resource_spans for ss in rs.scope_spans
                 for s in ss.spans if attr_dict(rs.resource.attributes).get("process.pid") == cpid]
        evs = sorted(attr_dict(e.attributes)["gotel.grpc.stream_quota.wait"] for s in spans for e in s.events
                     if e.name == "gotel.grpc.stream_quota.wait")
        assert len(evs) == 3 and all(abs(x - y) < 0.03 for x, y in zip(evs, waited, strict=True)), (evs, waited)

        # ---- a slow reader: the server's sends wait for the stream's window
        await f.client(srv, "-count", "64", "-size", "32768", "-sleep", "1s", "flood")
        (flood,) = [r for r in srv.records() if r.get("event") == "flood"]
        blocked = [x for x in flood["send_s"] if x > 0.05]
        assert blocked and sum(blocked) > 0.8, flood  # the reader slept 1 s: the sends waited that long

        def fc() -> list[tuple[dict[str, Any], Any]]:
            return [(a, p) for a, p in f.last("gotel.grpc.flow_control.wait", srv.pid)
                    if a.get("gotel.grpc.side") == "server"]

        await until(lambda: sum(p.sum for _, p in fc()) >= sum(blocked) - 0.05, 15)
        pts = fc()
        assert {a["rpc.method"] for a, _ in pts} == {"Flood"}, pts
        total = sum(p.sum for _, p in pts)
        assert abs(total - sum(flood["send_s"])) < 0.1, (total, sum(flood["send_s"]))
        by_window = {a["gotel.grpc.flow_control.window"]: p.sum for a, p in pts}
        # the reader does not read: the stream's window is what runs out (grpc-go refreshes the connection's
        # window as data arrives, whatever the application reads)
        assert by_window.get("stream", 0) > 0.8 * total, by_window

        # ---- a peer that holds the connection's window: the server's sends wait for it
        _, rf = await f.client(srv, "-count", "64", "-size", "32768", "-sleep", "1s", "rawflood")
        assert any(r.get("rawflood_done") and r["bytes"] >= 64 * 32768 for r in rf), rf
        (opened,) = [r for r in rf if "conn_window_opened_s" in r]
        assert opened["bytes_before"] <= 65535, opened  # nothing passed the connection's window before it
        (cflood,) = [r for r in srv.records() if r.get("event") == "flood" and r["id"] == 2]
        cblocked = sum(cflood["send_s"])
        assert cblocked > 0.8, cflood  # the server's own log: its sends waited for the second

        def fc_delta() -> dict[str, float]:
            d: dict[str, float] = {}
            for a, p in fc():
                w = a["gotel.grpc.flow_control.window"]
                d[w] = d.get(w, 0.0) + p.sum
            return {w: x - by_window.get(w, 0.0) for w, x in d.items()}

        await until(lambda: sum(fc_delta().values()) >= cblocked - 0.05, 15)
        delta = fc_delta()
        assert abs(sum(delta.values()) - cblocked) < 0.1, (delta, cflood["send_s"])
        assert delta.get("connection", 0) > 0.8 * cblocked, delta

        # ---- refused streams and GOAWAY, from a raw HTTP/2 peer that logs every frame it gets
        _, raw = await f.client(srv, "-streams", "3", "-pings", "10", "-delay", "300ms", "raw")
        frames = [r for r in raw if "rst_stream" in r or "goaway" in r]
        refused = sum(1 for r in frames if r.get("code") == "REFUSED_STREAM")
        calm = sum(1 for r in frames if "goaway" in r and r["code"] == "ENHANCE_YOUR_CALM" and r["debug"] == "too_many_pings")
        assert refused == 2 and calm == 1, raw

        await until(lambda: _counter(f, "gotel.grpc.goaway", srv.pid, **{"gotel.grpc.direction": "sent"}) >= 1, 10)
        await asyncio.sleep(1.0)  # one more export
        assert _counter(f, "gotel.grpc.streams.refused", srv.pid, **{"gotel.grpc.direction": "sent"}) == refused
        assert _counter(f, "gotel.grpc.stream.resets", srv.pid, **{"gotel.grpc.direction": "sent",
                                                                   "gotel.grpc.http2.error_code": "REFUSED_STREAM"}) == refused
        assert _counter(f, "gotel.grpc.calls.dropped", srv.pid, **{"gotel.grpc.drop.reason": "refused_stream"}) == refused
        assert _counter(f, "gotel.grpc.goaway", srv.pid, **{"gotel.grpc.direction": "sent",
                                                           "gotel.grpc.http2.error_code": "ENHANCE_YOUR_CALM",
                                                           "gotel.grpc.goaway.debug": "too_many_pings"}) == calm
        sent_goaways = sum(p.as_int for a, p in f.last("gotel.grpc.goaway", srv.pid) if a["gotel.grpc.direction"] == "sent")
        assert sent_goaways == sum(1 for r in frames if "goaway" in r), (sent_goaways, frames)

        # ---- calls a limit before any handler refused (the server's tap): dropped before headers reached one
        no_error = _counter(f, "gotel.grpc.stream.resets", srv.pid, **{"gotel.grpc.direction": "sent",
                                                                      "gotel.grpc.http2.error_code": "NO_ERROR"})
        _, lim = await f.client(srv, "-n", "5", "limited")
        assert [r["code"] for r in lim if "limited" in r] == ["ResourceExhausted" if version != "v1.33"
                                                              else "Unavailable"] * 5, lim
        srecs = srv.records()
        tapped = sum(1 for r in srecs if r.get("event") == "tap_refused")
        assert tapped >= 5 and not any(r.get("event") == "limited_handler" for r in srecs), srecs

        def dropped(reason: str) -> int:
            return _counter(f, "gotel.grpc.calls.dropped", srv.pid, **{"gotel.grpc.drop.reason": reason,
                                                                       "gotel.grpc.side": "server"})

        if version == "v1.33":  # its tap refuses the stream (REFUSED_STREAM, retried once by the client)
            await until(lambda: dropped("refused_stream") >= refused + tapped, 10)
            await asyncio.sleep(1.0)
            assert dropped("refused_stream") == refused + tapped and dropped("reset_before_headers") == 0
        else:  # answered with the tap's status and reset (RST_STREAM NO_ERROR) before a handler saw it
            assert tapped == 5, srecs
            await until(lambda: dropped("reset_before_headers") >= tapped, 10)
            await asyncio.sleep(1.0)
            assert dropped("reset_before_headers") == tapped
            assert dropped("refused_stream") == refused
            assert _counter(f, "gotel.grpc.stream.resets", srv.pid,
                            **{"gotel.grpc.direction": "sent", "gotel.grpc.http2.error_code": "NO_ERROR"}) \
                == no_error + tapped

        # ---- a stream left open: its age while open, and at its end
        ages: list[float] = []
        sages: list[float] = []

        async def watch(app: goapps.RunningApp) -> None:
            rec = await asyncio.to_thread(app.wait_for, lambda r: "open_start_ns" in r, 20)
            await asyncio.sleep(2.0)
            want = (time.time_ns() - rec["open_start_ns"]) / 1e9
            for pid, out in ((app.pid, ages), (srv.pid, sages)):
                for a, p in f.last("gotel.grpc.stream.age", pid):
                    if a.get("gotel.grpc.stream.state") == "open" and a.get("rpc.method") == "Open":
                        out.append(p.max)
            assert ages and abs(ages[-1] - want) < 0.8, (ages, want)
            assert sages and abs(sages[-1] - want) < 0.8, (sages, want)  # the server's side of it

        opid, orecs = await f.client(srv, "-hold", "3s", "open", during=watch)
        (o1,) = [r for r in orecs if "open_start_ns" in r]
        (o2,) = [r for r in orecs if "open_end_ns" in r]
        held = (o2["open_end_ns"] - o1["open_start_ns"]) / 1e9

        def closed() -> list[tuple[dict[str, Any], Any]]:
            return [(a, p) for a, p in f.last("gotel.grpc.stream.age", opid)
                    if a.get("gotel.grpc.stream.state") == "closed" and a.get("rpc.method") == "Open"]

        await until(lambda: closed(), 10)
        (a, p), = closed()
        assert p.count == 1 and abs(p.sum - held) < 0.1, (p, held)

        def sclosed() -> list[tuple[dict[str, Any], Any]]:
            return [(a, p) for a, p in f.last("gotel.grpc.stream.age", srv.pid)
                    if a.get("gotel.grpc.stream.state") == "closed" and a.get("rpc.method") == "Open"]

        await until(lambda: sclosed(), 10)
        (a, p), = sclosed()
        assert a["gotel.grpc.side"] == "server" and p.count == 1 and abs(p.sum - held) < 0.15, (p, held)
        # unary calls (Hold, Limited) and the server-streaming Flood: only Flood has an age besides Open
        assert {a["rpc.method"] for a, _ in f.last("gotel.grpc.stream.age", srv.pid)
                if a["gotel.grpc.stream.state"] == "closed"} == {"Flood", "Open"}

        # ---- a graceful drain: GOAWAY sent on both connections, received by the gRPC client
        drain = await f.server()
        raw_task = asyncio.create_task(f.client(drain, "-streams", "1", "-delay", "4s", "raw"))
        await asyncio.to_thread(drain.wait_for, lambda r: r.get("event") == "hold", 30)  # the raw peer is in

        async def drain_now(app: goapps.RunningApp) -> None:
            await asyncio.to_thread(app.wait_for, lambda r: "open_start_ns" in r, 20)
            os.kill(drain.pid, signal.SIGUSR1)

        gpid, _ = await f.client(drain, "-hold", "2s", "open", during=drain_now)
        _, rawd = await raw_task
        k = sum(1 for r in rawd if "goaway" in r and "code" in r)
        assert k >= 1 and any(r.get("event") == "drained" for r in drain.records(timeout=5)), rawd

        def goaways(pid: int, d: str) -> int:
            return sum(p.as_int for a, p in f.last("gotel.grpc.goaway", pid) if a["gotel.grpc.direction"] == d)

        await until(lambda: goaways(drain.pid, "sent") >= 2 * k and goaways(gpid, "received") >= k, 10)
        await asyncio.sleep(1.0)
        assert goaways(drain.pid, "sent") == 2 * k and goaways(gpid, "received") == k
        assert {a["gotel.grpc.http2.error_code"] for a, _ in f.last("gotel.grpc.goaway", gpid)} == {"NO_ERROR"}
    finally:
        await f.close()
