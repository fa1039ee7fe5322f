from __future__ import annotations

from gotel.receivers.pprof.contention import top_sites
from tests.helpers.pprofkit import MUTEX_TYPES, make_profile


def test_sites_ranked_by_delay_per_second_and_profiler_waits_ignored() -> None:
    p = make_profile(MUTEX_TYPES, [
        (["sync.(*Mutex).Lock", "main.contend", "main.main"], [100, 3_000_000_000]),
        (["sync.(*Mutex).Lock", "main.cache", "main.main"], [10, 1_000_000_000]),
        (["runtime.selectgo", "net/http/pprof.sleep", "net/http/pprof.Profile"], [1, 9_000_000_000]),
    ])
    sites = top_sites(p, 10.0, 5)
    assert [s.function for s in sites] == ["main.contend", "main.cache"]
    assert sites[0].primitive == "sync.(*Mutex).Lock"
    assert abs(sites[0].delay_per_second - 0.3) < 1e-9 and sites[0].contentions_per_second == 10
