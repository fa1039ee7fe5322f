"""The rules on hand-made snapshots: thresholds decide severity at their documented defaults, overrides
are checked, and a missing signal makes a rule say why it did not run."""

from __future__ import annotations

import pytest

from gotel.diagnose.gather import parse_memstats
from gotel.diagnose.rules import BY_ID, RULES, check_overrides, evaluate
from gotel.diagnose.signals import ProcSample, Snapshot
from gotel.host.procfs import CgroupStats

CATEGORIES = {"cpu_throttling", "run_queue_latency", "gc", "slow_syscall", "lock_contention", "goroutine_leak",
              "deadline", "grpc_errors", "fd_leak", "tcp_retransmits"}


def test_one_rule_per_category_with_documented_thresholds() -> None:
    assert {r.id for r in RULES} == CATEGORIES == {r.category for r in RULES}
    for r in RULES:
        assert r.thresholds and all(t.doc and t.unit for t in r.thresholds), r.id


def _throttled(periods: int, throttled: int) -> Snapshot:
    def cg(p: int, t: int, usage: float) -> CgroupStats:
        return CgroupStats(version=1, path="/x", periods=p, throttled_periods=t, throttled_s=t * 0.08,
                           quota_cores=0.2, cpu_usage_s=usage)

    s = Snapshot(pid=1, gomaxprocs=2, go_version="go1.19.8")
    s.samples = [ProcSample(t=0.0, cgroup=cg(1000, 100, 10.0)),
                 ProcSample(t=10.0, cgroup=cg(1000 + periods, 100 + throttled, 12.0))]
    return s


@pytest.mark.parametrize(("throttled", "severity"), [(5, None), (10, "warning"), (49, "warning"), (50, "critical")])
def test_throttling_severity_at_the_defaults(throttled: int, severity: str | None) -> None:
    rep = evaluate(_throttled(100, throttled))
    found = [f for f in rep.findings if f.rule == "cpu_throttling"]
    if severity is None:
        # below the warning threshold, GOMAXPROCS above the limit is still worth an info
        assert [f.severity for f in found] == ["info"]
    else:
        assert [f.severity for f in found] == [severity]
        assert found[0].evidence["nr_throttled"] == throttled and found[0].evidence["nr_periods"] == 100
        assert found[0].evidence["gomaxprocs_above_limit"] is True


def test_override_changes_the_threshold_and_unknown_names_fail() -> None:
    rep = evaluate(_throttled(100, 20), {"cpu_throttling": {"throttled_ratio_warning": 0.3}})
    assert [f.severity for f in rep.findings if f.rule == "cpu_throttling"] == ["info"]
    with pytest.raises(ValueError, match="unknown threshold 'nope'"):
        check_overrides({"gc": {"nope": 1}})
    with pytest.raises(ValueError, match="unknown rule 'gcc'"):
        check_overrides({"gcc": {}})


def test_missing_signals_are_named() -> None:
    s = Snapshot(pid=1, missing={"memstats": "no pprof endpoint: none of pid 1's ports"})
    rep = evaluate(s)
    why = dict(rep.not_run)
    assert why["gc"] == "no pprof endpoint: none of pid 1's ports"
    assert why["fd_leak"] == "signal 'fds' was not observed"
    assert set(why) == set(BY_ID)


TRAILER = """# runtime.MemStats
# Alloc = 273344
# NextGC = 4194304
# LastGC = 1765062250123456789
# PauseNs = [1000 2000 3000 0 0]
# PauseEnd = [1765062250000000000 1765062250100000000 1765062250123456789 0 0]
# NumGC = 3
# NumForcedGC = 0
# GCCPUFraction = 0.0123
# DebugGC = false
"""


def test_memstats_trailer() -> None:
    m = parse_memstats("heap profile: 1: 2 [3: 4] @ heap/1048576\n" + TRAILER, 5.0)
    assert m is not None
    assert (m.num_gc, m.gc_cpu_fraction, m.pause_ns[:3], m.last_gc_unix_ns) == (3, 0.0123, [1000, 2000, 3000],
                                                                              1765062250123456789)
    assert parse_memstats("heap profile: no trailer\n", 0.0) is None


def test_docs_list_every_threshold_with_its_default() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "diagnose.md").read_text()
    for r in RULES:
        for t in r.thresholds:
            assert f"| `{r.id}` | `{t.name}` | {t.default:g} | {t.unit} |" in doc, (r.id, t.name)
