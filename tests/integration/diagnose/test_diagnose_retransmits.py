"""tcp_retransmits in `gotel diagnose` (net receiver, eBPF): a client in a network namespace whose loopback
drops 30% of its data segments, against the namespace's own TCP RetransSegs counter."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.runtime.test_net_receiver import PORT, _snmp, _spawn, lossy_netns  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Four connections, each request/response until killed: a lost request is retransmitted alone. Each loss
# stalls its connection for an RTO (200 ms, doubling when the retransmission is lost too), so one
# connection can see as few as 2 retransmits in 5 s; four make the rate the rule reads steady.
CONNS = 4
SERVER4 = f"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT})); s.listen({CONNS}); print("ready", flush=True)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while c.recv(4096):
        c.send(b"k")
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""
CLIENT = f"""
import socket, threading
cs = [socket.create_connection(("127.0.0.1", {PORT})) for _ in range({CONNS})]
def loop(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        c.send(b"x" * 100)
        c.recv(16)
print("connected", flush=True)
for c in cs[1:]:
    threading.Thread(target=loop, args=(c,), daemon=True).start()
loop(cs[0])
"""


def test_retransmits_per_peer(lossy_netns: str) -> None:  # noqa: F811 - the imported fixture
    server = _spawn(lossy_netns, SERVER4)
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = _spawn(lossy_netns, CLIENT)
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        before = _snmp(lossy_netns)
        out = subprocess.run([sys.executable, "-m", "gotel", "diagnose", "--pid", str(client.pid), "--duration", "5s",
                              "--json", "--ebpf", "on"], capture_output=True, text=True, timeout=180)
        after = _snmp(lossy_netns)
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()
    assert out.returncode == 0, out.stderr
    rep: dict[str, Any] = json.loads(out.stdout)
    assert "tcp_retransmits" not in {r["rule"] for r in rep["not_run"]}, rep["not_run"]
    f = next((f for f in rep["findings"] if f["rule"] == "tcp_retransmits"), None)
    assert f is not None, rep
    ev = f["evidence"]
    assert ev["peer"] == f"127.0.0.1:{PORT}"
    kernel = after["RetransSegs"] - before["RetransSegs"]  # the namespace's own count, over a wider span
    assert 0 < ev["retransmits"] <= kernel, (ev, kernel)
    assert ev["per_second"] == pytest.approx(ev["retransmits"] / ev["window_s"], rel=0.01)
    assert f["severity"] == ("critical" if ev["per_second"] >= 20 else "warning")
