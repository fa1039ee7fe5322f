"""`gotel run` with the synthetic receiver feeding the prometheus and file exporters, then
`gotel traces` reading what the file exporter wrote: the commands a user runs, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.prometheus_server import free_port

GOTEL = [sys.executable, "-m", "gotel"]


def test_run_serves_metrics_and_traces_can_be_listed(tmp_path: Path) -> None:
    port = free_port()
    traces = tmp_path / "traces.json"
    cfg = tmp_path / "gotel.yaml"
    cfg.write_text(f"""
receivers:
  synthetic:
    spans_per_second: 200
    metrics_per_second: 200
    logs_per_second: 0
    profiles_per_second: 0
    service_name: shop
exporters:
  prometheus:
    endpoint: 127.0.0.1:{port}
  file:
    path: {traces}
    flush_interval: 200ms
service:
  telemetry: {{metrics: {{address: "127.0.0.1:0"}}}}  # never the fixed :8888 another agent may hold
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [file]
    metrics:
      receivers: [synthetic]
      exporters: [prometheus]
""")
    proc = subprocess.Popen([*GOTEL, "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    body = ""
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                if "job=\"shop\"" in body and traces.exists() and traces.stat().st_size > 0:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        assert "target_info" in fams, body[:2000]
        jobs = {s.labels.get("job") for f in fams.values() for s in f.samples}
        assert "shop" in jobs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:]
    res = subprocess.run([*GOTEL, "traces", "list", "--file", str(traces), "--service", "shop", "--json", "--limit", "5"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert 1 <= len(listed) <= 5 and all(t["root_service"] == "shop" for t in listed)
    tid = listed[0]["trace_id"]
    res = subprocess.run([*GOTEL, "traces", "show", tid, "--file", str(traces), "--no-color"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and tid in res.stdout and "shop" in res.stdout
