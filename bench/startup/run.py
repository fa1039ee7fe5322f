"""Start-up cost of Go binary analysis (gotel.golang): wall time and peak RSS, first time and cached.

Each measurement runs in a fresh Python process; peak RSS is that child's ru_maxrss (RUSAGE_CHILDREN of a
one-child parent), compared with a baseline child that only imports gotel.golang. The first analysis does
what attaching the gRPC/HTTP tracers needs: build info, function lookups, DWARF offsets of the fields the
tracers read, RET offsets of 20 functions. Then 20 more analyses of the same binary (as for 20 processes of
one executable) come from the cache. Goals: first < 2 s and < 200 MB; cached < 50 ms each.
Each measurement is the median of 3 fresh processes. Never fails on time: it prints figures and ratios. Usage: .venv/bin/python bench/startup/run.py [BINARY]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REPEAT = 3  # fresh processes per measurement; the median is reported
sys.path.insert(0, str(REPO))

FIELDS = [
    ("google.golang.org/grpc/internal/transport.Stream", "method"),
    ("google.golang.org/grpc/internal/transport.Stream", "id"),
    ("google.golang.org/grpc/internal/transport.Stream", "ctx"),
    ("google.golang.org/grpc/internal/transport.Stream", "st"),
    ("google.golang.org/grpc/internal/status.Status", "s"),
    ("google.golang.org/genproto/googleapis/rpc/status.Status", "Code"),
    ("google.golang.org/genproto/googleapis/rpc/status.Status", "Message"),
    ("google.golang.org/grpc.ClientConn", "target"),
    ("google.golang.org/grpc/internal/transport.http2Server", "remoteAddr"),
    ("google.golang.org/grpc/internal/transport.http2Server", "localAddr"),
    ("google.golang.org/grpc/internal/transport.http2Client", "remoteAddr"),
    ("net/http.Request", "Method"),
    ("net/http.Request", "URL"),
    ("net/http.Request", "Host"),
    ("net/http.Request", "RemoteAddr"),
    ("net/http.Request", "Header"),
    ("net/http.Request", "ctx"),
    ("net/url.URL", "Path"),
    ("net/url.URL", "Scheme"),
    ("net/http.response", "status"),
    ("net/http.response", "req"),
    ("net/http.Response", "StatusCode"),
    ("net.TCPAddr", "Port"),
    ("runtime.g", "goid"),
    ("runtime.g", "m"),
    ("runtime.m", "procid"),
]
FUNCS = [
    "google.golang.org/grpc.(*Server).handleStream",
    "google.golang.org/grpc.(*ClientConn).Invoke",
    "google.golang.org/grpc.(*ClientConn).NewStream",
    "google.golang.org/grpc.(*clientStream).RecvMsg",
    "google.golang.org/grpc.(*clientStream).CloseSend",
    "google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders",
    "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus",
    "google.golang.org/grpc/internal/transport.(*http2Client).NewStream",
    "net/http.serverHandler.ServeHTTP",
    "net/http.(*Transport).roundTrip",
    "net/http.(*response).WriteHeader",
    "net/http.(*conn).serve",
    "net.(*netFD).Read",
    "net.(*netFD).Write",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).Write",
    "runtime.newproc1",
    "runtime.casgstatus",
    "runtime.gcStart",
    "runtime.gcMarkDone",
]

WORKER = r"""
import json, sys, time, resource
t0 = time.perf_counter()
import gotel.golang as golang
t_import = time.perf_counter() - t0
mode, path, fields, funcs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])

def work():
    b = golang.analyze(path)
    info = (b.go_version, len(b.modules), b.build_id)
    found = missing = 0
    for t, f in fields:
        try:
            b.struct_offset(t, f)
            found += 1
        except (golang.TypeNotFound, golang.FieldNotFound, golang.NoDWARF):
            missing += 1
    rets = 0
    for fn in funcs:
        try:
            rets += len(b.ret_offsets(fn))
        except golang.FunctionNotFound:
            pass
    return found, missing, rets

out = {"import_s": t_import}
if mode == "analyze":
    t = time.perf_counter()
    b = golang.analyze(path)
    b.go_version
    t1 = time.perf_counter()
    b.functions
    t2 = time.perf_counter()
    b.structs
    t3 = time.perf_counter()
    out["fields_found"], out["fields_missing"], out["rets"] = work()
    out["first_s"] = time.perf_counter() - t
    out["phases_ms"] = {"open+buildinfo": (t1 - t) * 1e3, "function table": (t2 - t1) * 1e3,
                        "DWARF load+index": (t3 - t2) * 1e3, "fields+RETs": (time.perf_counter() - t3) * 1e3}
    per = []
    for _ in range(20):
        t = time.perf_counter()
        work()
        per.append(time.perf_counter() - t)
    out["cached_s"] = per
out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"""


def child(mode: str, path: str) -> tuple[dict[str, Any], float, int]:
    """Run one measurement in a fresh interpreter; (its report, wall seconds, its peak RSS in KiB)."""
    # A one-child intermediate so RUSAGE_CHILDREN is exactly this worker's peak, not an earlier one's.
    wrapper = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(p.stderr)\n"
        "print(json.dumps({'out': p.stdout, 'rc': p.returncode,"
        " 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-c", WORKER, mode, path,
                          json.dumps(FIELDS), json.dumps(FUNCS)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"worker failed: {res.stderr}")
    w = json.loads(res.stdout)
    if w["rc"] != 0:
        raise SystemExit(f"worker failed ({w['rc']})")
    return json.loads(w["out"]), wall, int(w["rss"])


def median_run(mode: str, path: str, n: int = REPEAT) -> tuple[dict[str, Any], float, int]:
    """The run with the median wall time of n (the machine is shared: single runs are noisy)."""
    runs = sorted((child(mode, path) for _ in range(n)), key=lambda r: r[1])
    return runs[len(runs) // 2]


def largest_fixture() -> Path:
    from tests.helpers import goapps

    built = [goapps.build(app, tc) for app in goapps.APPS for tc in goapps.TOOLCHAINS]
    return max(built, key=lambda p: p.stat().st_size)


def main() -> int:
    targets = [Path(a) for a in sys.argv[1:]] or [largest_fixture()]
    child("baseline", str(targets[0]))  # warm the page cache for the interpreter and libraries
    base, base_wall, base_rss = median_run("baseline", str(targets[0]))
    print(f"baseline: python + import gotel.golang: {base_wall:.3f} s wall, peak RSS {base_rss / 1024:.1f} MB "
          f"(import {base['import_s'] * 1000:.0f} ms)")
    for target in targets:
        rep, wall, rss = median_run("analyze", str(target))
        cached = sorted(rep["cached_s"])
        print(f"\n{target} ({target.stat().st_size / 1e6:.1f} MB)")
        print(f"  first analysis (build info, {len(FUNCS)} functions + RETs, {len(FIELDS)} DWARF fields): "
              f"{rep['first_s']:.3f} s   [goal < 2 s: {rep['first_s'] / 2:.0%} of budget]")
        print("  phases: " + ", ".join(f"{k} {v:.0f} ms" for k, v in rep["phases_ms"].items()))
        print(f"  DWARF fields found {rep['fields_found']}, missing {rep['fields_missing']}; RETs found {rep['rets']}")
        print(f"  peak RSS {rss / 1024:.1f} MB, {(rss - base_rss) / 1024:.1f} MB above the baseline "
              f"[goal < 200 MB: {rss / 1024 / 200:.0%} of budget]")
        print(f"  20 cached analyses: median {cached[10] * 1000:.3f} ms, max {cached[-1] * 1000:.3f} ms per call "
              f"[goal < 50 ms]; first/cached ratio {rep['first_s'] / cached[10]:.0f}x")
        print(f"  whole child process: {wall:.3f} s wall ({wall - base_wall:.3f} s above the baseline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
