"""The `diagnosis` connector over the real process receiver's metrics: a throttled fixture in a cgroup the
test makes gives one log record per episode (and gotel.findings counts it), checked against cpu.stat."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gotel.connectors.diagnosis import Config as DiagConfig
from gotel.connectors.diagnosis import factory
from gotel.pdata.batch import Signal, attr_dict
from gotel.receivers.process import Config, ProcessReceiver
from tests.helpers.memsink import MemorySink, make_ctx, sinks

pytestmark = [pytest.mark.slow]

CPU = Path("/sys/fs/cgroup/cpu")
ACCT = Path("/sys/fs/cgroup/cpuacct")


@pytest.fixture
def cgroup_pair() -> Iterator[tuple[Path, Path]]:
    if not os.access(CPU, os.W_OK):
        pytest.skip("needs root and the v1 cpu controller at /sys/fs/cgroup/cpu")
    name = f"gotel-diagconn-{uuid.uuid4().hex[:8]}"
    cpu, acct = CPU / name, ACCT / name
    cpu.mkdir()
    acct.mkdir()
    try:
        yield cpu, acct
    finally:
        for d in (cpu, acct):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


class Loop:
    """The process receiver feeding both of the connector's outputs, one collection per step."""

    def __init__(self, *pids: int, **cfg: Any) -> None:
        self.rcv = ProcessReceiver(Config(discovery={"pids": list(pids)}), sinks(Signal.METRICS), make_ctx("process"))
        self.rcv.setup()
        # windows of seconds in these tests: every batch is evaluated (the default waits 5 s of readings)
        dc = DiagConfig.model_validate({"window": 3.0, "evaluation_interval": 0, **cfg})
        self.logs, self.metrics = MemorySink(), MemorySink()
        self.to_logs = factory.create(Signal.METRICS, Signal.LOGS, dc, self.logs, make_ctx("diagnosis"))
        self.to_metrics = factory.create(Signal.METRICS, Signal.METRICS, dc, self.metrics, make_ctx("diagnosis"))

    async def steps(self, n: int) -> None:
        for _ in range(n):
            for b in self.rcv.collect():
                if b.signal != Signal.METRICS:  # the process receiver also emits fd-leak findings (logs)
                    continue
                await self.to_logs.consume(b)
                await self.to_metrics.consume(b)
            await asyncio.sleep(1.0)

    def findings(self, rule: str) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
        return [(res, attr_dict(r.attributes), r) for res, r in self.logs.log_records()
                if attr_dict(r.attributes)["gotel.finding.rule"] == rule]


def _stat(d: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in (d / "cpu.stat").read_text().splitlines())}


async def test_throttling_one_record_per_episode(goapp: Any, cgroup_pair: tuple[Path, Path]) -> None:
    cpu, acct = cgroup_pair
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("20000")
    app = goapp("faults", "-fault", "work", "-workers", "2")
    try:
        (cpu / "cgroup.procs").write_text(str(app.pid))
        (acct / "cgroup.procs").write_text(str(app.pid))
        loop = Loop(app.pid)
        k0 = _stat(cpu)
        await loop.steps(6)  # throttled throughout: one episode, one record
        k1 = _stat(cpu)
        recs = loop.findings("cpu_throttling")
        assert len(recs) == 1, recs
        res, attrs, rec = recs[0]
        assert res["process.pid"] == app.pid
        assert attrs["gotel.finding.severity"] == "critical" and rec.severity_text == "ERROR"
        assert rec.event_name == "gotel.finding" and rec.body.string_value.startswith("cpu_throttling: ")
        ev = json.loads(attrs["gotel.finding.evidence"])
        assert 0 < ev["nr_throttled"] <= k1["nr_throttled"] - k0["nr_throttled"]
        assert ev["nr_periods"] <= k1["nr_periods"] - k0["nr_periods"]
        assert ev["cpu_limit_cores"] == pytest.approx(0.2)

        (cpu / "cpu.cfs_quota_us").write_text("-1")  # the episode ends once the window holds no throttling
        await loop.steps(7)
        assert len(loop.findings("cpu_throttling")) == 1
        (cpu / "cpu.cfs_quota_us").write_text("20000")  # a new episode: a second record
        await loop.steps(5)
        assert len(loop.findings("cpu_throttling")) == 2

        counts = [(a["gotel.finding.severity"], p.as_int) for r, a, p in loop.metrics.points("gotel.findings")
                  if r["process.pid"] == app.pid and a["gotel.finding.rule"] == "cpu_throttling"]
        assert counts[-1] == ("critical", 2), counts
    finally:
        app.stop()


async def test_fd_leak_found_live(goapp: Any) -> None:
    app = goapp("faults", "-fault", "fd")
    loop = Loop(app.pid, window=5.0)
    before = app.get_json("/truth")["open_files"]
    await loop.steps(6)
    after = app.get_json("/truth")["open_files"]
    recs = loop.findings("fd_leak")
    assert len(recs) == 1, loop.logs.log_records()
    ev = json.loads(recs[0][1]["gotel.finding.evidence"])
    assert ev["kind"] == "file" and 0 < ev["growth"] <= after - before


async def test_capture_once_per_node_interval(goapp: Any, tmp_path: Path) -> None:
    """Two leaking processes: the first finding gets a CPU profile and a goroutine dump linked from its
    record; the second, within min_interval on this node, is rate-limited and says so."""
    from gotel.formats import pprof

    a, b = goapp("faults", "-fault", "fd"), goapp("faults", "-fault", "fd")
    loop = Loop(a.pid, b.pid, window=5.0,
                capture={"directory": str(tmp_path), "cpu_duration": 2, "min_interval": 3600})
    await loop.steps(6)
    assert len(loop.findings("fd_leak")) == 2
    # every finding on the node (a run-queue one may come first on this shared host): one captured, the
    # others rate-limited
    recs = [attr_dict(r.attributes) for _res, r in loop.logs.log_records()]
    captured = [r for r in recs if "gotel.finding.capture.id" in r]
    assert len(captured) == 1, recs
    assert all(r.get("gotel.finding.capture.skipped") == "rate_limited" for r in recs if r not in captured), recs
    cap = captured[0]
    assert cap["gotel.finding.capture.end"] - cap["gotel.finding.capture.start"] == pytest.approx(2.0)
    capturer = loop.to_logs.capturer
    await asyncio.wait_for(asyncio.gather(*capturer.tasks), 30)
    d = Path(cap["gotel.finding.capture.path"])
    meta = json.loads((d / "capture.json").read_text())
    assert meta["outcome"] == "ok" and meta["finding"]["rule"] == cap["gotel.finding.rule"]
    assert meta["pid"] in (a.pid, b.pid)
    p = pprof.decode((d / "cpu.pb.gz").read_bytes())
    assert [t for t, _u in pprof.sample_type_names(p)] == ["samples", "cpu"]
    assert "main.leakFiles" in (d / "goroutines.txt").read_text() or "main.every" in (d / "goroutines.txt").read_text()
    assert sorted(x.name for x in tmp_path.iterdir()) == [d.name]  # one capture on this node


@pytest.mark.root
async def test_deadline_misses_from_go_ebpf_metrics(goapp: Any) -> None:
    """The go_ebpf receiver's RED and deadline metrics (real uprobes) into the connector: one deadline record
    for the middle server whose downstream call outlives its callers' 100 ms deadline."""
    from gotel.receivers.go_ebpf import Config as EbpfConfig
    from gotel.receivers.go_ebpf import factory as ebpf_factory
    from tests.helpers import goapps

    back, mid = goapp("grpcapp", "server"), goapp("grpcapp", "server")
    logs = MemorySink()
    conn = factory.create(Signal.METRICS, Signal.LOGS, DiagConfig.model_validate({"window": 3.0}), logs,
                          make_ctx("diagnosis"))
    rcv = ebpf_factory.create(EbpfConfig.model_validate({"discovery": {"pids": [mid.pid]}, "export_interval": 1.0}),
                              {Signal.TRACES: MemorySink(), Signal.METRICS: conn}, make_ctx("go_ebpf"))
    await rcv.start()
    client = None
    try:
        for _ in range(300):
            if mid.pid in rcv.attached_pids:
                break
            await asyncio.sleep(0.1)
        client = await asyncio.to_thread(
            goapps.start, "grpcapp", "client", "-target", f"127.0.0.1:{mid.ports['grpc']}", "-deadline", "100ms",
            "-downstream", f"127.0.0.1:{back.ports['grpc']}", "-down-delay", "300ms", "-n", "100000",
            "-concurrency", "2")
        for _ in range(100):
            await asyncio.sleep(0.1)
            if any(attr_dict(r.attributes)["gotel.finding.rule"] == "deadline" for _res, r in logs.log_records()):
                break
        await asyncio.sleep(3.0)  # more intervals of the same episode: still one record
    finally:
        if client is not None:
            client.stop()
        await rcv.shutdown()
    recs = [(res, attr_dict(r.attributes)) for res, r in logs.log_records()
            if attr_dict(r.attributes)["gotel.finding.rule"] == "deadline"]
    assert len(recs) == 1, logs.log_records()
    res, a = recs[0]
    assert res["process.pid"] == mid.pid and a["gotel.finding.severity"] == "critical"
    ev = json.loads(a["gotel.finding.evidence"])
    # the client's own view of the same calls: their deadline had passed when they returned
    done = [r for r in client.records() if "deadline_passed" in r]
    truth = sum(r["deadline_passed"] for r in done) / len(done)
    assert truth >= 0.9
    assert ev["method"] == "gotelfix.Echo/Unary" and ev["miss_ratio"] == pytest.approx(truth, abs=0.15), ev


async def test_lock_contention_from_the_pprof_receiver(goapp: Any) -> None:
    """The pprof receiver's contention metrics (mutex deltas each second) into the connector: one record
    blaming main.contend, its rate bounded by the program's own count of lock holds."""
    from gotel.receivers.pprof import factory as pprof_factory
    from gotel.receivers.pprof.config import Config as PprofConfig

    app = goapp("faults", "-fault", "mutex", "-workers", "4")
    logs = MemorySink()
    conn = factory.create(Signal.METRICS, Signal.LOGS, DiagConfig.model_validate({"window": 5.0}), logs,
                          make_ctx("diagnosis"))
    off = {"enabled": False}
    cfg = PprofConfig.model_validate({
        "discovery": {"pids": [app.pid], "refresh_interval": 1.0},
        "profiles": {"cpu": off, "heap": off, "block": off, "goroutine": off, "goroutine_dump": off,
                     "goroutineleak": off, "mutex": {"interval": 1.0}}})
    rcv = pprof_factory.create(cfg, {Signal.METRICS: conn, Signal.PROFILES: MemorySink(), Signal.LOGS: MemorySink()},
                               make_ctx("pprof"))
    before = app.get_json("/truth")
    t0 = time.monotonic()
    await rcv.start()
    try:
        await asyncio.sleep(8.0)
    finally:
        await rcv.shutdown()
    rate = (app.get_json("/truth")["holds"] - before["holds"]) / (time.monotonic() - t0)
    recs = [(res, attr_dict(r.attributes)) for res, r in logs.log_records()
            if attr_dict(r.attributes)["gotel.finding.rule"] == "lock_contention"]
    assert len(recs) == 1, logs.log_records()
    res, a = recs[0]
    assert res["process.pid"] == app.pid and a["code.function.name"] == "main.contend"
    ev = json.loads(a["gotel.finding.evidence"])
    site = ev["sites"][0]
    # 4 workers, one holds the lock 2 ms at a time: the others wait most of the time, at most 3 at once
    assert 0.5 <= site["delay_s_per_s"] <= 3.0 + 0.3, site
    assert rate > 100  # the lock really was taken and released all along
