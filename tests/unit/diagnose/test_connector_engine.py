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
