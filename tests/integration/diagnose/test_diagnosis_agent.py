"""`gotel run` with the pprof receiver feeding the `diagnosis` connector, as a user would configure it:
the gc, slow_syscall and goroutine_leak rules run in the agent from the pprof receiver's memstats,
allocation-site (heap deltas) and goroutine-group metrics, and with eBPF from sched's slow syscalls. Each fault of the faults fixture gives exactly one finding
record per episode, with the right category and blamed function, its evidence checked against the
program's own counters and runtime metrics (/truth); the healthy fixture gets none. A slow_syscall
finding's capture holds the stacks of the goroutines that sat in the kernel."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gotel.pdata.batch import attr_dict
from tests.e2e.agent import Agent
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = [pytest.mark.slow]

WINDOW = 5.0
RUN = 16.0  # ~3 windows: a fault found early must still be one record at the end


def config(pid: int, sink: OTLPGrpcSink, captures: Path, ebpf: bool = False) -> str:
    off = "{enabled: false}"
    sched = f"""
  sched:
    discovery: {{pids: [{pid}]}}
    collection_interval: 1s""" if ebpf else ""
    return f"""
receivers:{sched}
  pprof:
    discovery: {{pids: [{pid}], refresh_interval: 1s}}
    jitter: false
    profiles:
      cpu: {off}
      heap: {{interval: 1s}}
      mutex: {off}
      block: {off}
      goroutine: {off}
      goroutineleak: {off}
      goroutine_dump: {off if ebpf else "{interval: 1s}"}
      memstats: {{interval: 1s}}
connectors:
  diagnosis:
    window: {WINDOW}s
    capture: {{directory: {captures}, cpu_duration: 2s, min_interval: 1h}}
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
  pipelines:
    metrics:
      receivers: [{"sched, " if ebpf else ""}pprof]
      exporters: [diagnosis]
    logs/findings:
      receivers: [diagnosis]
      exporters: [otlp]
"""


def run_agent(pid: int, tmp_path: Path, seconds: float = RUN,
              ebpf: bool = False) -> tuple[list[tuple[dict[str, Any], dict[str, Any], Any]], Agent]:
    """(resource, attributes, record) of every finding the agent exported while it watched pid."""
    captures = tmp_path / "captures"
    with OTLPGrpcSink() as sink:
        agent = Agent(config(pid, sink, captures, ebpf), tmp_path).start()
        try:
            agent.wait_ready()
            # BCC compiles sched's program in its receiver process first: seconds, more on a loaded host
            end = time.monotonic() + 180
            while ebpf and "receiver sched running" not in agent.output():
                assert time.monotonic() < end and agent.proc is not None and agent.proc.poll() is None, agent.output()
                time.sleep(0.2)
            time.sleep(seconds)
        finally:
            assert agent.stop() == 0, agent.output()
        recs = [(attr_dict(rl.resource.attributes), attr_dict(r.attributes), r)
                for req in sink.received.logs for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    return recs, agent


def only(recs: list[tuple[dict[str, Any], dict[str, Any], Any]], rule: str, pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
    mine = [(a, json.loads(a["gotel.finding.evidence"])) for res, a, _r in recs
            if a.get("gotel.finding.rule") == rule and res.get("process.pid") == pid]
    assert len(mine) == 1, [(a["gotel.finding.rule"], r.body.string_value) for _res, a, r in recs]
    a, ev = mine[0]
    assert a["gotel.finding.category"] == rule and a["gotel.finding.severity"] in ("warning", "critical")
    return a, ev


def test_gc_churn_one_record_blaming_the_allocation_site(goapp: Any, tmp_path: Path) -> None:
    app = goapp("faults", "-fault", "gc")
    before = app.get_json("/truth")
    recs, _ = run_agent(app.pid, tmp_path)
    after = app.get_json("/truth")
    a, ev = only(recs, "gc", app.pid)
    assert a["code.function.name"] == "main.churn" and a["code.file.path"].endswith("faults/main.go"), a
    assert ev["top_allocation_sites"][0]["function"] == "main.churn"
    # the window's cycles (NumGC from MemStats) within the program's own count over the whole run
    truth_cycles = after["gc_cycles"] - before["gc_cycles"]  # runtime/metrics /gc/cycles/total:gc-cycles
    rate = truth_cycles / (after["unix_ns"] - before["unix_ns"]) * 1e9
    assert 0 < ev["gc_cycles"] <= truth_cycles and ev["gc_cycles"] >= 0.5 * rate * ev["window_s"], (ev, rate)
    # the window's GC CPU share against the program's cumulative one: it has churned since it started
    assert ev["gc_cpu_fraction"] >= 0.10
    assert ev["gc_cpu_fraction"] == pytest.approx(after["gc_cpu_fraction"], abs=0.1), (ev, after)
    # pauses of the window's cycles (MemStats.PauseNs) within the program's own PauseTotalNs over the run
    assert 0 < ev["stw_pause_max_s"] <= ev["stw_pause_total_s"]
    assert ev["stw_pause_total_s"] <= (after["pause_total_ns"] - before["pause_total_ns"]) / 1e9, (ev, after)


@pytest.mark.parametrize("ebpf", [False, pytest.param(True, marks=pytest.mark.root)], ids=["dumps", "ebpf"])
def test_blocking_syscalls_one_record_with_their_stacks(goapp: Any, tmp_path: Path, ebpf: bool) -> None:
    """From the pprof receiver's goroutine groups in a syscall, and with eBPF (dumps off) from the sched
    receiver's slow syscalls by calling function. Either way the capture holds the stacks."""
    app = goapp("faults", "-fault", "syscall", "-workers", "2")
    before = app.get_json("/truth")
    recs, _ = run_agent(app.pid, tmp_path, ebpf=ebpf)
    after = app.get_json("/truth")
    a, ev = only(recs, "slow_syscall", app.pid)
    assert a["code.function.name"] == "main.blockingSleep", a
    calls = after["syscalls"] - before["syscalls"]  # the program's own count of its blocking calls
    rate = calls / (after["unix_ns"] - before["unix_ns"]) * 1e9
    assert calls >= 2 * RUN / 0.06, calls  # it did block all along
    if not ebpf:
        assert ev["source"] == "goroutine dumps" and a["code.line.number"] > 0
        # two goroutines sleep 50 ms in the kernel and ~1 ms outside it: about 2 are in the syscall at any time
        assert 1.0 <= ev["goroutines_in_syscall_avg"] <= 2.0, ev
    else:
        assert (ev["source"], ev["syscall"]) == ("ebpf", "nanosleep"), ev
        # calls between the first and last reading of the window: the program's rate over that span, and
        # each call 50 ms in the kernel
        assert 0.7 * rate * ev["window_s"] <= ev["calls"] <= 1.3 * rate * ev["window_s"], (ev, rate)
        assert 0.045 <= ev["total_s"] / ev["calls"] <= 0.2, ev
        assert 1.0 <= ev["blocked_threads_avg"] <= 2.2, ev
    # the capture: the stacks of the goroutines in the kernel during its window, the finding's function first
    path = Path(a["gotel.finding.capture.syscall_stacks"])
    assert path.parent == Path(a["gotel.finding.capture.path"])
    meta = json.loads((path.parent / "capture.json").read_text())
    assert meta["outcome"] == "ok" and "syscall_stacks.txt" in meta["files"], meta
    text = path.read_text()
    first = text.split("\n## ", 2)[1]
    assert first.startswith("main.blockingSleep (") and "syscall.Nanosleep" in first, text
    avg = float(first.split("): ", 1)[1].split(" goroutines", 1)[0])
    assert 1.0 <= avg <= 2.0, first


def test_goroutine_leak_one_record_blaming_the_blocked_function(goapp: Any, tmp_path: Path) -> None:
    app = goapp("faults", "-fault", "leak")
    before = app.get_json("/truth")
    recs, _ = run_agent(app.pid, tmp_path)
    after = app.get_json("/truth")
    a, ev = only(recs, "goroutine_leak", app.pid)
    assert a["code.function.name"] == "main.leakyWorker", a
    assert ev["created_by"] == "main.startLeak" and ev["wait_reason"] == "chan receive", ev
    truth = after["leaked"] - before["leaked"]  # the program's own count of goroutines it started
    rate = truth / (after["unix_ns"] - before["unix_ns"]) * 1e9
    assert 0 < ev["growth"] <= truth and ev["growth"] >= 0.6 * rate * ev["window_s"], (ev, rate)
    assert ev["count_series"][-1] <= after["leaked"] and ev["goroutines_end"] <= after["goroutines"]


def test_healthy_fixture_gets_no_finding(goapp: Any, tmp_path: Path) -> None:
    app = goapp("faults", "-fault", "healthy")
    recs, _ = run_agent(app.pid, tmp_path, seconds=12.0)
    assert [r.body.string_value for _res, _a, r in recs] == []
