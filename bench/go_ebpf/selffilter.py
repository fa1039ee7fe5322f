"""Cost of go_ebpf's self-filter (receivers/go_ebpf/selffilter.py), as a ratio to the same run without it.

    .venv/bin/python bench/go_ebpf/selffilter.py [--records 200000]

1. Assembler.add per record, filter off vs on (cache hits: server records of a few keep-alive
   connections from loopback clients, and client records, which the filter passes at once).
2. One verdict on a cache miss (a new loopback connection): /proc/PID/net/tcp{,6} of the server plus the
   fds of gotel's processes, against the machine's real /proc, next to a plain read of /proc/net/tcp.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gotel.receivers.go_ebpf.events import (
    GRPC_RECORD,
    HTTP_SERVER_RECORD,
    T_GRPC_CLIENT,
    T_HTTP_SERVER,
    Assembler,
)
from gotel.receivers.go_ebpf.selffilter import SelfFilter

LO = b"\x7f\x00\x00\x01" + bytes(12)


def records(n: int, ports: list[int]) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 2:
            out.append(GRPC_RECORD.pack(1_000 + i, 2_000 + i, os.getpid(), T_GRPC_CLIENT, i + 1, 0, 1, i, 0, 0, 0, 0, 1, 0,
                                        0, LO, LO, 4, 4, 0, 0, b"/p.S/M", b"", b""))
        else:
            remote = f"127.0.0.1:{ports[i % len(ports)]}".encode()
            out.append(HTTP_SERVER_RECORD.pack(1_000 + i, 2_000 + i, os.getpid(), T_HTTP_SERVER, i + 1, 0, 1, i, 0, 0, 200,
                                               0, 1, 0, 0, LO, LO, 4, 4, 0, 0, b"GET", b"/api", b"", b"", remote))
    return out


def run(asm: Assembler, recs: list[bytes]) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(recs), 4096):
        for r in recs[i:i + 4096]:
            asm.add(r, 0, 0.0)
        asm.take_traces(1.0, flush_all=True)
    return (time.perf_counter() - t0) / len(recs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    # clients of another process would be kept: these are ours (this process stands for gotel), so the
    # filter drops their server records -- the path with the most work per record (counting)
    conns = [socket.create_connection(srv.getsockname()) for _ in range(4)]
    ports = [c.getsockname()[1] for c in conns]
    recs = records(args.records, ports)
    # loopback clients that are not gotel's (ports nobody holds now: looked up once, then kept)
    foreign = records(args.records, [1, 2, 3, 4])
    best = {"off": float("inf"), "kept": float("inf"), "dropped": float("inf")}
    for _ in range(3):  # interleaved rounds: the machine's speed drifts
        for name, rs, filt in (("off", foreign, None), ("kept", foreign, SelfFilter()), ("dropped", recs, SelfFilter())):
            a = Assembler(stitch_window=0.0)
            a.add_process(os.getpid(), {"service.name": "bench"})
            a.self_filter = filt
            best[name] = min(best[name], run(a, rs))
            if name == "dropped":
                assert filt is not None and filt.dropped == args.records // 2
    print(f"Assembler.add + take_traces per record (half server, half client records): filter off "
          f"{best['off'] * 1e6:.2f} us; on, clients not gotel's {best['kept'] * 1e6:.2f} us "
          f"(x{best['kept'] / best['off']:.2f}); on, server records gotel's (dropped) {best['dropped'] * 1e6:.2f} us "
          f"(x{best['dropped'] / best['off']:.2f})")
    f = SelfFilter()
    n = 50
    f.client_is_gotel(os.getpid(), ports[0])
    t0 = time.perf_counter()
    for _ in range(n):
        f.client_is_gotel(os.getpid(), ports[0])
    miss = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        f._gotel_at = -1e9  # the gotel process list read again too (every 5 s at most)
        f.client_is_gotel(os.getpid(), ports[0])
    miss_refresh = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        Path("/proc/net/tcp").read_bytes()
        Path("/proc/net/tcp6").read_bytes()
    base = (time.perf_counter() - t0) / n
    tcp_lines = len(Path("/proc/net/tcp").read_text().splitlines()) + len(Path("/proc/net/tcp6").read_text().splitlines())
    print(f"verdict on a cache miss (new loopback connection): {miss * 1e3:.2f} ms (x{miss / base:.1f} a plain read of "
          f"/proc/net/tcp{{,6}}: {base * 1e3:.2f} ms, {tcp_lines} sockets); with the gotel process list re-read "
          f"({len(os.listdir('/proc'))} /proc entries) {miss_refresh * 1e3:.2f} ms")
    for c in conns:
        c.close()
    srv.close()


if __name__ == "__main__":
    main()
