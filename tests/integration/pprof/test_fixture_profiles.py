"""The pprof receiver against the real `runtime` fixture (Go 1.27 and 1.19): what a user checks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gotel.pdata.batch import get_attr
from tests.helpers import goapps
from tests.helpers.pprofkit import (
    log_records,
    metric_points,
    otlp_function_values,
    otlp_inclusive_values,
    profiles_of,
)
from tests.helpers.waiting import wait_until

from .conftest import Harness, aget, http_get, target_of, wait_cpu_profile_running

pytestmark = pytest.mark.slow


def burn_for(app: goapps.RunningApp, seconds: float) -> threading.Thread:
    def run() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            http_get(app.url("/burn?ms=200"))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("toolchain", ["go1.27", "go1.19"])
async def test_cpu_profile_shows_hot_function_on_top(goapp, toolchain: str) -> None:
    app = goapp("runtime", toolchain=toolchain)
    h = Harness([target_of(app)], profiles={"cpu": {"interval": 3}})  # seconds = 2
    try:
        t = burn_for(app, 2.5)
        await h.scrape("cpu")
        t.join()
        profs = [(req, p) for req, p in profiles_of(h.sinks["profiles"], "cpu")
                 if req.dictionary.string_table[p.sample_type.type_strindex] == "cpu"]
        assert len(profs) == 1
        req, prof = profs[0]
        flat = otlp_function_values(req, prof)
        top = max(flat, key=lambda k: flat[k])
        assert top == "main.hotLoop", sorted(flat.items(), key=lambda kv: -kv[1])[:5]
        assert prof.duration_nano >= 1_900_000_000
        res = req.resource_profiles[0].resource.attributes
        assert get_attr(res, "service.name") == "runtime-fixture"
        up = metric_points(h.sinks["metrics"], "pprof.scrape.up")
        assert [dp.as_int for _r, dp in up] == [1]
    finally:
        await h.close()


def blocked_leakers(app: goapps.RunningApp) -> int:
    """The fixture's leaked goroutines blocked in chan receive, from its own debug=2 dump."""
    dump = http_get(app.url("/debug/pprof/goroutine?debug=2")).decode()
    return sum(1 for g in dump.split("\n\n") if "[chan receive" in g.split("\n", 1)[0] and "main.leakyWorker(" in g)


async def test_cpu_busy_is_classified_not_retried(goapp) -> None:
    app = goapp("runtime")
    h = Harness([target_of(app)], profiles={"cpu": {"interval": 3}})
    try:
        # someone else (a human with go tool pprof) holds the CPU profiler
        other = threading.Thread(target=http_get, args=(app.url("/debug/pprof/profile?seconds=3"),), daemon=True)
        other.start()
        await asyncio.to_thread(wait_cpu_profile_running, app)
        skip = await h.runner().scrape(__import__("gotel.receivers.pprof.receiver", fromlist=["KINDS"]).KINDS["cpu"],
                                       h.cfg.profiles.cpu)
        assert h.failures("cpu", "cpu_busy") == 1
        assert skip >= 1  # the loop waits extra intervals instead of hammering
        assert profiles_of(h.sinks["profiles"]) == []
        other.join()
    finally:
        await h.close()


async def test_heap_delta_shows_known_allocation(goapp) -> None:
    app = goapp("runtime")
    h = Harness([target_of(app)])
    size = 48 << 20
    try:
        await h.scrape("heap")  # baseline: nothing emitted
        assert profiles_of(h.sinks["profiles"], "heap") == []
        await aget(app.url(f"/alloc?bytes={size}"))
        await aget(app.url("/gc?n=2"))  # the heap profile publishes at the end of a GC cycle
        await h.scrape("heap")
        by_type = {req.dictionary.string_table[p.sample_type.type_strindex]: (req, p)
                   for req, p in profiles_of(h.sinks["profiles"], "heap")}
        req, prof = by_type["alloc_space"]
        got = otlp_inclusive_values(req, prof).get("main.allocRetained", 0)
        assert abs(got - size) <= 0.10 * size, f"main.allocRetained alloc_space delta {got} vs {size}"
        assert all(v >= 0 for _t, (_r, p) in by_type.items() for s in p.samples for v in s.values)
        # the delta holds only what happened since the baseline: a second delta without allocation is small
        h.sinks["profiles"].batches.clear()
        await aget(app.url("/gc"))
        await h.scrape("heap")
        again = {req.dictionary.string_table[p.sample_type.type_strindex]: (req, p)
                 for req, p in profiles_of(h.sinks["profiles"], "heap")}
        if "alloc_space" in again:
            r2, p2 = again["alloc_space"]
            assert otlp_inclusive_values(r2, p2).get("main.allocRetained", 0) < 0.1 * size
    finally:
        await h.close()


async def test_restart_gives_fresh_baseline_and_no_negative_values(goapp) -> None:
    app = goapp("runtime")
    port = app.port()
    h = Harness([target_of(app)])
    try:
        await h.scrape("heap")
        for _ in range(3):
            await aget(app.url(f"/alloc?bytes={8 << 20}"))
        await aget(app.url("/gc?n=2"))
        await h.scrape("heap")
        assert profiles_of(h.sinks["profiles"], "heap")
        app.stop()
        await h.scrape("heap")  # target down
        assert h.failures("heap", "refused") == 1
        app2 = goapp("runtime", f"-pprof=127.0.0.1:{port}")
        h.sinks["profiles"].batches.clear()
        await aget(app2.url("/alloc?bytes=1048576"))
        await aget(app2.url("/gc"))
        await h.scrape("heap")  # restart detected: new baseline, nothing emitted
        assert profiles_of(h.sinks["profiles"], "heap") == []
        assert h.value("gotel_pprof_target_restarts_total", target=h.runner().label, profile="heap") == 1
        await aget(app2.url(f"/alloc?bytes={4 << 20}"))
        await aget(app2.url("/gc?n=2"))
        await h.scrape("heap")
        profs = profiles_of(h.sinks["profiles"], "heap")
        assert profs
        assert all(v >= 0 for _req, p in profs for s in p.samples for v in s.values)
        by_type = {req.dictionary.string_table[p.sample_type.type_strindex]: (req, p) for req, p in profs}
        req, prof = by_type["alloc_space"]
        got = otlp_inclusive_values(req, prof).get("main.allocRetained", 0)
        assert abs(got - (4 << 20)) <= 0.1 * (4 << 20)
    finally:
        await h.close()


async def test_mutex_contention_sites_and_empty_profile_hint(goapp) -> None:
    app = goapp("runtime", "-mutex-fraction=1")
    plain = goapp("runtime")  # SetMutexProfileFraction never called
    h = Harness([target_of(app), target_of(plain, service_name="plain")],
                diagnostics={"contention_min_rate": 0.001})
    try:
        await h.scrape("mutex", 0)
        await aget(app.url("/mutex?ms=20&n=6"))
        await h.scrape("mutex", 0)
        recs = [r for r in log_records(h.sinks["logs"]) if r.event_name == "gotel.lock.contention"]
        assert recs, "no contention record"
        assert get_attr(recs[0].attributes, "code.function.name") == "main.contend"
        assert "lock contention" in recs[0].body.string_value
        delay = metric_points(h.sinks["metrics"], "gotel.lock.contention.delay")
        assert any(dp.as_double > 0.05 for _r, dp in delay)  # 5 waiters x 20 ms hold, at least
        await h.scrape("mutex", 1)
        assert h.failures("mutex", "empty_profile", 1) == 1
    finally:
        await h.close()


async def test_goroutine_leak_reported_within_k_dumps(goapp) -> None:
    app = goapp("runtime")
    k = 3
    h = Harness([target_of(app)], diagnostics={"leak_scrapes": k, "leak_min_goroutines": 5})
    try:
        findings = []
        dumps = 0
        while dumps < k + 2:
            await aget(app.url("/leak?n=4"))
            # a new goroutine may still be runnable (not yet in chan receive) when the handler returns:
            # wait until the target's own dump shows every leaked one blocked
            want = 4 * (dumps + 1)
            await asyncio.to_thread(wait_until, lambda want=want: blocked_leakers(app) >= want, 15, 0.05,
                                    "every leaked goroutine blocked")
            await h.scrape("goroutine_dump")
            dumps += 1
            findings = [r for r in log_records(h.sinks["logs"]) if r.event_name == "gotel.goroutine.growth"]
            if findings:
                break
        assert findings, "leak not reported"
        assert dumps <= k + 1  # the first dump is the start; K growths later it is reported
        f = findings[0]
        a = {kv.key: kv.value for kv in f.attributes}
        assert a["gotel.goroutine.wait.reason"].string_value == "chan receive"
        assert a["gotel.goroutine.wait.category"].string_value == "channel"
        assert a["code.function.name"].string_value == "main.leakyWorker"
        assert a["gotel.goroutine.created_by"].string_value == "main.startLeak"
        assert a["gotel.goroutine.created_at"].string_value.split("/")[-1].startswith("main.go:")
        assert a["gotel.goroutine.growth"].int_value >= 4 * k
        assert "main.startLeak" in f.body.string_value
        per_reason = metric_points(h.sinks["metrics"], "gotel.goroutines")
        assert any(get_attr(dp.attributes, "gotel.goroutine.wait.reason") == "chan receive" and dp.as_int >= 4 * k
                   for _r, dp in per_reason)
    finally:
        await h.close()


async def test_steady_program_has_no_finding(goapp) -> None:
    app = goapp("runtime")
    h = Harness([target_of(app)], diagnostics={"leak_scrapes": 3, "leak_min_goroutines": 1})
    try:
        for _ in range(6):
            await aget(app.url("/goroutines?n=50"))  # short-lived bursts: not a leak
            await h.scrape("goroutine_dump")
        assert [r for r in log_records(h.sinks["logs"]) if r.event_name.startswith("gotel.goroutine.")] == []
        assert metric_points(h.sinks["metrics"], "gotel.goroutines")
    finally:
        await h.close()


async def test_dump_budget_skips_big_targets(goapp) -> None:
    app = goapp("runtime")
    h = Harness([target_of(app)], profiles={"goroutine_dump": {"max_goroutines": 20}})
    try:
        await aget(app.url("/leak?n=50"))
        await h.scrape("goroutine_dump")
        assert h.value("gotel_pprof_dump_budget_skips_total", target=h.runner().label) == 1
        assert metric_points(h.sinks["metrics"], "gotel.goroutines") == []
    finally:
        await h.close()


async def test_goroutineleak_endpoint(goapp) -> None:
    new = goapp("runtime", toolchain="go1.27")
    old = goapp("runtime", toolchain="go1.19")
    h = Harness([target_of(new), target_of(old)])
    try:
        await h.scrape("goroutineleak", 0)
        assert h.failures("goroutineleak", "not_found", 0) == 0
        leaked = metric_points(h.sinks["metrics"], "gotel.goroutine.leaked")
        assert [dp.as_int for _r, dp in leaked] == [0]  # nothing unreachable is blocked in a fresh program
        await h.scrape("goroutineleak", 1)
        assert h.failures("goroutineleak", "not_found", 1) == 1  # Go 1.19 has no such profile
        assert "goroutineleak" in h.runner(1).unsupported
    finally:
        await h.close()
