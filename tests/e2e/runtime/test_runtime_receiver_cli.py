"""`gotel receiver go_runtime|sched` as their own processes, shipping OTLP to a real gRPC server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gotel.pdata.batch import attr_dict
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = [pytest.mark.root, pytest.mark.slow]
GOTEL = Path(sys.executable).with_name("gotel")


def _wait(pred: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("typ", ["go_runtime", "sched"])
def test_receiver_process_ships_metrics_and_logs(goapp: Any, tmp_path: Path, typ: str) -> None:
    app = goapp("runtime")
    cfg = tmp_path / "gotel.yaml"
    cfg.write_text(f"""
receivers:
  {typ}:
    collection_interval: 1
    discovery: {{pids: [{app.pid}]}}
exporters:
  debug: {{}}
service:
  pipelines:
    metrics: {{receivers: [{typ}], exporters: [debug]}}
    logs: {{receivers: [{typ}], exporters: [debug]}}
""")
    sink = OTLPGrpcSink().start()
    proc = subprocess.Popen([str(GOTEL), "receiver", typ, "--config", str(cfg), "--endpoint",
                             f"http://{sink.address}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        want = "go.gc.cycles" if typ == "go_runtime" else "process.sched.offcpu.count"
        assert _wait(lambda: any(m.name == want for m in sink.received.metric_list())), proc.stderr
        if typ == "go_runtime":
            app.get_json("/gc?n=2")
            assert _wait(lambda: len(sink.received.log_records()) >= 2)
            rec = attr_dict(sink.received.log_records()[0].attributes)
            assert rec["go.gc.pause.sweep_termination"] > 0 and rec["go.gc.pause.mark_termination"] > 0
        else:
            app.get_json("/syscall?ms=50")
            assert _wait(lambda: any("main.blockingSyscall" in r.body.string_value
                                     for r in sink.received.log_records()))
        res = {kv.key: kv.value for r in sink.received.metrics for rm in r.resource_metrics
               for kv in rm.resource.attributes}
        assert res["process.pid"].int_value == app.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        sink.stop()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
