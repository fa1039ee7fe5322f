"""SelfFilter against real sockets: a client socket held by a gotel process vs one held by another."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from gotel.receivers.go_ebpf.events import GRPC_RECORD, HTTP_SERVER_RECORD, T_GRPC_CLIENT, T_HTTP_SERVER
from gotel.receivers.go_ebpf.selffilter import SelfFilter, is_gotel_cmdline

LO = b"\x7f\x00\x00\x01" + bytes(12)


def http_server_rec(pid: int, remote: bytes) -> bytes:
    return HTTP_SERVER_RECORD.pack(1_000, 2_000, pid, T_HTTP_SERVER, 7, 0, 1, 2, 0, 0, 200, 0, 1, 0, 0, LO, LO, 4, 4,
                                   0, 0, b"GET", b"/debug/pprof/", b"", b"", remote)  # no incoming traceparent


class Shape:
    """Stands for the Assembler's shape object of a record (one per peer address and ports)."""


def test_gotel_cmdlines() -> None:
    assert is_gotel_cmdline([b"/usr/bin/python3", b"-m", b"gotel", b"receiver", b"pprof"])
    assert is_gotel_cmdline([b"/opt/venv/bin/python", b"/opt/venv/bin/gotel", b"run"])
    assert is_gotel_cmdline([b"gotel", b"run"])
    assert not is_gotel_cmdline([b"/usr/bin/python3", b"-m", b"pytest", b"gotel"])
    assert not is_gotel_cmdline([b"curl", b"http://127.0.0.1/gotel"])


def test_own_socket_is_gotel_anothers_is_not() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    mine = socket.create_connection(("127.0.0.1", port))  # this process stands for the gotel receiver
    other = subprocess.Popen([sys.executable, "-c", f"import socket,time; s=socket.create_connection(('127.0.0.1',{port})); "
                              "print(s.getsockname()[1], flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        other_port = int(other.stdout.readline())
        f = SelfFilter()
        r_mine = http_server_rec(os.getpid(), f"127.0.0.1:{mine.getsockname()[1]}".encode())
        r_other = http_server_rec(os.getpid(), f"127.0.0.1:{other_port}".encode())
        r_remote = http_server_rec(os.getpid(), b"10.1.2.3:40000")
        s_mine, s_other, s_remote = Shape(), Shape(), Shape()
        assert f.drop(T_HTTP_SERVER, s_mine, r_mine, os.getpid())
        assert not f.drop(T_HTTP_SERVER, s_other, r_other, os.getpid())
        assert not f.drop(T_HTTP_SERVER, s_remote, r_remote, os.getpid())
        assert f.lookups == 2  # a remote client is never looked up
        # cached: the same connection again costs no lookup
        t0 = time.thread_time()  # CPU time: a shared machine's preemption is not the filter's cost
        for _ in range(10_000):
            f.drop(T_HTTP_SERVER, s_mine, r_mine, os.getpid())
        per_call = (time.thread_time() - t0) / 10_000
        assert f.lookups == 2 and f.dropped == 10_001
        assert per_call < 50e-6  # generous bound for a shared CI machine; bench/go_ebpf/selffilter.py measures
        client_rec = GRPC_RECORD.pack(1_000, 2_000, os.getpid(), T_GRPC_CLIENT, 7, 0, 1, 2, 0, 0, 0, 0, 1, 0, 0, LO,
                                      LO, 4, 4, 0, 0, b"/p.S/M", b"", b"")
        assert not f.drop(T_GRPC_CLIENT, Shape(), client_rec, os.getpid())
    finally:
        other.kill()
        other.wait()
        mine.close()
        srv.close()
