"""fd leak findings against a program that leaks known kinds and counts and logs what it leaked."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gotel.pdata.batch import Signal
from gotel.receivers.process import Config, ProcessReceiver
from tests.helpers.memsink import make_ctx, sinks

# Peers on 127.0.0.1, ephemeral ports: one keeps every connection open, one closes each at once (the
# leaker's side then sits in CLOSE_WAIT until it closes, which it never does).
PEERS = r"""
import socket, threading
def serve(close):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(512)
    held = []
    def loop():
        while True:
            c, _ = s.accept()
            c.close() if close else held.append(c)
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]
print(serve(False), serve(True), flush=True)
input()
"""

# Reads "KIND N" lines; leaks N of KIND and logs the running total it holds of each ("pool" fds are
# unix socketpairs opened and released in turn: growth that comes back).
LEAKER = r"""
import os, socket, sys, tempfile
hold, pool = [], []
total = {"file": 0, "pipe": 0, "eventfd": 0, "established": 0, "close_wait": 0}
keep, close = (int(x) for x in sys.argv[1:3])
d = tempfile.mkdtemp()
print("ready", flush=True)
for line in sys.stdin:
    kind, n = line.split(); n = int(n)
    for i in range(n):
        if kind == "file":
            hold.append(open(os.path.join(d, f"f{len(hold)}"), "w"))
        elif kind == "pipe":
            hold.extend(os.pipe())
        elif kind == "eventfd":
            hold.append(os.eventfd(0))
        elif kind == "established":
            hold.append(socket.create_connection(("127.0.0.1", keep)))
        elif kind == "close_wait":
            c = socket.create_connection(("127.0.0.1", close))
            assert c.recv(1) == b""  # the peer's FIN arrived: this side is in CLOSE_WAIT now
            hold.append(c)
        elif kind == "pool":
            pool.extend(socket.socketpair())
        elif kind == "unpool":
            pool.pop().close(); pool.pop().close()
    if kind in total:
        total[kind] += n * (2 if kind == "pipe" else 1)
    print("leaked", " ".join(f"{k}={v}" for k, v in total.items()), f"pool={len(pool)}", flush=True)
"""

KEY = {
    "file": ("file", None, None), "pipe": ("pipe", None, None), "eventfd": ("eventfd", None, None),
    "established": ("socket", "tcp", "established"), "close_wait": ("socket", "tcp", "close_wait"),
}


@pytest.fixture
def leaker() -> Iterator[tuple[subprocess.Popen[str], Any]]:
    peers = subprocess.Popen([sys.executable, "-c", PEERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc = None
    try:
        assert peers.stdout is not None
        keep, close = peers.stdout.readline().split()
        proc = subprocess.Popen([sys.executable, "-c", LEAKER, keep, close], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        def step(*cmds: tuple[str, int]) -> dict[str, int]:
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            for kind, n in cmds:
                proc.stdin.write(f"{kind} {n}\n")
                proc.stdin.flush()
                last = proc.stdout.readline().split()
            assert last[0] == "leaked"
            return {k: int(v) for k, v in (x.split("=") for x in last[1:])}

        yield proc, step
    finally:
        for p in (proc, peers):
            if p is not None:
                p.kill()
                p.wait()


def _attrs_key(a: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (a["gotel.fd.kind"], a.get("network.transport"), a.get("network.connection.state"))


async def test_fd_leak_findings_name_process_kind_and_count(leaker: Any) -> None:
    proc, step = leaker
    s = sinks(Signal.METRICS, Signal.LOGS)
    cfg = Config(discovery={"pids": [proc.pid], "go_only": False}, cgroups=False,
                 fd_leak={"window": 3600, "min_growth": 25})
    rec = ProcessReceiver(cfg, s, make_ctx("process"))
    rec.setup()
    await rec.push(rec.collect())  # baseline
    base = {_attrs_key(a): p.as_int for _, a, p in s[Signal.METRICS].points("process.unix.file_descriptor.count")}
    truth: list[dict[str, int]] = []
    findings: list[tuple[int, dict[str, Any], str]] = []
    # three rounds of 10 of each kind; the socketpair pool grows by 30 pairs, shrinks, grows again
    for r, pool in enumerate(("pool", "unpool", "pool")):
        s[Signal.METRICS].clear()
        s[Signal.LOGS].clear()
        truth.append(step(*((k, 10) for k in KEY), (pool, 30)))
        await rec.push(rec.collect())
        findings += [(r, dict(_la(rec_)), rec_.body.string_value) for _, rec_ in s[Signal.LOGS].log_records()]
    counts = {_attrs_key(a): p.as_int for res, a, p in s[Signal.METRICS].points("process.unix.file_descriptor.count")
              if res["process.pid"] == proc.pid}
    for kind, key in KEY.items():  # every leaked fd counted, against the leaker's own log
        assert counts[key] - base.get(key, 0) == truth[-1][kind], (kind, counts, base)
    assert truth[-1]["pool"] == 60  # 30 pairs held at the end: growth, but not one that stayed
    # one finding per leaking kind, at the first reading where its growth reached 25, with that growth
    got = {_attrs_key(a): (r, a["gotel.fd.growth"]) for r, a, _ in findings}
    want = {}
    for kind, key in KEY.items():
        r = next(i for i, t in enumerate(truth) if t[kind] >= 25)
        want[key] = (r, truth[r][kind])
    assert got == want, findings
    assert len(findings) == len(KEY)
    for _, a, body in findings:
        assert a["gotel.fd.count"] >= a["gotel.fd.growth"]
        assert body.startswith("fd leak: python") and f"(pid {proc.pid})" in body and f"gained {a['gotel.fd.growth']}" in body
    growth = {_attrs_key(a): p.as_double if p.HasField("as_double") else p.as_int
              for res, a, p in s[Signal.METRICS].points("process.unix.file_descriptor.growth")}
    for kind, key in KEY.items():
        assert growth[key] == truth[-1][kind]
    assert growth[("socket", "unix", None)] == 60  # reported as growth, never as a leak (it fell on the way)


def _la(rec: Any) -> dict[str, Any]:
    from gotel.pdata.batch import attr_dict

    return attr_dict(rec.attributes)
