"""Connect outcomes and a connection leak of a Go program (net.Dialer, as Go services dial), against the
counts the program itself reports, with both toolchains: the net and process receivers side by side."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gotel.pdata.batch import Signal, attr_dict
from gotel.receivers.net import Config as NetConfig
from gotel.receivers.net import NetReceiver
from gotel.receivers.process import Config as ProcConfig
from gotel.receivers.process import ProcessReceiver
from tests.helpers.memsink import make_ctx, sinks

pytestmark = [pytest.mark.root, pytest.mark.slow]
TOOLCHAINS = ["go1.27", "go1.19"]


@pytest.fixture
def peers() -> Iterator[dict[str, int]]:
    """Three local ports: one that holds every connection open, one bound but not listening (a SYN to it
    gets a RST), one listening with a full accept queue (backlog 0, one connection already queued: the
    kernel drops further SYNs, so a dial waits until its own timeout)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        holder.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(holder.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    try:
        yield {"holder": holder.getsockname()[1], "closed": closed.getsockname()[1], "full": full.getsockname()[1]}
    finally:
        stop.set()
        t.join()
        for s in (holder, closed, full, filler, *held):
            s.close()


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
async def test_go_dials_and_connection_leak(goapp: Any, peers: dict[str, int], toolchain: str) -> None:
    app = goapp("runtime", toolchain=toolchain)
    ns = sinks(Signal.METRICS)
    net = NetReceiver(NetConfig(discovery={"pids": [app.pid]}, collection_interval=3600), ns, make_ctx("net"))
    ps = sinks(Signal.METRICS, Signal.LOGS)
    proc = ProcessReceiver(ProcConfig(discovery={"pids": [app.pid]}, cgroups=False,
                                      fd_leak={"window": 3600, "min_growth": 15}), ps, make_ctx("process"))
    await net.start()
    try:
        assert app.pid in net.targets
        proc.setup()
        await proc.push(proc.collect())  # baseline
        refused = app.get_json(f"/dial?addr=127.0.0.1:{peers['closed']}&n=3")
        timeout = app.get_json(f"/dial?addr=127.0.0.1:{peers['full']}&n=2&timeout_ms=300")
        assert (refused["refused"], timeout["timeout"]) == (3, 2), (refused, timeout)
        kept = 0
        for _ in range(3):  # a connection leak: 10 connections kept open per round
            got = app.get_json(f"/dial?addr=127.0.0.1:{peers['holder']}&n=10&keep=1")
            assert got["ok"] == 10
            kept = got["held"]
            await proc.push(proc.collect())
        assert kept == 30
        await asyncio.sleep(1.1)  # an abandoned attempt is known as such after a second without an error
        await net.collect_now()
        by_error: dict[str, tuple[int, float]] = {}
        for res, a, p in ns[Signal.METRICS].points("process.network.tcp.connect.duration"):
            if res["process.pid"] != app.pid or a["network.peer.address"] != "127.0.0.1":
                continue
            port = a["network.peer.port"]
            if port not in peers.values():
                continue  # nothing else, but be exact about what is compared
            e = a.get("error.type", "ok")
            n, total = by_error.get(e, (0, 0.0))
            by_error[e] = (n + p.count, total + p.sum)
        # Go closes the socket of a dial that timed out while the SYN was unanswered: `closed`
        assert {e: n for e, (n, _) in by_error.items()} == {"ECONNREFUSED": 3, "closed": 2, "ok": 30}, by_error
        n, total = by_error["closed"]
        assert 0.25 < total / n < 1.0  # the dialer's 300 ms
        # the leak: one finding for established TCP sockets, its growth what the program holds
        findings = [attr_dict(r.attributes) for _, r in ps[Signal.LOGS].log_records()]
        est = [f for f in findings if f.get("network.connection.state") == "established"]
        assert len(est) == 1, findings
        assert est[0]["gotel.fd.growth"] == 20 and est[0]["gotel.fd.kind"] == "socket"  # at round 2 (>= 15)
        growth = {(a["gotel.fd.kind"], a.get("network.connection.state")): p.as_int
                  for res, a, p in ps[Signal.METRICS].points("process.unix.file_descriptor.growth")}
        assert growth[("socket", "established")] == kept
        # the Go runtime's own fds (epoll, its netpoll wake-up) did not move
        assert all(g == 0 for (kind, _), g in growth.items() if kind in ("anon", "eventfd", "pipe")), growth
    finally:
        await net.shutdown()
