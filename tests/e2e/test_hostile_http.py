"""Hostile OTLP/HTTP senders against a real `gotel run`: decompression bombs and slowloris.

The pipeline process's own memory (VmHWM, the kernel's peak resident set) is the witness for the
bombs; the kernel's socket state (the server closing its end) is the witness for slowloris.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import zlib
from pathlib import Path

from tests.e2e.agent import Agent, free_port
from tests.helpers.otlp_samples import traces

BOMB_INFLATED = 1 << 30  # 1 GiB of zeros
N_BOMBS = 20
LIMIT = 20 << 20  # max_request_body_size's default
# Allowed growth of the pipeline's peak RSS over its warm state while 20 bombs arrive at once. The
# default max_concurrent_requests (8) times the 20 MiB limit, the compressed reads and Python's
# allocator slack; before bounded inflation this was over 1 GiB.
MAX_GROWTH = 300 << 20


def _bomb(path: Path) -> bytes:
    if not path.exists():
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = bytes(1 << 20)
        with open(path, "wb") as f:
            for _ in range(BOMB_INFLATED >> 20):
                f.write(c.compress(zeros))
            f.write(c.flush())
    return path.read_bytes()


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) << 10
    return out


def _config(http_port: int, extra: str = "") -> str:
    return f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{http_port}
{extra}
exporters:
  debug: {{verbosity: basic}}
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
"""


def _post(port: int, body: bytes, encoding: str = "gzip") -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/x-protobuf"}
        if encoding:
            headers["Content-Encoding"] = encoding
        c.request("POST", "/v1/traces", body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()




def test_twenty_concurrent_gzip_bombs_keep_memory_bounded(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path.parent / "bomb-1g.gz")
    http_port = free_port()
    a = Agent(_config(http_port), tmp_path)
    a.start()
    try:
        a.wait_ready()
        assert a.proc is not None
        good = traces(10).to_bytes()
        assert _post(http_port, zlib.compress(good), "deflate")[0] == 200  # warm: the path is loaded
        before = _status(a.proc.pid)
        results: list[int] = []
        lock = threading.Lock()

        def send() -> None:
            try:
                code, _ = _post(http_port, bomb)
            except OSError as e:
                code = -1
                print("bomb sender:", e)
            with lock:
                results.append(code)

        t0 = time.monotonic()
        threads = [threading.Thread(target=send) for _ in range(N_BOMBS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        took = time.monotonic() - t0
        after = _status(a.proc.pid)
        growth = after["VmHWM"] - before["VmHWM"]
        print(f"{N_BOMBS} x {len(bomb)} B gzip bombs (1 GiB inflated each) in {took:.1f}s: answers "
              f"{sorted(results)}; pipeline RSS {before['VmRSS'] >> 20} MiB before, peak grew by "
              f"{max(growth, 0) >> 20} MiB")
        # Every bomb refused with 413 (or 503 when beyond the concurrency bound), none accepted.
        assert len(results) == N_BOMBS and set(results) <= {413, 503}, results
        assert 413 in results
        assert growth < MAX_GROWTH, f"peak RSS grew by {growth >> 20} MiB"
        # The receiver still serves good requests afterwards.
        assert _post(http_port, zlib.compress(good), "deflate")[0] == 200
        assert a.metric("gotel_otlp_receiver_rejected_requests_total", reason="too_large") >= 1
    finally:
        a.stop()


def test_slowloris_connections_are_closed_within_the_header_timeout(tmp_path: Path) -> None:
    http_port = free_port()
    timeout = 2.0
    a = Agent(_config(http_port, f"        read_header_timeout: {timeout}s\n"), tmp_path)
    a.start()
    socks: list[socket.socket] = []
    try:
        a.wait_ready()
        opened: list[float] = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", http_port))
            opened.append(time.monotonic())
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            socks.append(s)
        # Keep trickling header bytes, as slowloris does, until the server hangs up; each
        # connection's life is measured from its own connect.
        lived: dict[int, float] = {}
        end = opened[0] + timeout + 10
        while len(lived) < len(socks) and time.monotonic() < end:
            for i, s in enumerate(socks):
                if i in lived:
                    continue
                try:
                    s.sendall(b"X-a: b\r\n")
                    s.setblocking(False)
                    try:
                        if s.recv(1024) == b"":
                            lived[i] = time.monotonic() - opened[i]
                    except BlockingIOError:
                        pass
                    finally:
                        s.setblocking(True)
                except OSError:
                    lived[i] = time.monotonic() - opened[i]
            time.sleep(0.1)
        longest = max(lived.values(), default=0.0)
        print(f"{len(lived)} of {len(socks)} slowloris connections closed by the server; each lived "
              f"{min(lived.values(), default=0):.2f}-{longest:.2f}s (read_header_timeout {timeout}s, "
              f"checked every 0.1s)")
        assert len(lived) == len(socks)
        assert longest < timeout + 1.0
        # A well-behaved request on a fresh connection is still served.
        assert _post(http_port, traces(3).to_bytes(), "")[0] == 200
        assert a.metric("gotel_otlp_receiver_closed_connections_total", reason="header_timeout") >= 200
    finally:
        for s in socks:
            s.close()
        a.stop()


def test_idle_keepalive_connection_is_closed_after_idle_timeout(tmp_path: Path) -> None:
    http_port = free_port()
    a = Agent(_config(http_port, "        idle_timeout: 1s\n"), tmp_path)
    a.start()
    try:
        a.wait_ready()
        c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        c.request("POST", "/v1/traces", body=traces(2).to_bytes(),
                  headers={"Content-Type": "application/x-protobuf"})
        r = c.getresponse()
        r.read()
        assert r.status == 200
        sock = c.sock
        assert sock is not None
        t0 = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the server hung up the idle keep-alive connection
        waited = time.monotonic() - t0
        print(f"idle keep-alive connection closed after {waited:.2f}s (idle_timeout 1s)")
        assert 0.5 < waited < 4
        c.close()
    finally:
        a.stop()



