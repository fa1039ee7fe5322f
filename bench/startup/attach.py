"""Compile-and-attach cost of gotel's BCC programs: wall time and peak RSS, each in a fresh process.

Baseline: the same fresh Python process importing bcc without compiling anything, so the figures
show what compilation (clang/LLVM inside libbcc) and attaching add. Run as root:
    .venv/bin/python bench/startup/attach.py [--binary PATH --function SYMBOL]
The analysis side (build info, symbols, DWARF, RET offsets) is bench/startup/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, resource
t0 = time.perf_counter()
import bcc  # noqa
mode, arg = sys.argv[1], json.loads(sys.argv[2])
from gotel.ebpf.program import BpfProgram
out = {}
if mode == "import":
    pass
elif mode == "procwatch":
    p = BpfProgram("procwatch.c")
    out["compiled_s"] = time.perf_counter() - t0
elif mode == "usdt":
    p = BpfProgram("usdt.c")
    p.bpf.load_func(b"gotel_usdt", p.bpf.KPROBE)
    out["compiled_s"] = time.perf_counter() - t0
elif mode == "gofunc":
    from gotel.ebpf.targets import function_sites
    p = BpfProgram("gocount.c")
    t1 = time.perf_counter()
    out["compiled_s"] = t1 - t0
    sites = function_sites(arg["binary"], arg["functions"], "gotel_gocount")
    t2 = time.perf_counter()
    out["analysis_s"] = t2 - t1
    for s in sites:
        p.attach_uprobe(arg["binary"], s.vaddr, s.fn_name)
    out["attach_s"] = time.perf_counter() - t2
    out["probes"] = p.probe_count()
    t3 = time.perf_counter()
    p.close()
    out["detach_s"] = time.perf_counter() - t3
out["total_s"] = time.perf_counter() - t0 - out.get("detach_s", 0.0)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run(mode: str, arg: dict[str, object]) -> dict[str, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(arg)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{mode}: {r.stderr.strip()[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", help="Go binary for the uprobe case (default: the largest built fixture)")
    ap.add_argument("--function", action="append", default=[], help="Go function(s) to probe at entry and RETs")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("attach.py needs root (BPF)", file=sys.stderr)
        return 2
    cases: list[tuple[str, str, dict[str, object]]] = [
        ("python + import bcc (baseline)", "import", {}),
        ("compile procwatch.c (discovery)", "procwatch", {}),
        ("compile usdt.c", "usdt", {}),
    ]
    binary = a.binary or _largest_fixture()
    if binary:
        funcs = a.function or [
            "net/http.serverHandler.ServeHTTP", "net/http.(*response).finishRequest", "runtime.newproc1",
            "runtime.gcStart", "google.golang.org/grpc.(*Server).handleStream",
            "google.golang.org/grpc.(*ClientConn).Invoke",
        ]
        cases.append((f"compile gocount.c + attach {len(funcs)} Go functions (entry+RETs)", "gofunc",
                      {"binary": binary, "functions": funcs}))
    print("wall s: from `import bcc` in a fresh process to loaded and attached (detach timed separately)")
    print(f"{'case':58} {'wall s':>8} {'peak RSS MB':>12} {'x baseline RSS':>15}  details")
    base_rss = None
    for label, mode, arg in cases:
        runs = [run(mode, arg) for _ in range(a.repeat)]
        rss = max(r["peak_rss_mb"] for r in runs)
        base_rss = base_rss or rss
        best = min(runs, key=lambda r: r["total_s"])
        detail = ", ".join(f"{k} {best[k]:.3f}" for k in ("compiled_s", "analysis_s", "attach_s", "detach_s") if k in best)
        if "probes" in best:
            detail += f", {best['probes']} uprobes"
        wall = best["total_s"]
        print(f"{label:58} {wall:8.3f} {rss:12.1f} {rss / base_rss:15.2f}  {detail}")
    if binary:
        print(f"Go binary: {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
    return 0


def _largest_fixture() -> str | None:
    """The largest fixture binary (built, cached, by tests/helpers/goapps.py)."""
    try:
        from tests.helpers import goapps
    except ImportError:
        return None
    paths = [goapps.build(app, "go1.27") for app in goapps.APPS]
    return str(max(paths, key=lambda p: p.stat().st_size))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    raise SystemExit(main())
