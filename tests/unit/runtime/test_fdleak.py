"""The fd leak detector's rule: steady growth is a finding, once per episode; a pool that shrinks is not."""

from __future__ import annotations

from gotel.diagnose.fdleak import LeakDetector
from gotel.host import procfs


def test_steady_growth_is_one_finding_per_episode() -> None:
    d: LeakDetector[int, str] = LeakDetector(window=100, min_growth=10)
    found = [d.observe(t, 1, {"pipe": 5 + 4 * t, "file": 3}) for t in range(8)]
    firsts = [(t, g.growth, g.first, g.last) for t, gs in enumerate(found) for g in gs]
    # 5 -> 17 at t=3 (growth 12 >= 10), next finding only after another 10: 37 at t=8 is out of range,
    # 33 at t=7 is 16 above 17
    assert firsts == [(3, 12, 5, 17), (6, 24, 5, 29)]
    assert all(g.key == "pipe" for gs in found for g in gs)  # a constant kind never is


def test_pool_that_shrinks_is_not_a_leak() -> None:
    d: LeakDetector[int, str] = LeakDetector(window=100, min_growth=10, tolerance=0.1)
    assert [d.observe(t, 1, {"sock": n} if n else {}) for t, n in enumerate([0, 30, 0, 30, 40])] == [[]] * 5  # burst, fall
    g = d.growth(1, "sock")
    assert g is not None and g.growth == 40


def test_window_forgets_old_samples_and_exited_processes() -> None:
    d: LeakDetector[int, str] = LeakDetector(window=10, min_growth=10)
    d.observe(0, 1, {"file": 1})
    d.observe(20, 1, {"file": 8})
    assert d.observe(25, 1, {"file": 12}) == []  # 8 -> 12 inside the window: 4 only
    assert d.observe(26, 2, {"file": 50}) == []  # another process: its own samples
    d.forget([1])
    assert d.keys(1) == [] and d.keys(2) == ["file"]


def test_a_kind_new_to_a_process_grew_from_zero() -> None:
    d: LeakDetector[int, str] = LeakDetector(window=100, min_growth=10)
    d.observe(0, 1, {"file": 3})
    d.observe(1, 1, {"file": 3, "eventfd": 6})
    [g] = d.observe(2, 1, {"file": 3, "eventfd": 12})
    assert (g.key, g.first, g.last, g.growth) == ("eventfd", 0, 12, 12)


def test_fd_kind_names_eventfd_apart() -> None:
    assert procfs.fd_kind("anon_inode:[eventfd]") == "eventfd"
    assert procfs.fd_kind("anon_inode:[eventpoll]") == "anon"
    assert procfs.fd_kind("socket:[123]") == "socket"
    assert procfs.fd_kind("pipe:[9]") == "pipe"
    assert procfs.fd_kind("/tmp/x (deleted)") == "file"
    assert procfs.fd_kind("/dev/null") == "file"
    assert procfs.fd_kind("net:[4026531840]") == "other"
