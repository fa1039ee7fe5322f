"""Memory of the default agent: PSS steady and at start-up, per process and summed over its process tree.

    .venv/bin/python bench/footprint/run.py [--settle 20] [--calls 2000]

The embedded default config (go_ebpf, go_runtime, process, pprof; its two fixed ports replaced by free
ones, and each receiver's discovery narrowed to the fixture's pid: other Go processes on a shared host
would make the figure theirs) runs with `gotel run` while it traces the grpcapp fixture's server, which
a client drives with calls. Measured in the same run, one after the other against the same server:

* a bare Python interpreter (`python -c` sleeping): the floor of any Python process here;
* "before": the agent with GOTEL_NO_TRIM=1 GOTEL_NO_FORKSERVER=1: no malloc_trim, no arena cap, the
  compiler's code pages left mapped (gotel.host.memory), every receiver process a fresh interpreter;
* "trim only": GOTEL_NO_FORKSERVER=1;
* "exec'd fork server": GOTEL_NO_PREFORK=1: receiver processes forked from a fork server that is a fresh
  interpreter (imports of its own), as before the fork server was forked from `gotel run` itself;
* "BCC rw engine": GOTEL_BCC_RW_ENGINE=1: BCC's modules built its own way, keeping the LLVM context and
  JIT engine of their compile for as long as the program lives (gotel.ebpf.program);
* "one process each": the previous round's agent: GOTEL_KEEP_FORKSERVER=1 (the fork server stays for
  restarts), GOTEL_ALL_PLUGINS=1 (`gotel run` imports every installed plugin) and
  service::supervisor::own_process [pprof, process] (each light receiver in its own process);
* "shipped": the agent as it ships (trims, compiler code dropped, receiver processes forked from a fork
  server forked from `gotel run` before its event loop: one copy of the imports for the whole tree;
  BCC modules built without the rw engine, so LLVM's memory is freed at the end of each compile; the
  light receivers process and pprof in one receiver process; the fork server retired once every
  receiver process started; only the configured components imported).

Restart: in "one process each" and "shipped", after the steady samples, the go_ebpf receiver process is
killed (SIGKILL) and the time until it traces the server again is taken, and the tree's PSS --settle
seconds later: what a restart costs when it is forked from the fork server and when, the fork server
retired, it is a fresh interpreter.

Start-up peak: the largest PSS sum over the agent's tree while it starts and attaches (sampled every
0.1 s), the largest PSS of each process over those samples, and each process's VmHWM (peak RSS, shared
pages counted in full). Steady: the median of five samples, one a second, after the calls and --settle
seconds. The tree is found by pid, never by name.
Goal (issue 20): steady PSS <= 200 MB in all. Never fails on the figures: it prints them and ratios.
Needs root (the eBPF receivers). docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.agent import GOTEL, free_port
from tests.helpers import goapps
from tests.helpers.procmem import ProcMem, default_config, proc_mem, total_pss_mib, tree_mem

MB = 1e6 / 1024  # KiB per MB (the figures are in MB)


@dataclass
class Run:
    label: str
    peak_pss: float  # MB, largest sum over the tree during start-up
    peak_each: dict[str, float]  # MB, largest PSS of each process during start-up
    steady: list[ProcMem]  # the median sample's processes
    steady_pss: float  # MB, median of the samples' sums
    hwm: dict[str, float]  # MB VmHWM per process name, at the end
    startup_s: float  # until go_ebpf traced the server
    restart_s: float | None = None  # go_ebpf killed: until it traced the server again
    restarted: list[ProcMem] | None = None  # the tree --settle seconds after that


def _cell(mb: float | None) -> str:
    """A table cell: a process a configuration does not have is a dash, not a number."""
    return f"{mb:7.1f}" if mb is not None else f"{'-':>7}"


def _ratio(after: float | None, before: float | None) -> str:
    return f"{after / before:5.2f}x" if after is not None and before else f"{'-':>6}"


def _mb(kib: float) -> float:
    return kib / MB


def bare_python() -> float:
    """PSS (MB) of an idle interpreter: what any Python process costs on this host."""
    p = subprocess.Popen([sys.executable, "-c", "import sys, time; print(1, flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        time.sleep(0.5)
        m = proc_mem(p.pid)
        assert m is not None
        return _mb(m.kib["Pss"])
    finally:
        p.kill()
        p.wait()


def run_agent(label: str, env_extra: dict[str, str], server: goapps.RunningApp, calls: int, settle: float,
              workdir: Path, own_process: bool = False, restart: bool = False) -> Run:
    wd = workdir / label.replace(" ", "_").replace("'", "")
    wd.mkdir()
    cfg = wd / "config.yaml"
    text = default_config(free_port(), free_port(), server.pid)
    if own_process:
        text = text.replace("\nservice:\n", "\nservice:\n  supervisor: {own_process: [pprof, process]}\n", 1)
    cfg.write_text(text)
    log = wd / "gotel.log"
    env = {**os.environ, **env_extra}
    with open(log, "wb") as out:
        agent = subprocess.Popen([GOTEL, "run", "-c", str(cfg)], cwd=wd, stdout=out, stderr=subprocess.STDOUT,
                                 env=env)
    try:
        t0 = time.monotonic()
        peak = 0.0
        peak_each: dict[str, float] = {}

        def sample() -> float:
            mems = tree_mem(agent.pid)
            for m in mems:
                peak_each[m.name] = max(peak_each.get(m.name, 0.0), _mb(m.kib["Pss"]))
            return _mb(sum(m.kib["Pss"] for m in mems))

        traced = f"traced pid {server.pid} "
        while traced not in log.read_text(errors="replace"):
            if agent.poll() is not None or time.monotonic() - t0 > 180:
                raise SystemExit(f"{label}: agent did not trace the server:\n{log.read_text(errors='replace')[-3000:]}")
            peak = max(peak, sample())
            time.sleep(0.1)
        startup = time.monotonic() - t0
        for _ in range(20):  # the other receivers may still be starting
            peak = max(peak, sample())
            time.sleep(0.1)
        goapps.run("grpcapp", "client", "-target", f"127.0.0.1:{server.ports['grpc']}", "-n", str(calls),
                   toolchain="go1.27")
        time.sleep(settle)
        samples = []
        for _ in range(5):
            mems = tree_mem(agent.pid)
            samples.append((total_pss_mib(mems), mems))
            time.sleep(1)
        samples.sort(key=lambda s: s[0])
        steady = samples[len(samples) // 2][1]
        hwm = {m.name: _mb(m.hwm_kib) for m in tree_mem(agent.pid)}
        run = Run(label, peak, peak_each, steady, _mb(sum(m.kib["Pss"] for m in steady)), hwm, startup)
        if restart:
            [ebpf] = [m for m in tree_mem(agent.pid) if m.name == "receiver go_ebpf"]
            seen = log.read_text(errors="replace").count(traced)
            t1 = time.monotonic()
            os.kill(ebpf.pid, signal.SIGKILL)
            while log.read_text(errors="replace").count(traced) <= seen:
                if agent.poll() is not None or time.monotonic() - t1 > 120:
                    raise SystemExit(f"{label}: go_ebpf not back:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.05)
            # by the log's own clock: from the supervisor's line about the kill to the next "traced"
            text = log.read_text(errors="replace")
            killed = text.index("receiver go_ebpf was killed by signal 9")
            back = text.index(traced, killed)
            stamp = [datetime.strptime(text[text.rindex("\n", 0, i) + 1:][:23], "%Y-%m-%d %H:%M:%S,%f")
                     for i in (killed, back)]
            run.restart_s = (stamp[1] - stamp[0]).total_seconds()
            time.sleep(settle)
            run.restarted = tree_mem(agent.pid)
        return run
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after the calls before sampling")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/footprint needs root: the default agent's eBPF receivers load BPF programs")
    server = goapps.RunningApp([str(goapps.build("grpcapp", "go1.27")), "server"])
    try:
        with tempfile.TemporaryDirectory(prefix="gotel-footprint-") as tmp:
            bare = bare_python()
            runs = [run_agent(label, env, server, args.calls, args.settle, Path(tmp), own_process=label == "one process each",
                              restart=label in ("one process each", "shipped")) for label, env in (
                ("before", {"GOTEL_NO_TRIM": "1", "GOTEL_NO_FORKSERVER": "1"}),
                ("trim only", {"GOTEL_NO_FORKSERVER": "1"}),
                ("exec'd fork server", {"GOTEL_NO_PREFORK": "1"}),
                ("BCC rw engine", {"GOTEL_BCC_RW_ENGINE": "1"}),
                ("one process each", {"GOTEL_KEEP_FORKSERVER": "1", "GOTEL_ALL_PLUGINS": "1"}),
                ("shipped", {}))]
    finally:
        server.stop()
    before, after = runs[0], runs[-1]
    labels = " | ".join(r.label for r in runs)
    print(f"bare Python interpreter: {bare:.1f} MB PSS")
    print(f"steady PSS per process (MB): {labels} | shipped/before   [shipped: private MB; PSS anon / file]")
    pss = [{m.name: _mb(m.kib["Pss"]) for m in r.steady} for r in runs]
    names = list(dict.fromkeys([m.name for r in runs for m in r.steady]))
    shipped = {m.name: m for m in after.steady}
    for name in names:
        vals = [p.get(name) for p in pss]
        m = shipped.get(name)
        extra = (f"[{_mb(m.kib['Private_Clean'] + m.kib['Private_Dirty']):6.1f}; {_mb(m.kib.get('Pss_Anon', 0)):6.1f} / "
                 f"{_mb(m.kib.get('Pss_File', 0)):6.1f}]") if m else ""
        print(f"  {name:<22} " + " | ".join(_cell(v) for v in vals) + f" | {_ratio(vals[-1], vals[0])}   {extra}")
    print(f"  {'total':<22} " + " | ".join(f"{r.steady_pss:7.1f}" for r in runs) +
          f" | {after.steady_pss / before.steady_pss:5.2f}x   "
          f"(goal <= 200 MB: {'met' if after.steady_pss <= 200 else 'NOT met'})")
    print(f"  = {after.steady_pss / bare:.1f}x a bare Python interpreter")
    prev = runs[-2]
    print(f"  this round: shipped / {prev.label} = {after.steady_pss / prev.steady_pss:.2f}x "
          f"({after.steady_pss:.1f} / {prev.steady_pss:.1f} MB)")
    print(f"start-up peak, PSS summed over the tree (MB): {labels}: " + " | ".join(f"{r.peak_pss:.1f}" for r in runs) +
          f" | shipped/before {after.peak_pss / before.peak_pss:.2f}x")
    print(f"start-up peak PSS per process, the largest reading while it started (MB): {labels}")
    for name in names:
        print(f"  {name:<22} " + " | ".join(_cell(r.peak_each.get(name)) for r in runs))
    print(f"start-up peak RSS per process, VmHWM (MB; shared pages counted in each): {labels}")
    for name in names:
        print(f"  {name:<22} " + " | ".join(_cell(r.hwm.get(name)) for r in runs))
    print("time until go_ebpf traced the server (s): " + " | ".join(f"{r.label} {r.startup_s:.1f}" for r in runs))
    for r in runs:
        if r.restart_s is None or r.restarted is None:
            continue
        each = ", ".join(f"{m.name} {_mb(m.kib['Pss']):.1f}" for m in r.restarted)
        print(f"{r.label}: go_ebpf killed, tracing again after {r.restart_s:.1f} s; {args.settle:.0f} s later the tree "
              f"holds {_mb(sum(m.kib['Pss'] for m in r.restarted)):.1f} MB PSS ({r.steady_pss:.1f} before): {each}")


if __name__ == "__main__":
    main()
