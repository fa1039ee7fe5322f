"""Deadline misses caused by a slow downstream call: `gotel diagnose` attaches go_ebpf (real BPF) to the
middle server and blames the downstream method, checked against the fixture client's own results."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.helpers import goapps

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_deadline_missed_because_of_the_downstream_call(goapp: Any) -> None:
    back = goapp("grpcapp", "server")
    mid = goapp("grpcapp", "server")
    out: dict[str, Any] = {}

    def diagnose() -> None:
        out["p"] = subprocess.run([sys.executable, "-m", "gotel", "diagnose", "--pid", str(mid.pid), "--duration", "6s",
                                   "--json", "--ebpf", "on"], capture_output=True, text=True, timeout=180)

    t = threading.Thread(target=diagnose)
    t.start()
    time.sleep(1.0)
    # 100 ms deadline; the middle server calls the back one, which takes 300 ms: every call misses
    client = goapps.start("grpcapp", "client", "-target", f"127.0.0.1:{mid.ports['grpc']}", "-deadline", "100ms",
                          "-downstream", f"127.0.0.1:{back.ports['grpc']}", "-down-delay", "300ms",
                          "-n", "100000", "-concurrency", "2")
    try:
        t.join(timeout=200)
    finally:
        client.stop()
    p = out["p"]
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert "deadline" not in {r["rule"] for r in rep["not_run"]}, rep["not_run"]
    f = next(f for f in rep["findings"] if f["rule"] == "deadline")
    ranked = [x for x in rep["findings"] if not (x["rule"] == "run_queue_latency"
                                                 and (x["evidence"].get("other_processes_cores") or 0) >= 1.0)]
    assert ranked[0]["rule"] in ("deadline", "grpc_errors") and f["severity"] == "critical", rep["findings"]
    ev = f["evidence"]
    assert ev["method"] == "gotelfix.Echo/Unary" and ev["downstream"] == "gotelfix.Echo/Unary", ev
    assert f["location"]["function"] == "gotelfix.Echo/Unary"
    assert ev["miss_ratio"] >= 0.9 and ev["downstream_share"] >= 0.8, ev
    # the client's own view: its deadline had passed when each call returned (DEADLINE_EXCEEDED, or an OK
    # that arrived late: the server answered after its budget ran out), and the downstream call used it all
    recs = [r for r in client.records(timeout=1.0) if "deadline_passed" in r]
    missed = sum(1 for r in recs if r["deadline_passed"]) / len(recs)
    assert missed >= 0.9, recs[:3]
    assert ev["miss_ratio"] == pytest.approx(missed, abs=0.1)
    answered = [r for r in recs if "downstream" in r]  # late OKs carry their downstream call's result
    assert answered, recs[:3]
    share = sum(r["downstream"]["duration_ms"] for r in answered) / len(answered) / 100.0
    assert ev["downstream_share"] == pytest.approx(share, abs=0.15)
    assert ev["calls"] <= len(recs)
