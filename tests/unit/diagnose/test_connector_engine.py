"""The diagnosis connector's engine on process-receiver-shaped batches: one finding per episode, episodes
end after clear_evaluations clean evaluations, processes beyond max_processes are counted, not tracked."""

from __future__ import annotations

from typing import Any

from gotel.connectors.diagnosis import Config, Engine
from gotel.pdata.builders import MetricsBuilder


def batch(tick: int, throttled: int, pids: tuple[int, ...] = (7,)) -> Any:
    """Cumulative readings 10 s apart; 100 CFS periods per tick, `throttled` of them throttled so far."""
    mb = MetricsBuilder("test", time_ns=int((1_800_000_000 + tick * 10) * 1e9))
    for pid in pids:
        cid = f"{pid:064x}"
        res = {"process.pid": pid, "container.id": cid, "k8s.pod.name": f"pod-{pid}"}
        mb.sum(res, "process.cpu.time", 1.0 * tick, "s", attributes={"cpu.mode": "user"})
        mb.sum(res, "process.schedstat.run_delay", 0.0, "s")
        mb.sum(res, "process.schedstat.timeslices", 100 * tick, "{timeslice}")
        cg = {"gotel.cgroup.path": f"/kubepods/pod{pid}/{cid}", "gotel.cgroup.version": 2, "container.id": cid}
        mb.sum(cg, "container.cpu.periods", 100 * tick, "{period}")
        mb.sum(cg, "container.cpu.throttled.periods", throttled, "{period}")
        mb.gauge(cg, "container.cpu.limit", 0.5, "{cpu}")
    return mb.req


def test_one_finding_per_episode() -> None:
    # ticks 1-4 throttled 60/100, 5-9 not at all, 10-12 throttled again
    plan = [60] * 4 + [0] * 5 + [60] * 3
    eng = Engine(Config.model_validate({"window": 10, "clear_evaluations": 2}))
    started = []
    for tick in range(1, 13):
        for res, f in eng.ingest(batch(tick, sum(plan[:tick]))):
            started.append((tick, f.rule, f.severity, res["k8s.pod.name"]))
    throttling = [s for s in started if s[1] == "cpu_throttling"]
    assert throttling == [(2, "cpu_throttling", "critical", "pod-7"), (10, "cpu_throttling", "critical", "pod-7")]
    f = eng.procs[7]
    assert "cpu_throttling" in f.active
    assert eng.not_run["gc"] == eng.evaluations  # no MemStats in these metrics


def test_processes_beyond_the_bound_are_counted() -> None:
    eng = Engine(Config.model_validate({"max_processes": 2}))
    eng.ingest(batch(1, 0, pids=(1, 2, 3)))
    assert sorted(eng.procs) == [1, 2] and eng.dropped_processes == 1


T0 = 1_800_000_000


def pprof_batch(tick: int, pid: int = 9) -> Any:
    """What the pprof receiver sends for one process each second: a MemStats reading (20 GC cycles a second,
    30% of the CPU, pauses of 1 and 3 ms since the last one), the allocs delta's sites and one dump's groups
    (a group growing by 100 a dump beside a steady one)."""
    mb = MetricsBuilder("test", time_ns=int((T0 + tick) * 1e9))
    res = {"process.pid": pid, "k8s.pod.name": "churner"}
    mb.sum(res, "go.gc.cycles", 20 * tick, "{gc_cycle}")
    mb.gauge(res, "gotel.go.gc.cpu_fraction", 0.3, "1")
    mb.gauge(res, "gotel.go.gc.last", T0 + tick - 0.01, "s")
    mb.gauge(res, "gotel.go.gc.pause.max", 0.003, "s")
    mb.gauge(res, "gotel.go.gc.pause.sum", 0.004, "s")
    for fn, line, n in (("main.churn", 63, 1 << 30), ("main.other", 80, 1 << 20)):
        mb.sum(res, "gotel.memory.allocated.site", n, "By",
               attributes={"code.function.name": fn, "code.file.path": "/src/main.go", "code.line.number": line})
    for fn, reason, by, n in (("main.leakyWorker", "chan receive", "main.startLeak", 100 * tick),
                              ("main.serve", "IO wait", "main.main", 4)):
        mb.gauge(res, "gotel.goroutine.group.count", n, "{goroutine}", attributes={
            "gotel.goroutine.state": "waiting", "gotel.goroutine.wait.reason": reason,
            "code.function.name": fn, "code.file.path": "/src/main.go", "code.line.number": 90,
            "gotel.goroutine.created_by": by, "gotel.goroutine.created_at": "/src/main.go:99"})
    mb.gauge(res, "gotel.goroutines", 100 * tick + 4 + 3, "{goroutine}")
    return mb.req


def sched_batch(tick: int, pid: int = 9) -> Any:
    """The sched receiver's cumulative slow syscalls by caller: 40 nanosleeps of 50 ms a second."""
    mb = MetricsBuilder("test", time_ns=int((T0 + tick) * 1e9))
    a = {"gotel.syscall.name": "nanosleep", "code.function.name": "main.blockingSleep"}
    mb.sum({"process.pid": pid}, "process.syscall.slow.caller.count", 40 * tick, "{syscall}", attributes=a)
    mb.sum({"process.pid": pid}, "process.syscall.slow.caller.time", 2.0 * tick, "s", attributes=a)
    return mb.req


def test_gc_and_leak_from_pprof_metrics_once_per_episode() -> None:
    eng = Engine(Config.model_validate({"window": 6, "evaluation_interval": 0}))
    started = [(tick, res["k8s.pod.name"], f) for tick in range(1, 16) for res, f in eng.ingest(pprof_batch(tick))]
    by_rule = {f.rule: (tick, f) for tick, _pod, f in started}
    assert sorted(by_rule) == ["gc", "goroutine_leak"] and len(started) == 2, started
    tick, gc = by_rule["gc"]
    assert tick == 4  # judged once the readings cover half the window (3 s)
    assert (gc.severity, gc.location.function, gc.location.line) == ("critical", "main.churn", 63)
    ev = gc.evidence
    assert ev["gc_cycles"] == 60 and ev["stw_pause_max_s"] == 0.003 and ev["stw_pause_total_s"] == 0.012
    assert ev["top_allocation_sites"][0]["function"] == "main.churn"
    _tick, leak = by_rule["goroutine_leak"]
    assert (leak.location.function, leak.evidence["created_by"]) == ("main.leakyWorker", "main.startLeak")
    assert leak.evidence["growth"] == 300 and leak.evidence["goroutines_end"] == 100 * 4 + 7
    # not run only while the readings covered less than half the window (ticks 2 and 3); then fine or found
    assert eng.not_run["gc"] == eng.not_run["goroutine_leak"] == eng.not_run["slow_syscall"] == 2, eng.not_run


def test_slow_syscalls_from_sched_metrics() -> None:
    eng = Engine(Config.model_validate({"window": 6, "evaluation_interval": 0}))
    started = [f for tick in range(1, 10) for _res, f in eng.ingest(sched_batch(tick))]
    assert [f.rule for f in started] == ["slow_syscall"]
    f = started[0]
    assert (f.severity, f.location.function) == ("warning", "main.blockingSleep")
    ev = f.evidence
    assert (ev["source"], ev["syscall"], ev["window_s"], ev["calls"]) == ("ebpf", "nanosleep", 3.0, 120)
    assert ev["blocked_threads_avg"] == 2.0 and ev["max_s"] is None


def test_other_receivers_series_are_not_proc_samples() -> None:
    eng = Engine(Config.model_validate({"window": 100}))
    for tick in range(1, 4):
        eng.ingest(batch(tick, 0, pids=(9,)))
        eng.ingest(pprof_batch(tick))
    assert len(eng.procs[9].samples) == 3 and all(s.cpu_s is not None for s in eng.procs[9].samples)


def test_a_process_is_evaluated_once_per_interval_of_its_readings() -> None:
    """Each receiver's batch touches the process; with two receivers a second and evaluation_interval 5s,
    the rules run once per 5 s of readings, not twice a second."""
    eng = Engine(Config.model_validate({"window": 6, "evaluation_interval": 5}))
    found = []
    for tick in range(1, 22):
        found += [f.rule for _res, f in eng.ingest(pprof_batch(tick))]
        found += [f.rule for _res, f in eng.ingest(sched_batch(tick))]
    assert eng.evaluations == 4  # 42 batches; evaluated at ticks 2, 7, 12 and 17
    assert sorted(found) == ["gc", "goroutine_leak", "slow_syscall"]
