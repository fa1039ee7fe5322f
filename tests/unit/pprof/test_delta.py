"""Deltas of cumulative profiles: only alloc_*/contentions/delay subtracted, restarts, bounds."""

from __future__ import annotations

from gotel.formats import pprof
from gotel.receivers.pprof.delta import DeltaState
from tests.helpers.pprofkit import HEAP_TYPES, MUTEX_TYPES, make_profile

A = ["main.allocRetained", "main.main"]
B = ["main.other", "main.main"]


def heap(a: list[int], b: list[int], t: int) -> pprof.Profile:
    return make_profile(HEAP_TYPES, [(A, a), (B, b)], time_nanos=t)


def values(p: pprof.Profile) -> dict[str, list[int]]:
    r = pprof.Resolver(p)
    return {r.stack(s.location_id)[0].function: list(s.value) for s in p.sample}


def test_first_scrape_is_baseline_then_deltas_of_alloc_only() -> None:
    st = DeltaState("heap")
    r0 = st.apply(heap([10, 1000, 5, 500], [1, 10, 1, 10], 1_000_000_000))
    assert r0.profile is None and r0.reason == "baseline"
    r1 = st.apply(heap([15, 1600, 6, 700], [1, 10, 1, 10], 16_000_000_000))
    assert r1.reason == "delta" and r1.profile is not None
    v = values(r1.profile)
    assert v["main.allocRetained"] == [5, 600, 6, 700]  # alloc_* subtracted, inuse_* as dumped
    assert v["main.other"] == [0, 0, 1, 10]  # no new allocations, still in use: kept
    assert r1.profile.time_nanos == 1_000_000_000
    assert r1.profile.duration_nanos == 15_000_000_000


def test_all_zero_samples_dropped_for_mutex() -> None:
    st = DeltaState("mutex")
    st.apply(make_profile(MUTEX_TYPES, [(A, [10, 1000]), (B, [3, 30])]))
    r = st.apply(make_profile(MUTEX_TYPES, [(A, [12, 1500]), (B, [3, 30])], time_nanos=2_000_000_000))
    assert r.profile is not None
    assert values(r.profile) == {"main.allocRetained": [2, 500]}


def test_duplicate_stacks_are_summed_before_subtracting() -> None:
    st = DeltaState("mutex")
    st.apply(make_profile(MUTEX_TYPES, [(A, [1, 10]), (A, [1, 10])]))
    r = st.apply(make_profile(MUTEX_TYPES, [(A, [3, 30])], time_nanos=2_000_000_000))
    assert r.profile is not None and pprof.totals(r.profile) == [1, 10]


def test_location_ids_renumbered_between_dumps_still_match() -> None:
    st = DeltaState("mutex")
    p0 = make_profile(MUTEX_TYPES, [(A, [1, 10]), (B, [5, 50])])
    p1 = make_profile(MUTEX_TYPES, [(B, [6, 60]), (A, [1, 10])], time_nanos=2_000_000_000)  # other id order
    st.apply(p0)
    r = st.apply(p1)
    assert r.profile is not None and values(r.profile) == {"main.other": [1, 10]}


def test_labels_are_part_of_the_key() -> None:
    st = DeltaState("mutex")
    st.apply(make_profile(MUTEX_TYPES, [(A, [1, 10]), (A, [1, 10])], labels=[{"h": "x"}, {"h": "y"}]))
    r = st.apply(make_profile(MUTEX_TYPES, [(A, [1, 10]), (A, [4, 40])], labels=[{"h": "x"}, {"h": "y"}],
                              time_nanos=2_000_000_000))
    assert r.profile is not None and pprof.totals(r.profile) == [3, 30]


def test_restart_by_identity_is_a_new_baseline() -> None:
    st = DeltaState("heap")
    st.apply(heap([10, 1000, 5, 500], [1, 10, 1, 10], 1), identity=(100, 1))
    r = st.apply(heap([20, 2000, 5, 500], [2, 20, 1, 10], 2), identity=(200, 7))  # new pid
    assert r.profile is None and r.reason == "restart"
    r2 = st.apply(heap([21, 2100, 5, 500], [2, 20, 1, 10], 3), identity=(200, 7))
    assert r2.profile is not None and values(r2.profile)["main.allocRetained"][:2] == [1, 100]


def test_restart_by_values_going_down_never_gives_negative() -> None:
    st = DeltaState("heap")
    st.apply(heap([100, 10000, 5, 500], [50, 5000, 1, 10], 1))
    r = st.apply(heap([3, 300, 3, 300], [1, 100, 1, 100], 2))  # same binary restarted: totals dropped
    assert r.profile is None and r.reason == "restart"
    r2 = st.apply(heap([4, 400, 3, 300], [1, 100, 1, 100], 3))
    assert r2.profile is not None
    assert all(v >= 0 for s in r2.profile.sample for v in s.value)
    assert values(r2.profile)["main.allocRetained"][:2] == [1, 100]


def test_one_stack_going_down_is_clamped_not_negative() -> None:
    st = DeltaState("heap")
    st.apply(heap([100, 10000, 5, 500], [50, 5000, 1, 10], 1))
    r = st.apply(heap([200, 20000, 5, 500], [49, 4990, 1, 10], 2))
    assert r.profile is not None and r.clamped == 1
    assert values(r.profile)["main.other"][:2] == [0, 0]
    assert all(v >= 0 for s in r.profile.sample for v in s.value)


def test_max_stacks_bounds_state() -> None:
    samples = [([f"main.f{i}", "main.main"], [1, i + 1]) for i in range(50)]
    st = DeltaState("mutex", max_stacks=10)
    r = st.apply(make_profile(MUTEX_TYPES, samples))
    assert st.stacks() == 10 and r.dropped_stacks == 40
