"""One trace across HTTP hops (issue 22): go_ebpf joins a net/http server span to the traced client span
that sent the request, by the connection and the request's order on it (HTTP/1.1) or its stream id
(HTTP/2), plain and TLS, and continues an incoming W3C traceparent/tracestate. Real BPF, the httpapp
fixture on Go 1.19, the machine's Go 1.26 and Go 1.27, exported to a real OTLP server.

The truth is the programs' own logs: each client request asks for a status no other request in its round
asks for (`-vary-status`), so the client span and the server span of one request are paired by the status
both programs report, independently of anything gotel joins on."""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gotel.pdata.batch import attr_dict
from tests.helpers import goapps
from tests.integration.go_ebpf.test_grpc import CLIENT, SERVER, Env, _find_pid, until

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=goapps.TOOLCHAINS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    e = Env(request.param, stripped=False)
    e.binary = goapps.build("httpapp", request.param)
    await e.start()
    try:
        yield e
    finally:
        await e.close()


async def server(env: Env, *args: str, app_name: str = "httpapp") -> goapps.RunningApp:
    app = await asyncio.to_thread(goapps.start, app_name, "server", "-log", *args, toolchain=env.toolchain)
    env.apps.append(app)
    await until(lambda: app.pid in env.r.attached_pids, 30)
    return app


async def client(env: Env, url: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Runs `httpapp client`, registered with the receiver before it execs (its first request comes
    milliseconds after start); returns (pid, its JSON lines)."""
    gate = Path(tempfile.mkdtemp(prefix="go_ebpf-")) / "go"
    script = f'while [ ! -e {gate} ]; do sleep 0.002; done; exec "$0" "$@"'
    argv = ["sh", "-c", script, str(env.binary), "client", "-url", url, *args]
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("app", goapps.RunningApp(argv)), daemon=True)
    t.start()
    pid = await asyncio.to_thread(_find_pid, str(gate))
    env.r.trace_pid(pid, str(env.binary))
    gate.touch()
    await asyncio.to_thread(t.join, 60)
    app: goapps.RunningApp = box["app"]
    try:
        assert await asyncio.to_thread(app.wait, 120) == 0, app.stderr()
        return app.pid, app.records()
    finally:
        app.stop()
        gate.unlink(missing_ok=True)
        gate.parent.rmdir()


def by_status(env: Env, pid: int, kind: int, port: int) -> dict[int, Any]:
    """Spans by status, on the fixture's HTTP port only (other programs on this machine may pull its pprof
    endpoint, which is served by the same net/http)."""
    out: dict[int, Any] = {}
    for _, s in env.spans(pid, kind):
        a = attr_dict(s.attributes)
        if a.get("server.port") != port:
            continue
        st = a["http.response.status_code"]
        assert st not in out, f"two spans with status {st}"
        out[st] = s
    return out


async def one_round(env: Env, srv: goapps.RunningApp, scheme: str, *args: str, n: int = 60,
                    cafile: str = "") -> list[dict[str, Any]]:
    """n requests from a traced client process; every server span must be the child of its client span."""
    env.sink.received.traces.clear()
    handled_before = len([r for r in srv.records() if r.get("event") == "handled"])
    url = f"{scheme}://127.0.0.1:{srv.ports['http']}/users/7"
    ca = ("-ca", cafile) if cafile else ()
    pid, recs = await client(env, url, "-n", str(n), "-concurrency", "3", "-vary-status", "-quiet=false", *ca, *args)
    calls = [r for r in recs if "i" in r]
    assert len(calls) == n and all("error" not in r for r in calls), calls[:3]
    statuses = {r["status"] for r in calls}
    assert len(statuses) == n
    await until(lambda: len([r for r in srv.records() if r.get("event") == "handled"]) == handled_before + n, 10)
    handled = [r for r in srv.records() if r.get("event") == "handled"][handled_before:]
    assert {r["status"] for r in handled} == statuses  # the server's own log: the same n requests
    await until(lambda: len(by_status(env, srv.pid, SERVER, srv.ports["http"])) >= n
                and len(env.spans(pid, CLIENT)) >= n, 15)
    await asyncio.sleep(0.5)  # anything extra would arrive now
    port = srv.ports["http"]
    servers, clients = by_status(env, srv.pid, SERVER, port), by_status(env, pid, CLIENT, port)
    assert set(servers) == statuses and set(clients) == statuses  # exact counts, each status once
    wrong = [(st, servers[st].parent_span_id.hex(), clients[st].span_id.hex()) for st in statuses
             if servers[st].parent_span_id != clients[st].span_id or servers[st].trace_id != clients[st].trace_id]
    if wrong:
        for st, _, _ in wrong[:3]:
            print("WRONG", st, attr_dict(servers[st].attributes), servers[st].start_time_unix_nano,
                  servers[st].end_time_unix_nano, clients[st].start_time_unix_nano, clients[st].end_time_unix_nano,
                  [r for r in calls if r["status"] == st])
    assert not wrong, f"{args}: {len(wrong)} of {n} server spans not the child of their client span: {wrong[:5]}"
    assert len({s.trace_id for s in servers.values()}) == n  # one trace per request
    return calls


async def test_http1_two_processes_fresh_and_reused(env: Env) -> None:
    srv = await server(env)
    calls = await one_round(env, srv, "http", "-fresh")
    assert not any(r["reused"] for r in calls)
    calls = await one_round(env, srv, "http")
    assert sum(r["reused"] for r in calls) >= len(calls) - 3  # keep-alive: 3 callers, 3 connections at most
    assert {r["proto"] for r in calls} == {"HTTP/1.1"}


async def test_incoming_traceparent_and_tracestate(env: Env) -> None:
    """An SDK-instrumented caller (here: Python sending the W3C headers) and the traced Go server form one
    trace, on every Go version (http.Header's map layout changed in Go 1.24)."""
    srv = await server(env)
    tp_trace, tp_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    ts = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    # extra headers, so that the traceparent is one field among many (more than one map group/bucket)
    extra = {f"X-Filler-{i}": "v" * i for i in range(12)}
    for n_extra in (0, 4, 12):
        env.sink.received.traces.clear()
        req = urllib.request.Request(f"http://127.0.0.1:{srv.ports['http']}/echo?status={210 + n_extra}",
                                     headers={"traceparent": f"00-{tp_trace}-{tp_span}-01", "tracestate": ts,
                                              **dict(list(extra.items())[:n_extra])})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 210 + n_extra
        handled = srv.wait_for(lambda r, st=210 + n_extra: r.get("event") == "handled" and r["status"] == st)
        assert handled["traceparent"] == f"00-{tp_trace}-{tp_span}-01" and handled["tracestate"] == ts
        await until(lambda: by_status(env, srv.pid, SERVER, srv.ports["http"]), 10)
        (s,) = by_status(env, srv.pid, SERVER, srv.ports["http"]).values()
        assert s.trace_id.hex() == tp_trace and s.parent_span_id.hex() == tp_span, n_extra
        assert s.trace_state == ts
    # a traced Go caller sending a traceparent of its own (as an SDK-instrumented Go program does): its
    # client span continues it, and the server span is that client span's child
    env.sink.received.traces.clear()
    pid, _ = await client(env, f"http://127.0.0.1:{srv.ports['http']}/echo?status=202",
                          "-traceparent", f"00-{tp_trace}-{tp_span}-01")
    await until(lambda: by_status(env, srv.pid, SERVER, srv.ports["http"]) and env.spans(pid, CLIENT), 10)
    (s,) = by_status(env, srv.pid, SERVER, srv.ports["http"]).values()
    (_, c), = env.spans(pid, CLIENT)
    assert c.trace_id.hex() == tp_trace and c.parent_span_id.hex() == tp_span
    assert s.trace_id.hex() == tp_trace and s.parent_span_id == c.span_id


async def test_tls_http1_and_http2_two_processes(env: Env, tmp_path: Path) -> None:
    cert = str(tmp_path / "cert.pem")
    srv = await server(env, "-tls", "-cert-out", cert)
    calls = await one_round(env, srv, "https", "-fresh", cafile=cert)
    assert {r["proto"] for r in calls} == {"HTTP/1.1"} and not any(r["reused"] for r in calls)
    calls = await one_round(env, srv, "https", cafile=cert)
    assert {r["proto"] for r in calls} == {"HTTP/1.1"} and sum(r["reused"] for r in calls) >= len(calls) - 3
    # HTTP/2: requests multiplexed on one connection, told apart by their stream ids
    calls = await one_round(env, srv, "https", "-h2", cafile=cert)
    assert {r["proto"] for r in calls} == {"HTTP/2.0"} and sum(r["reused"] for r in calls) >= len(calls) - 3
    calls = await one_round(env, srv, "https", "-h2", "-fresh", cafile=cert)
    assert {r["proto"] for r in calls} == {"HTTP/2.0"}


@pytest.mark.parametrize("mode", ["http1", "http1-fresh", "tls-http1", "tls-http2"])
async def test_one_process_client_and_server(env: Env, mode: str, tmp_path: Path) -> None:
    """One traced process serves a request and, while serving it, calls itself (from the handler's goroutine
    or one it starts): SDK caller (traceparent) -> outer server span -> client span -> served downstream
    request, one trace with the right parents, for every request."""
    cert = str(tmp_path / "cert.pem")
    tls_on = mode.startswith("tls")
    args = [*(("-tls", "-cert-out", cert, "-ca", cert) if tls_on else ()),
            *(("-h2",) if mode == "tls-http2" else ()), *(("-fresh",) if mode.endswith("fresh") else ())]
    srv = await server(env, *args)
    scheme = "https" if tls_on else "http"
    ssl_ctx = ssl.create_default_context(cafile=cert) if tls_on else None
    base = f"{scheme}://127.0.0.1:{srv.ports['http']}"
    tp_trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    n = 24

    def call(i: int) -> int:
        down = f"{base}/users/{i}?status={400 + i}"
        url = f"{base}/echo?status={210 + i}&downstream={urllib.parse.quote(down, safe='')}" + (
            "&downstream_go=1" if i % 2 else "")
        req = urllib.request.Request(url, headers={"traceparent": f"00-{tp_trace}-{i + 1:016x}-01"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=ssl_ctx) as r:
                body = json.loads(r.read())
                assert body["downstream"]["status"] == 400 + i, body
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    env.sink.received.traces.clear()
    for i in range(n):
        assert await asyncio.to_thread(call, i) == 210 + i
    await until(lambda: len([r for r in srv.records() if r.get("event") == "handled"]) >= 2 * n, 10)
    handled = [r for r in srv.records() if r.get("event") == "handled"]
    assert len(handled) == 2 * n
    assert {r["proto"] for r in handled if r["status"] >= 400} == {"HTTP/2.0" if mode == "tls-http2" else "HTTP/1.1"}
    await until(lambda: len(by_status(env, srv.pid, SERVER, srv.ports["http"])) >= 2 * n
                and len(env.spans(srv.pid, CLIENT)) >= n, 15)
    await asyncio.sleep(0.5)
    port = srv.ports["http"]
    servers, clients = by_status(env, srv.pid, SERVER, port), by_status(env, srv.pid, CLIENT, port)
    assert len(servers) == 2 * n and len(clients) == n, (sorted(servers), sorted(clients))
    for i in range(n):
        outer, c, inner = servers[210 + i], clients[400 + i], servers[400 + i]
        assert outer.trace_id.hex() == tp_trace and outer.parent_span_id.hex() == f"{i + 1:016x}"
        assert c.trace_id == outer.trace_id and c.parent_span_id == outer.span_id, (mode, i)
        assert inner.trace_id == outer.trace_id and inner.parent_span_id == c.span_id, (mode, i)


async def test_stripped_binaries_are_not_joined_by_guess() -> None:
    """Without DWARF no connection, order or header can be read: every request still gives both spans, and
    none is joined (nothing is guessed); the traceparent is not read either."""
    env = Env("go1.27", stripped=True)
    env.binary = goapps.build("httpapp", "go1.27", stripped=True)
    await env.start()
    try:
        app = await asyncio.to_thread(goapps.start, "httpapp", "server", "-log", toolchain="go1.27", stripped=True)
        env.apps.append(app)
        await until(lambda: app.pid in env.r.attached_pids, 30)
        n = 20
        pid, recs = await client(env, f"http://127.0.0.1:{app.ports['http']}/echo", "-n", str(n),
                                 "-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        assert len([r for r in recs if "i" in r]) == n
        # stripped: no server.port attribute to filter on; the client's spans are this run's only
        await until(lambda: len(env.spans(pid, CLIENT)) >= n and len(env.spans(app.pid, SERVER)) >= n, 15)
        await asyncio.sleep(0.5)
        assert len(env.spans(pid, CLIENT)) == n
        assert not any(s.parent_span_id for _, s in env.spans(app.pid, SERVER))
        assert len({s.trace_id for _, s in env.spans(app.pid, SERVER)}) == len(env.spans(app.pid, SERVER))
    finally:
        await env.close()


# ---- HTTP/2 beyond net/http's bundled TLS path: unencrypted HTTP/2 (Go >= 1.24), golang.org/x/net/http2 used
# directly (xnetapp: httpapp's sources in module mode with x/net pinned), requests copied with a new Header

async def _env(toolchain: str, app: str) -> Env:
    e = Env(toolchain, stripped=False)
    e.binary = goapps.build(app, toolchain)
    await e.start()
    return e


@pytest.mark.parametrize("toolchain", ["go1.26", "go1.27"])  # Go 1.19 has no unencrypted HTTP/2 of its own
async def test_unencrypted_http2_of_net_http(toolchain: str) -> None:
    env = await _env(toolchain, "httpapp")
    try:
        srv = await server(env, "-mode", "h2c")
        for extra in ((), ("-fresh",), ("-clone",)):
            calls = await one_round(env, srv, "http", "-mode", "h2c", *extra)
            assert {r["proto"] for r in calls} == {"HTTP/2.0"}, extra
            if not extra:
                assert sum(r["reused"] for r in calls) >= len(calls) - 3
    finally:
        await env.close()


async def test_copied_header_map_http2(env: Env, tmp_path: Path) -> None:
    """A client middleware that hands the transport req.Clone() with a cloned Header (a new map): every
    HTTP/2 request still joins, and a traceparent the caller sent is still continued through it."""
    cert = str(tmp_path / "cert.pem")
    srv = await server(env, "-tls", "-cert-out", cert)
    calls = await one_round(env, srv, "https", "-h2", "-clone", cafile=cert)
    assert {r["proto"] for r in calls} == {"HTTP/2.0"}
    tp_trace, tp_span = "6bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env.sink.received.traces.clear()
    pid, _ = await client(env, f"https://127.0.0.1:{srv.ports['http']}/echo?status=290", "-h2", "-clone",
                          "-ca", cert, "-traceparent", f"00-{tp_trace}-{tp_span}-01")
    handled = srv.wait_for(lambda r: r.get("event") == "handled" and r["status"] == 290)
    assert handled["traceparent"] == f"00-{tp_trace}-{tp_span}-01" and handled["proto"] == "HTTP/2.0"
    await until(lambda: by_status(env, srv.pid, SERVER, srv.ports["http"]) and env.spans(pid, CLIENT), 10)
    (s,) = by_status(env, srv.pid, SERVER, srv.ports["http"]).values()
    (_, c), = env.spans(pid, CLIENT)
    assert c.trace_id.hex() == tp_trace and c.parent_span_id.hex() == tp_span
    assert s.trace_id.hex() == tp_trace and s.parent_span_id == c.span_id


# x/net v0.63 (xnetapp, module mode) needs Go >= 1.26 (its go.mod): Go 1.19 builds the same sources in GOPATH
# mode against Debian's x/net 0.7.0 (xnetgopath). On Go 1.27 x/net v0.63's http2 is a wrapper around net/http's
# own HTTP/2 (its go1.27 build files); on Go 1.26 and 1.19 it is x/net's own code.
@pytest.mark.parametrize(("toolchain", "app"), [("go1.19", "xnetgopath"), ("go1.26", "xnetapp"), ("go1.27", "xnetapp")])
async def test_x_net_http2_servers_and_clients(toolchain: str, app: str, tmp_path: Path) -> None:
    env = await _env(toolchain, app)
    try:
        cert = str(tmp_path / "cert.pem")
        # http2.ConfigureServer over TLS: x/net's client, then net/http's
        srv = await server(env, "-tls", "-cert-out", cert, "-mode", "xnet-tls", app_name=app)
        for extra in (("-mode", "xnet"), ("-h2",), ("-mode", "xnet", "-clone")):
            calls = await one_round(env, srv, "https", *extra, cafile=cert)
            assert {r["proto"] for r in calls} == {"HTTP/2.0"}, extra
        # h2c.NewHandler (prior knowledge): x/net's client, then net/http's unencrypted HTTP/2 (Go >= 1.24)
        srv = await server(env, "-mode", "xnet-h2c", app_name=app)
        for extra in (("-mode", "xnet"), ("-mode", "h2c"))[: 1 if toolchain == "go1.19" else 2]:
            calls = await one_round(env, srv, "http", *extra)
            assert {r["proto"] for r in calls} == {"HTTP/2.0"}, extra
        # x/net's client against net/http's own TLS server
        srv = await server(env, "-tls", "-cert-out", cert, app_name=app)
        calls = await one_round(env, srv, "https", "-mode", "xnet", cafile=cert)
        assert {r["proto"] for r in calls} == {"HTTP/2.0"}
    finally:
        await env.close()


async def test_x_net_losses_are_named_per_binary() -> None:
    """What x/net's HTTP/2 cannot give is named for the binary that lacks it (as every DWARF loss is), and
    only there: a full build loses nothing of it, a stripped one says what, a program without x/net nothing."""
    from gotel.golang import analyze
    from gotel.receivers.go_ebpf.layout import layout_for

    def xnet_losses(app: str, stripped: bool) -> set[str]:
        b = goapps.build(app, "go1.26", stripped=stripped)
        return {m for m in layout_for(analyze(str(b))).missing if "x/net" in m or "h2c" in m}

    assert xnet_losses("xnetapp", False) == set()
    assert xnet_losses("xnetapp", True) == {"HTTP/2 server, x/net (stitching)", "HTTP/2 client, x/net (stitching)",
                                            "http.response.status_code (HTTP/2 server, x/net)"}
    assert xnet_losses("httpapp", True) == set()
