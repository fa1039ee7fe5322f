"""The net receiver's resets, connect failures, keepalives and connection ends, against programs that
cause each a known number of times (their own logs) and the kernel's counters of a network namespace
made by the test (nothing else runs in it, so its /proc/net/snmp and netstat deltas are exact)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gotel.pdata.batch import Signal
from gotel.receivers.net import Config, NetReceiver
from tests.helpers.memsink import MemorySink, make_ctx, sinks

pytestmark = [pytest.mark.root, pytest.mark.slow]

N = 5  # resets and refused connects, each


@pytest.fixture
def netns() -> Iterator[str]:
    ns = f"gotel-tcpf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # a SYN nobody answers fails after ~3 s (1 s + 2 s) instead of the default ~2 min
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _counters(ns: str) -> dict[str, int]:
    """The namespace's Tcp: (snmp) and TcpExt: (netstat) counters, one dict."""
    out: dict[str, int] = {}
    for path, prefix in (("/proc/net/snmp", "Tcp:"), ("/proc/net/netstat", "TcpExt:")):
        text = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True,
                              check=True).stdout
        lines = [line.split() for line in text.splitlines() if line.startswith(prefix)]
        out.update(zip(lines[0][1:], (int(x) for x in lines[1][1:]), strict=True))
    return out


def _nft(ns: str, rule: str) -> None:
    """Adds a drop rule on the namespace's input hook (loopback traffic passes it once per packet)."""
    text = f"table inet gotel {{\n chain in {{\n  type filter hook input priority 0;\n  {rule}\n }}\n}}\n"
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


class Prog:
    """A Python program in the namespace; talks by lines on stdin/stdout."""

    def __init__(self, ns: str, code: str, *args: str) -> None:
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.p.pid
        # ip netns exec execs the program: the pid is the program's own
        self.log: list[str] = []

    def send(self, line: str = "go") -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    async def expect(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.p.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.p.stdout.readline), timeout)
        self.log.append(line.strip())
        assert line.startswith(prefix), (prefix, line, self.log)
        return line.strip()

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.p.kill()
        self.p.wait()


async def _receiver(*progs: Prog) -> tuple[NetReceiver, dict[Signal, MemorySink]]:
    s = sinks(Signal.METRICS)
    r = NetReceiver(Config(discovery={"pids": [p.pid for p in progs], "go_only": False},
                           collection_interval=3600), s, make_ctx("net"))
    await r.start()
    assert all(p.pid in r.targets for p in progs)
    return r, s


def _points(s: dict[Signal, MemorySink], name: str, pid: int) -> list[tuple[dict[str, Any], Any]]:
    return [(a, p) for res, a, p in s[Signal.METRICS].points(name) if res.get("process.pid") == pid]


def _sum(s: dict[Signal, MemorySink], name: str, pid: int, **want: Any) -> int:
    return sum(p.as_int for a, p in _points(s, name, pid) if all(a.get(k) == v for k, v in want.items()))


# Accepts N connections and closes each with SO_LINGER 0: the kernel sends a RST instead of a FIN.
LINGER_SERVER = r"""
import socket, struct, sys
input()
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(16)
print("port", l.getsockname()[1], flush=True)
n = int(sys.argv[1])
for i in range(n):
    c, _ = l.accept()
    c.recv(1)  # the client's byte: the connection is fully up on both sides
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
print("reset", n, flush=True)
input()
"""

LINGER_CLIENT = r"""
import socket, sys
port, n = int(input()), int(sys.argv[1])
got = 0
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.send(b"x")
    try:
        c.recv(1)
    except ConnectionResetError:
        got += 1
    c.close()
print("resets", got, flush=True)
input()
"""


async def test_linger_zero_resets_per_process_and_peer(netns: str) -> None:
    server = Prog(netns, LINGER_SERVER, str(N))
    client = Prog(netns, LINGER_CLIENT, str(N))
    r = None
    try:
        r, s = await _receiver(server, client)
        before = _counters(netns)
        server.send()
        port = int((await server.expect("port")).split()[1])
        client.send(str(port))
        assert (await client.expect("resets")) == f"resets {N}"
        await server.expect("reset")
        d = _delta(before, _counters(netns))
        await r.collect_now()
        # the server sent N RSTs, each an abort by close() (the kernel's reason: TCP_STATE), on
        # connections to the client, named by its own listening port
        sent = _sum(s, "process.network.tcp.resets", server.pid, **{"network.io.direction": "transmit"})
        assert sent == N
        assert _sum(s, "process.network.tcp.resets", server.pid, **{"gotel.tcp.reset.reason": "TCP_STATE",
                                                                     "network.local.port": port}) == N
        # the client received them, on connections named by the server's port
        assert _sum(s, "process.network.tcp.resets", client.pid, **{"network.io.direction": "receive",
                                                                     "network.peer.port": port}) == N
        assert _sum(s, "process.network.tcp.resets", client.pid, **{"network.io.direction": "transmit"}) == 0
        # against the namespace's own counters: every RST sent, every linger-0 abort
        assert d.get("OutRsts") == N, d
        assert d.get("TCPAbortOnData") == N, d  # what the kernel counts a SO_LINGER 0 close as
        # each connection ended once: an abort on the server, the peer's reset on the client, both
        # with a peer that answered (nothing was left unacknowledged)
        aborts = _sum(s, "process.network.tcp.closes", server.pid, **{"gotel.tcp.close.cause": "abort"})
        reset_in = _sum(s, "process.network.tcp.closes", client.pid, **{"gotel.tcp.close.cause": "peer_reset"})
        assert (aborts, reset_in) == (N, N)
        assert d.get("EstabResets") == aborts + reset_in  # both sides of each, as the kernel counts
        assert all(a["gotel.tcp.peer.answering"] is True for a, _ in _points(s, "process.network.tcp.closes",
                                                                                  server.pid))
        # and the client's connects all succeeded, as many as it made
        ok = [p for a, p in _points(s, "process.network.tcp.connect.duration", client.pid) if "error.type" not in a]
        assert sum(p.count for p in ok) == N == d.get("ActiveOpens")
    finally:
        if r is not None:
            await r.shutdown()
        for p in (client, server):
            if p is not None:
                p.stop()


# Connects N times to a port nobody listens on (refused), T times to one whose SYNs the namespace drops
# (the kernel gives up: ETIMEDOUT), A times abandoning a connect it does not wait for (closed by the
# program, as a dial timeout does), U times to one whose SYNs are answered with an ICMP host
# unreachable, and M times to a listener (established). Logs each outcome.
CONNECTOR = r"""
import errno, socket, sys, time
closed, dropped, listening, unreach = (int(x) for x in input().split())
n, t, a, m, u = (int(x) for x in sys.argv[1:6])
out = {"ECONNREFUSED": 0, "ETIMEDOUT": 0, "closed": 0, "EHOSTUNREACH": 0, "ok": 0}
for i in range(n):
    try:
        socket.create_connection(("127.0.0.1", closed)).close()
    except ConnectionRefusedError:
        out["ECONNREFUSED"] += 1
for i in range(t):
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", dropped))
    except TimeoutError:  # the kernel's own timeout (no socket timeout is set)
        out["ETIMEDOUT"] += 1
    c.close()
for i in range(a):
    c = socket.socket(); c.setblocking(False)
    assert c.connect_ex(("127.0.0.1", dropped)) == errno.EINPROGRESS
    time.sleep(0.05)
    c.close()
    out["closed"] += 1
for i in range(u):
    try:
        socket.create_connection(("127.0.0.1", unreach)).close()
    except OSError as e:
        if e.errno == errno.EHOSTUNREACH:
            out["EHOSTUNREACH"] += 1
held = []
for i in range(m):
    held.append(socket.create_connection(("127.0.0.1", listening)))
    out["ok"] += 1
print("done", " ".join(f"{k}={v}" for k, v in out.items()), flush=True)
input()
"""

LISTENER = r"""
import socket
input()
ports = []
for i in range(4):
    l = socket.socket(); l.bind(("127.0.0.1", 0)); ports.append(l)
ports[2].listen(16)
print("ports", *(p.getsockname()[1] for p in ports), flush=True)
input()
"""


async def test_connect_failures_by_errno_and_latency(netns: str) -> None:
    t, a, m, u = 1, 2, 3, 2
    listener = Prog(netns, LISTENER)
    conn = Prog(netns, CONNECTOR, str(N), str(t), str(a), str(m), str(u))
    r = None
    try:
        r, s = await _receiver(conn)
        listener.send()
        closed, dropped, listening, unreach = (int(x) for x in (await listener.expect("ports")).split()[1:])
        # bound but not listening: a SYN to `closed` gets a RST; the SYNs to `dropped` are dropped; those
        # to `unreach` answered by an ICMP host unreachable (reported to the socket before its CLOSE)
        _nft(netns, f"tcp dport {dropped} drop\n  tcp dport {unreach} reject with icmpx host-unreachable")
        before = _counters(netns)
        conn.send(f"{closed} {dropped} {listening} {unreach}")
        line = await conn.expect("done", timeout=60)
        truth = {k: int(v) for k, v in (x.split("=") for x in line.split()[1:])}
        assert truth == {"ECONNREFUSED": N, "ETIMEDOUT": t, "closed": a, "EHOSTUNREACH": u, "ok": m}
        d = _delta(before, _counters(netns))
        await asyncio.sleep(1.1)  # an abandoned attempt is known as such after a second without an error
        await r.collect_now()
        by_error: dict[str, int] = {}
        for attrs, p in _points(s, "process.network.tcp.connect.duration", conn.pid):
            by_error[attrs.get("error.type", "ok")] = by_error.get(attrs.get("error.type", "ok"), 0) + p.count
            port = {"ECONNREFUSED": closed, "ETIMEDOUT": dropped, "closed": dropped, "ok": listening,
                    "EHOSTUNREACH": unreach}
            assert attrs["network.peer.port"] == port[attrs.get("error.type", "ok")], attrs
            assert attrs["network.peer.address"] == "127.0.0.1"
            if attrs.get("error.type") == "ETIMEDOUT":  # one SYN retry: 1 s + 2 s
                assert 2.5 < p.sum < 4.5, p.sum
        assert by_error == truth
        # against the namespace's counters: every attempt, and every one the kernel failed (AttemptFails
        # leaves out the attempts their program closed itself: they never reach tcp_done)
        assert d.get("ActiveOpens") == N + t + a + m + u, d
        assert d.get("AttemptFails") == by_error["ECONNREFUSED"] + by_error["ETIMEDOUT"] + by_error["EHOSTUNREACH"], d
        # the refusals are the client's received resets, and RSTs the namespace sent for no socket
        assert _sum(s, "process.network.tcp.resets", conn.pid, **{"network.io.direction": "receive",
                                                                   "network.peer.port": closed}) == N
        assert d.get("OutRsts") == N, d
        node = sum(p.as_int for res, a_, p in s[Signal.METRICS].points("gotel.network.tcp.resets")
                   if a_.get("gotel.tcp.reset.reason") == "NO_SOCKET")
        assert node >= N  # node-wide: other namespaces' refusals land here too
    finally:
        if r is not None:
            await r.shutdown()
        for p in (conn, listener):
            p.stop()


# Answers "ping" with "pong" on every connection to each of its ports.
PONG_SERVER = r"""
import socket, sys, threading
input()
def serve(c):
    try:
        while c.recv(5):
            c.sendall(b"pong\n")
    except OSError:  # the client's keepalive RST
        return
def listen():
    l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4)
    def loop():
        while True:
            threading.Thread(target=serve, args=(l.accept()[0],), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return l.getsockname()[1]
print("ports", *(listen() for _ in range(int(sys.argv[1]))), flush=True)
input()
"""

# A: an idle connection with TCP keepalive (idle 2 s, interval 1 s, 3 probes), waiting for anything.
# B, C: application heartbeats, a ping every 0.3 s answered within 1 s or the connection is given up.
HEARTBEAT_CLIENT = r"""
import socket, threading, time
a, b, c = (int(x) for x in input().split())
lock = threading.Lock()
def say(*x):
    with lock:
        print(*x, flush=True)
ka = socket.create_connection(("127.0.0.1", a))
ka.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
ka.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2)
ka.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
ka.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
hb = {}
for name, port in (("B", b), ("C", c)):
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(1.0)
    s.sendall(b"ping\n"); assert s.recv(5) == b"pong\n"
    hb[name] = s
def idle():
    try:
        ka.recv(1)
        say("A", "eof")
    except OSError as e:
        say("A", type(e).__name__, e.errno)
def heartbeat(name, s):
    while True:
        time.sleep(0.3)
        try:
            s.sendall(b"ping\n")
            if s.recv(5) != b"pong\n":
                raise OSError("bad answer")
        except OSError as e:  # socket.timeout included
            s.close()
            say(name, "heartbeat_timeout")
            return
threading.Thread(target=idle, daemon=True).start()
for name, s in hb.items():
    threading.Thread(target=heartbeat, args=(name, s), daemon=True).start()
say("connected")
input()
"""


async def test_dead_peer_told_from_a_stalled_service(netns: str) -> None:
    """The classic case: an application heartbeat times out against a peer whose process is stopped
    (its kernel still acknowledges everything) and against a peer the network no longer reaches. Both
    look the same to the application; the close tells them apart by whether the peer's TCP answered."""
    dead = Prog(netns, PONG_SERVER, "2")
    alive = Prog(netns, PONG_SERVER, "1")
    client = Prog(netns, HEARTBEAT_CLIENT)
    r = None
    try:
        r, s = await _receiver(client, dead, alive)
        dead.send()
        alive.send()
        pa, pc = (int(x) for x in (await dead.expect("ports")).split()[1:])
        pb = int((await alive.expect("ports")).split()[1])
        client.send(f"{pa} {pb} {pc}")
        await client.expect("connected")
        before = _counters(netns)
        _nft(netns, f"tcp sport {{ {pa}, {pc} }} drop")  # nothing from A's and C's server arrives
        os.kill(alive.pid, signal.SIGSTOP)  # B's server stops answering pings; its kernel still ACKs
        events: dict[str, str] = {}
        unanswered = 0
        reader = asyncio.ensure_future(client.expect(""))
        deadline = time.monotonic() + 30
        while len(events) < 3 and time.monotonic() < deadline:
            done, _ = await asyncio.wait({reader}, timeout=0.25)
            if done:
                name, what = reader.result().split(maxsplit=1)
                events[name] = what
                if len(events) < 3:
                    reader = asyncio.ensure_future(client.expect(""))
            else:
                await r.collect_now()
                for attrs, p in _points(s, "process.network.tcp.keepalive.unanswered", client.pid):
                    if attrs.get("network.peer.port") == pa:
                        unanswered = max(unanswered, p.as_int)
        assert events == {"A": f"TimeoutError {110}", "B": "heartbeat_timeout", "C": "heartbeat_timeout"}, events
        d = _delta(before, _counters(netns))
        s[Signal.METRICS].clear()  # cumulative points: read the last collection only
        await r.collect_now()
        closes = {(a["network.peer.port"], a["gotel.tcp.close.cause"], a.get("gotel.tcp.peer.answering")): p.as_int
                  for a, p in _points(s, "process.network.tcp.closes", client.pid)}
        assert closes == {
            (pa, "keepalive_timeout", False): 1,  # the kernel gave up: a dead peer
            (pc, "local_close", False): 1,        # heartbeat timeout, the ping never acknowledged: dead peer
            (pb, "local_close", True): 1,         # heartbeat timeout, the peer's TCP answering: service stalled
        }, closes
        # the keepalive timeout's RST, with the kernel's reason, to peer A only
        assert _sum(s, "process.network.tcp.resets", client.pid, **{"network.io.direction": "transmit",
                                                                     "gotel.tcp.reset.reason": "TCP_KEEPALIVE_TIMEOUT",
                                                                     "network.peer.port": pa}) == 1
        # keepalive probes: 3 sent, none answered, then the abort (TcpExt TCPKeepAlive counts the probes)
        assert d.get("TCPKeepAlive") == 3, d
        assert d.get("TCPAbortOnTimeout") == 1, d  # the kernel counts the keepalive abort there
        assert d.get("OutRsts") == 1, d
        assert 1 <= unanswered <= 3, unanswered
        # C's ping was retransmitted while unanswered; B's never was
        assert d.get("RetransSegs", 0) >= 1, d
    finally:
        if r is not None:
            await r.shutdown()
        for p in (client, dead, alive):
            p.stop()
