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
    out["compiled_s"] = time.perf_counter() - t0
    sites = function_sites(arg["binary"], arg["functions"], "gotel_gocount")
    for s in sites:
        p.attach_uprobe(arg["binary"], s.vaddr, s.fn_name)
    out["probes"] = p.probe_count()
out["total_s"] = time.perf_counter() - t0
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
        funcs = a.function or ["net/http.serverHandler.ServeHTTP", "runtime.newproc1", "runtime.gcStart"]
        cases.append((f"compile gocount.c + attach {len(funcs)} Go functions (entry+RETs)", "gofunc",
                      {"binary": binary, "functions": funcs}))
    print(f"{'case':58} {'wall s':>8} {'peak RSS MB':>12} {'x baseline RSS':>15}  probes")
    base_rss = None
    for label, mode, arg in cases:
        runs = [run(mode, arg) for _ in range(a.repeat)]
        wall = min(r["wall_s"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        base_rss = base_rss or rss
        probes = runs[0].get("probes", "")
        print(f"{label:58} {wall:8.3f} {rss:12.1f} {rss / base_rss:15.2f}  {probes}")
    if binary:
        print(f"Go binary: {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
    return 0


def _largest_fixture() -> str | None:
    try:
        from tests.helpers import goapps  # type: ignore[import-not-found]
    except Exception:
        return None
    paths = []
    for fn in ("built_binaries", "all_binaries"):
        f = getattr(goapps, fn, None)
        if callable(f):
            try:
                paths = [str(p) for p in f()]
            except Exception:
                paths = []
            break
    return max(paths, key=os.path.getsize) if paths else None


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    raise SystemExit(main())
