"""The net receiver against the kernel's own TCP counters, in a network namespace made by the test."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gotel.ebpf.program import BpfProgram
from gotel.pdata.batch import Signal
from gotel.receivers.net import Config, NetReceiver, drop_reasons
from tests.helpers.memsink import make_ctx, sinks

pytestmark = [pytest.mark.root, pytest.mark.slow]
PORT = 9000

SERVER = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT})); s.listen(4); print("ready", flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while c.recv(4096):
    c.send(b"k")
input()  # keep the (now half-closed) connection until the test is done
"""

CLIENT = f"""
import socket, sys, time
input()  # wait until the receiver watches us
c = socket.create_connection(("127.0.0.1", {PORT}))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(60):  # request/response: a lost request is retransmitted alone
    c.send(b"x" * 100)
    c.recv(16)
c.close()
print("done", flush=True)
input()
"""


def _snmp(ns: str) -> dict[str, int]:
    """The namespace's Tcp: counters (RetransSegs), with TcpExt:'s (TCPRetransFail) merged in."""
    out = {}
    for path, prefix in (("/proc/net/snmp", "Tcp:"), ("/proc/net/netstat", "TcpExt:")):
        text = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True,
                              check=True).stdout
        lines = [line.split() for line in text.splitlines() if line.startswith(prefix)]
        out.update(zip(lines[0][1:], (int(x) for x in lines[1][1:]), strict=True))
    return out


def _recursion_misses() -> int:
    """Runs of the retransmission program the kernel skipped because it would have nested on one CPU (a
    softirq retransmission interrupting a process-context one): kernel-side, visible only here."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True).stdout
    return sum(p.get("recursion_misses", 0) for p in json.loads(out) if "tcp_retransmit" in p.get("name", ""))


# An independent witness of the same tracepoint: every successful retransmission on a connection to or
# from PORT, counted without the receiver's owner lookup, attribution, draining or aggregation.
WITNESS = r"""
#include <net/sock.h>
BPF_ARRAY(hits, u64, 1);
RAW_TRACEPOINT_PROBE(tcp_retransmit_skb) {
    struct sock *sk = (struct sock *)ctx->args[0];
    u16 num = 0, dport = 0;
    bpf_probe_read_kernel(&num, sizeof(num), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
    if ((int)ctx->args[2] == 0 && (num == PORT || ntohs(dport) == PORT))
        hits.atomic_increment(0);
    return 0;
}
"""


@pytest.fixture
def lossy_netns() -> Iterator[str]:
    """A network namespace whose loopback drops 30% of the data segments arriving at PORT (nftables;
    pure ACKs pass, so only the client ever retransmits)."""
    ns = f"gotel-net-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rules = ("table inet gotel {\n chain in {\n  type filter hook input priority 0;\n"
                 f"  tcp dport {PORT} ip length > 100 numgen random mod 100 < 30 drop\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _spawn(ns: str, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def test_retransmissions_equal_kernel_counters(lossy_netns: str) -> None:
    server = _spawn(lossy_netns, SERVER)
    client = _spawn(lossy_netns, CLIENT)
    r: NetReceiver | None = None
    witness: BpfProgram | None = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        s = sinks(Signal.METRICS)
        r = NetReceiver(Config(discovery={"pids": [client.pid, server.pid], "go_only": False},
                               collection_interval=3600), s, make_ctx("net"))
        await r.start()
        witness = BpfProgram(WITNESS, defines={"PORT": PORT})
        assert client.pid in r.targets and server.pid in r.targets
        before = _snmp(lossy_netns)
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("\n")
        client.stdin.flush()
        line = await asyncio.to_thread(client.stdout.readline)
        assert line.strip() == "done"
        after = _snmp(lossy_netns)
        kernel = after["RetransSegs"] - before["RetransSegs"]
        assert kernel >= 5, "the drop rule should have forced retransmissions"
        # the client retransmits dropped requests; the server may retransmit a reply by tail-loss probe
        # before the client's delayed ACK: both are in the namespace's RetransSegs
        ours = r.retransmits(client.pid) + r.retransmits(server.pid)
        # exact against every hit of the tracepoint on this connection
        assert witness is not None and ours == witness.table("hits")[0].value, r.read()["retrans"]
        # and against the kernel's counter. RetransSegs also counts retransmissions whose transmit then
        # failed (TCPRetransFail), which the receiver leaves out by design, and skipped program runs (the
        # kernel's count, exported as lost). Under CPU contention (~1 run in 10 with a busy loop beside
        # it) RetransSegs moved by one more than the tracepoint ever reported, host-wide and for 2 s after;
        # not a miss of ours (the witness agrees), so one segment is allowed, never more.
        failed = after["TCPRetransFail"] - before["TCPRetransFail"]
        expect = kernel - failed - _recursion_misses()
        assert expect - 1 <= ours <= expect, (r.read()["retrans"], kernel, failed)
        assert r.retransmits(client.pid) > 0
        # (no assertion on r.unattributed(): it is node-wide, and any other retransmission on the host
        # during the window lands there)
        assert len(r.prog.table("retrans")) == 0  # drained into per-peer totals at every reading
        await r.collect_now()
        pts = [(res["process.pid"], a, p.as_int)
               for res, a, p in s[Signal.METRICS].points("process.network.tcp.retransmits")]
        assert sum(n for _, _, n in pts) == ours
        for pid, a, _ in pts:
            assert a["network.peer.address"] == "127.0.0.1"
            if pid == client.pid:
                assert a["network.peer.port"] == PORT
            else:  # the server side names its own listening port, not the client's ephemeral one
                assert pid == server.pid and a["network.local.port"] == PORT
        states = {a["network.connection.state"]: p.as_int
                  for res, a, p in s[Signal.METRICS].points("process.network.tcp.state_changes")
                  if res["process.pid"] == client.pid}
        assert states.get("syn_sent") == 1 and states.get("established") == 1
        assert states.get("fin_wait_1") == 1
        # the client closed its connection after every retransmitted request was answered: a local close
        # with the peer answering (the retransmissions' unanswered count was cleared by the answers)
        closes = [(a["gotel.tcp.close.cause"], a["gotel.tcp.peer.answering"], p.as_int)
                  for res, a, p in s[Signal.METRICS].points("process.network.tcp.closes")
                  if res["process.pid"] == client.pid]
        assert closes == [("local_close", True, 1)], closes
        # the segments nftables dropped show with the kernel's reason (node-wide: the drop happens in
        # softirq, before any socket is known)
        drops = [(a, p.as_int) for res, a, p in s[Signal.METRICS].points("process.network.packet.drops")
                 + s[Signal.METRICS].points("gotel.network.packet.drops")]
        nf = sum(n for a, n in drops if a["gotel.drop.reason"] == "NETFILTER_DROP")
        assert nf > 0, drops
        assert all(a["network.type"] in ("ipv4", "ipv6", "arp") or a["network.type"].startswith("0x")
                   for a, _ in drops)
        assert any(a["network.type"] == "ipv4" for a, _ in drops)
    finally:
        if witness is not None:
            witness.close()
        if r is not None:
            await r.shutdown()
        for p in (client, server):
            p.kill()
            p.wait()


def test_drop_reason_names_from_the_running_kernel() -> None:
    reasons = drop_reasons()
    assert reasons.get(2) == "NOT_SPECIFIED"
    assert "NETFILTER_DROP" in reasons.values() and "TCP_CSUM" in reasons.values()
    fmt = 'print fmt: "x", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 77, "NEW_ONE" })'
    assert drop_reasons(fmt) == {2: "NOT_SPECIFIED", 77: "NEW_ONE"}


def test_unknown_pid_is_not_fatal() -> Any:
    cfg = Config(discovery={"pids": [2**22 + 7], "go_only": False})
    assert cfg.discovery.pids == [2**22 + 7]
