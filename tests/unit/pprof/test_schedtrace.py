from __future__ import annotations

import json
import os
from pathlib import Path

from gotel.pdata.builders import MetricsBuilder
from gotel.receivers.schedtrace import Parser, SchedtraceReceiver, emit, factory, unwrap
from tests.helpers.pprofkit import MemSink, context, metric_points

SUMMARY = "SCHED 2013ms: gomaxprocs=4 idleprocs=1 threads=9 spinningthreads=1 needspinning=0 idlethreads=3 runqueue=5 [1 0 2 7]"
DETAIL = [
    "SCHED 3014ms: gomaxprocs=2 idleprocs=0 threads=6 spinningthreads=0 needspinning=1 idlethreads=1 runqueue=2 "
    "gcwaiting=false nmidlelocked=0 stopwait=0 sysmonwait=false",
    "  P0: status=1 schedtick=20 syscalltick=3 m=0 runqsize=4 gfreecnt=0 timerslen=1",
    "  P1: status=1 schedtick=22 syscalltick=1 m=2 runqsize=1 gfreecnt=3 timerslen=0",
    "  M2: p=1 curg=7 mallocing=0 throwing=0 preemptoff= locks=0 dying=0 spinning=false blocked=false lockedg=nil",
    "  G1: status=4(semacquire) m=nil lockedm=nil",
]


def test_unwrap_container_logs() -> None:
    assert unwrap("2026-11-22T10:00:00.123456789Z stderr F " + SUMMARY) == SUMMARY
    assert unwrap(json.dumps({"log": SUMMARY + "\n", "stream": "stderr", "time": "x"})) == SUMMARY
    assert unwrap(SUMMARY) == SUMMARY


def test_summary_line_values_and_local_queues() -> None:
    p = Parser()
    assert p.feed(SUMMARY) is None
    s = p.flush()
    assert s is not None and s.uptime_ms == 2013
    assert s.values["gomaxprocs"] == 4 and s.values["runqueue"] == 5 and s.values["spinningthreads"] == 1
    assert s.local_runqueues == [1, 0, 2, 7]


def test_scheddetail_per_p_queues() -> None:
    p = Parser()
    for line in DETAIL:
        p.feed(line)
    s = p.flush()
    assert s is not None and s.values["threads"] == 6
    mb = MetricsBuilder("t")
    emit(s, {"service.name": "x"}, mb)
    sink = MemSink()
    sink.batches.append(mb.batch())
    local = {dp.attributes[0].value.int_value: dp.as_int for _r, dp in metric_points(sink, "gotel.schedtrace.local_runqueue")}
    assert local == {0: 4, 1: 1}
    assert metric_points(sink, "gotel.schedtrace.runqueue")[0][1].as_int == 2 + 5


async def test_follows_file_rotation_and_truncation(tmp_path: Path) -> None:
    f = tmp_path / "app.log"
    f.write_text("old line\n" + SUMMARY + "\n")
    cfg = factory.config.model_validate({"files": [{"path": str(f), "service_name": "api"}], "start_at": "end"})
    sink = MemSink()
    r = SchedtraceReceiver(cfg, {"metrics": sink}, context("schedtrace"))  # type: ignore[dict-item]
    assert r.poll().empty()  # start_at end: existing lines skipped
    with open(f, "a") as fh:
        fh.write("2026-11-22T10:00:00Z stderr F " + SUMMARY.replace("runqueue=5", "runqueue=6") + "\n")
    mb = r.poll()
    sink.batches.append(mb.batch())
    pts = metric_points(sink, "gotel.schedtrace.global_runqueue")
    assert [dp.as_int for _r, dp in pts] == [6] and pts[0][0]["service.name"] == "api"
    # rotation: the file is renamed and a new one starts
    os.rename(f, tmp_path / "app.log.1")
    f.write_text(SUMMARY.replace("runqueue=5", "runqueue=9") + "\n")
    sink.batches.append(r.poll().batch())
    assert [dp.as_int for _r, dp in metric_points(sink, "gotel.schedtrace.global_runqueue")] == [6, 9]
    # truncation (copytruncate)
    f.write_text("SCHED 9ms: gomaxprocs=4 runqueue=1\n")  # shorter than what was read before
    sink.batches.append(r.poll().batch())
    assert [dp.as_int for _r, dp in metric_points(sink, "gotel.schedtrace.global_runqueue")][-1] == 1
    await r.shutdown()
