"""debug=2 goroutine dump parsing, buckets, leak findings."""

from __future__ import annotations

from gotel.receivers.pprof import goroutines as g

HEADER = """goroutine 1 [running]:
main.main()
\t/app/main.go:100 +0x1d
"""

LISTENER = """goroutine 7 [IO wait, 45 minutes]:
internal/poll.runtime_pollWait(0x7f, 0x72)
\t/usr/lib/go/src/runtime/netpoll.go:345 +0x85
net/http.(*Server).Serve(0xc000100000, {0x7a, 0xc0001})
\t/usr/lib/go/src/net/http/server.go:3330 +0x30c
created by main.main in goroutine 1
\t/app/main.go:90 +0x1aa
"""


def leaky(gid: int, minutes: int = 0, leaked: bool = False) -> str:
    status = "chan receive" + (" (leaked)" if leaked else "") + (f", {minutes} minutes" if minutes else "")
    return f"""goroutine {gid} [{status}]:
main.leakyWorker(0xc000020060)
\t/app/main.go:52 +0x25
created by main.startLeak in goroutine {gid - 1}
\t/app/main.go:58 +0x45
"""


def dump(n_leaky: int, minutes: int = 0, leaked: bool = False) -> str:
    parts = [HEADER, LISTENER] + [leaky(100 + i, minutes, leaked) for i in range(n_leaky)]
    return "\n".join(parts)


def test_parse_fields() -> None:
    gs = g.parse_dump(dump(2, minutes=3))
    assert len(gs) == 4
    main, lst, w = gs[0], gs[1], gs[2]
    assert (main.state, main.wait_reason) == ("running", "")
    assert (lst.state, lst.wait_reason, lst.minutes, lst.category) == ("waiting", "IO wait", 45, "io")
    assert lst.frames[1] == ("net/http.(*Server).Serve", "/usr/lib/go/src/net/http/server.go", 3330)
    assert (w.wait_reason, w.category, w.minutes) == ("chan receive", "channel", 3)
    assert (w.created_by, w.created_at, w.parent) == ("main.startLeak", "/app/main.go:58", 101 - 2)
    assert w.frames == [("main.leakyWorker", "/app/main.go", 52)]


def test_parse_variants() -> None:
    text = """goroutine 5 gp=0xc000007a40 m=nil [sync.Mutex.Lock (scan), 2 minutes, locked to thread]:
sync.runtime_SemacquireMutex(0x1?, 0x0?, 0x0?)
\t/go/src/runtime/sema.go:95 +0x25
...additional frames elided...
created by main.f
\t/app/a.go:3 +0x1

goroutine 9 [select (no cases)]:
main.g()
\t/app/a.go:9
"""
    gs = g.parse_dump(text)
    assert (gs[0].wait_reason, gs[0].category, gs[0].minutes, gs[0].locked, gs[0].elided) == (
        "sync.Mutex.Lock", "mutex", 2, True, True)
    assert (gs[0].created_by, gs[0].parent) == ("main.f", 0)  # Go < 1.21: no "in goroutine N"
    assert gs[1].category == "nil_channel"


def test_truncated_dump_keeps_what_was_read() -> None:
    text = dump(3)
    gs = g.parse_dump(text[: len(text) - 40])
    assert len(gs) == 5 and gs[-1].wait_reason == "chan receive"


def test_buckets_group_identical_goroutines() -> None:
    b = g.bucketize(g.parse_dump(dump(6)))
    leak = [x for x in b.values() if x.wait_reason == "chan receive"]
    assert len(leak) == 1 and leak[0].count == 6
    assert leak[0].top_function == "main.leakyWorker"
    assert "created by main.startLeak" in leak[0].stack_text()


def test_growth_over_k_dumps_is_reported_once_with_creator() -> None:
    det = g.LeakDetector(k=3, min_goroutines=5)
    found = []
    for n in (2, 4, 6, 8, 10):
        found.append(det.observe(g.bucketize(g.parse_dump(dump(n)))))
    assert found[0] == [] and found[1] == [] and found[2] == []  # not yet K growths
    assert len(found[3]) == 1
    f = found[3][0]
    assert f.kind == "growth" and f.history == (2, 4, 6, 8) and f.growth == 6
    assert f.bucket.sample.created_by == "main.startLeak" and f.bucket.sample.created_at == "/app/main.go:58"
    assert "chan receive" in f.message() and "main.leakyWorker" in f.message()
    assert found[4] == []  # same episode: not repeated


def test_steady_program_no_finding() -> None:
    det = g.LeakDetector(k=3, min_goroutines=1)
    for _ in range(8):
        assert det.observe(g.bucketize(g.parse_dump(dump(10)))) == []


def test_fluctuating_bucket_no_finding() -> None:
    det = g.LeakDetector(k=3, min_goroutines=1)
    out = [det.observe(g.bucketize(g.parse_dump(dump(n)))) for n in (5, 8, 6, 9, 7, 10, 8)]
    assert all(x == [] for x in out)


def test_blocked_longer_than_threshold() -> None:
    det = g.LeakDetector(k=3, blocked_minutes=30)
    out = det.observe(g.bucketize(g.parse_dump(dump(2, minutes=31))))
    kinds = sorted(f.kind for f in out)
    assert kinds == ["blocked"]  # the 45-minute IO wait listener is normal, not reported
    assert "31 minutes" in out[0].message()


def test_runtime_leak_marker() -> None:
    gs = g.parse_dump(dump(3, leaked=True))
    assert all(x.leaked for x in gs[2:]) and gs[2].wait_reason == "chan receive"
    out = g.LeakDetector().observe(g.bucketize(gs))
    assert [f.kind for f in out] == ["leaked"] and out[0].bucket.leaked == 3


def test_summary_counts_and_age_histogram() -> None:
    counts, hist, total = g.summary(g.parse_dump(dump(4, minutes=3)))
    assert counts[("waiting", "chan receive", "channel")] == 4
    assert counts[("running", "", "")] == 1
    assert sum(hist) == 5 and total == 4 * 3 + 45
