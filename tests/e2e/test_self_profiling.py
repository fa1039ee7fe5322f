"""`service::telemetry::profiling`: every gotel process (the pipeline process and each receiver process)
profiles itself with pyroscope-io into a Pyroscope ingest server, each with a label that names it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.e2e.agent import Agent
from tests.helpers.pyroscope_server import PyroscopeServer, Series


def _functions(series: list[Series]) -> set[str]:
    """The source files of every function sampled in the series' profiles."""
    out: set[str] = set()
    for s in series:
        for p in s.profiles:
            strings = p.string_table
            out.update(strings[f.filename] for f in p.function)
    return out


# the command each process runs: its profile must show it
_COMMAND = {"pipeline": "gotel/cli/commands/run.py",
            "synthetic/a": "gotel/cli/commands/receiver.py", "synthetic/b": "gotel/cli/commands/receiver.py"}


def _samples(series: list[Series]) -> int:
    return sum(sum(v for smp in p.sample for v in smp.value) for s in series for p in s.profiles)


async def test_each_gotel_process_profiles_itself_with_its_own_label(tmp_path: Path) -> None:
    server = await PyroscopeServer().start()
    a = Agent(f"""
receivers:
  synthetic/a:
    spans_per_second: 50
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
  synthetic/b:
    spans_per_second: 50
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
exporters:
  debug:
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
    profiling:
      server_address: {server.url}
      application_name: gotel-selfprof
      basic_auth_password: s3cret-pw
      sample_rate: 50
      upload_interval: 1s
      oncpu: false
      gil_only: false
  pipelines:
    traces: {{receivers: [synthetic/a, synthetic/b], exporters: [debug]}}
""", tmp_path)
    a.start()
    try:
        ready = await asyncio.to_thread(a.wait_ready)
        pids = {rid: r["pid"] for rid, r in ready["receivers"].items()}
        assert set(pids) == {"synthetic/a", "synthetic/b"}

        def by_process() -> dict[str, list[Series]]:
            out: dict[str, list[Series]] = {}
            for s in server.series:
                assert s.labels["service_name"] == "gotel-selfprof", s.labels
                out.setdefault(s.labels.get("gotel_receiver") or s.labels["gotel_process"], []).append(s)
            return out

        end = time.monotonic() + 40
        while time.monotonic() < end:
            got = by_process()
            if {"pipeline", "synthetic/a", "synthetic/b"} <= set(got) and all(
                    any(f.endswith(_COMMAND[who]) for f in _functions(got[who])) for who in _COMMAND):
                break
            await asyncio.sleep(0.2)
        got = by_process()
        assert set(got) == {"pipeline", "synthetic/a", "synthetic/b"}, (set(got), server.rejected, a.output()[-2000:])
        for who in ("synthetic/a", "synthetic/b"):
            assert {s.labels["gotel_process"] for s in got[who]} == {"receiver"}
            files = _functions(got[who])
            # a receiver process runs the receiver command, not the pipeline's service
            assert any(f.endswith(_COMMAND[who]) for f in files), sorted(files)[:40]
            assert _samples(got[who]) > 0
        # the pipeline process runs `gotel run` (mostly idle in its event loop, so the service's own frames
        # are sampled only by chance) and never the receiver command
        pipeline_files = _functions(got["pipeline"])
        assert any(f.endswith(_COMMAND["pipeline"]) for f in pipeline_files), sorted(pipeline_files)
        assert not any(f.endswith(_COMMAND["synthetic/a"]) for f in pipeline_files), sorted(pipeline_files)
        assert not server.rejected, server.rejected
    finally:
        code = await asyncio.to_thread(a.stop)
        await server.stop()
    assert code == 0, a.output()[-3000:]
    assert "s3cret-pw" not in a.output()
    assert "Traceback" not in a.output(), a.output()[-3000:]


async def test_a_standalone_receiver_profiles_itself(tmp_path: Path) -> None:
    import subprocess

    from tests.e2e.agent import GOTEL
    from tests.helpers.otlp_sink import OTLPGrpcSink

    server = await PyroscopeServer().start()
    sink = OTLPGrpcSink().start()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
receivers:
  synthetic/solo:
    spans_per_second: 50
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
exporters:
  debug:
service:
  telemetry:
    profiling: {{server_address: {server.url}, upload_interval: 1s, oncpu: false, gil_only: false}}
  pipelines:
    traces: {{receivers: [synthetic/solo], exporters: [debug]}}
""")
    p = subprocess.Popen([GOTEL, "receiver", "synthetic/solo", "-c", str(cfg), "--endpoint", f"http://{sink.address}"],
                         stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not any(s.labels.get("gotel_receiver") == "synthetic/solo"
                                                 for s in server.series):
            await asyncio.sleep(0.2)
        got = [s for s in server.series if s.labels.get("gotel_receiver") == "synthetic/solo"]
        assert got and all(s.labels["gotel_process"] == "receiver" and s.labels["service_name"] == "gotel"
                           for s in got), (server.series[:3], server.rejected)
        assert _samples(got) > 0
    finally:
        p.send_signal(2)
        _, err = await asyncio.to_thread(p.communicate, timeout=20)
        await server.stop()
        sink.stop()
    assert p.returncode == 0, err
