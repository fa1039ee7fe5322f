"""file exporter (OTLP-JSON lines readable back, proto framing, rotation) and debug exporter output."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gotel.component.contract import Kind
from gotel.exporters.debug import Config as DebugConfig
from gotel.exporters.debug import DebugExporter
from gotel.exporters.file import Config as FileConfig
from gotel.exporters.file import FileExporter
from gotel.pdata.batch import Signal
from gotel.pdata.otlpjson import from_json
from gotel.receivers.synthetic import Config as SynthConfig
from gotel.receivers.synthetic import Generator
from tests.unit.core.conftest import Tel


async def test_file_json_lines_read_back(tmp_path: Path, tel: Tel) -> None:
    path = tmp_path / "out" / "data.jsonl"
    cfg = FileConfig(path=str(path))
    gen = Generator(SynthConfig(service_name="svc"))
    t = FileExporter(Signal.TRACES, cfg, tel.ctx("file", Kind.EXPORTER))
    lg = FileExporter(Signal.LOGS, cfg, tel.ctx("file", Kind.EXPORTER))
    await t.start()
    await lg.start()
    sent_traces = [gen.traces(5) for _ in range(3)]
    sent_logs = gen.logs(4)
    for b in sent_traces:
        await t.consume(b)
    await lg.consume(sent_logs)
    await t.shutdown()
    await lg.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])
    span = first["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    # OTLP/JSON: hex ids, camelCase, enums as integers
    assert span["traceId"] == sent_traces[0].peek().resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    assert span["kind"] == 2
    got = [from_json(line, ExportTraceServiceRequest()) for line in lines[:3]]
    assert got == [b.peek() for b in sent_traces]
    assert from_json(lines[3], ExportLogsServiceRequest()) == sent_logs.peek()
    assert tel.value("exporter_sent_items_total", component="file", kind="exporter", signal="traces") == 15
    assert tel.value("exporter_sent_items_total", component="file", kind="exporter", signal="logs") == 4


async def test_file_proto_format(tmp_path: Path, tel: Tel) -> None:
    path = tmp_path / "data.pb"
    e = FileExporter(Signal.TRACES, FileConfig(path=str(path), format="proto"), tel.ctx("file", Kind.EXPORTER))
    await e.start()
    b = Generator(SynthConfig()).traces(7)
    await e.consume(b)
    await e.consume(b)
    await e.shutdown()
    data = path.read_bytes()
    (n,) = struct.unpack(">I", data[:4])
    msg = ExportTraceServiceRequest.FromString(data[4 : 4 + n])
    assert msg == b.peek()
    assert len(data) == 2 * (4 + n)


async def test_file_rotation_keeps_max_backups(tmp_path: Path, tel: Tel) -> None:
    path = tmp_path / "rot.jsonl"
    cfg = FileConfig.model_validate({"path": str(path), "rotation": {"max_megabytes": 1, "max_backups": 2}})
    e = FileExporter(Signal.TRACES, cfg, tel.ctx("file", Kind.EXPORTER))
    await e.start()
    gen = Generator(SynthConfig(attributes={"pad": "x" * 2000}))
    batches = [gen.traces(50) for _ in range(40)]  # ~100 KiB each, ~4 MiB in all
    for b in batches:
        await e.consume(b)
    await e.shutdown()
    files = sorted(tmp_path.iterdir())
    assert path in files
    backups = [f for f in files if f != path]
    assert len(backups) == 2
    for f in files:
        assert f.stat().st_size <= 1 << 20
        for line in f.read_text().splitlines():
            from_json(line, ExportTraceServiceRequest())  # every line is a whole request
    # the newest data is all there: current file + kept backups end with the last batches in order
    kept = [line for f in [*sorted(backups, key=lambda p: p.stat().st_mtime), path] for line in f.read_text().splitlines()]
    tail = [from_json(x, ExportTraceServiceRequest()) for x in kept[-5:]]
    assert tail == [b.peek() for b in batches[-5:]]
    assert tel.value("exporter_sent_items_total", component="file", kind="exporter", signal="traces") == 40 * 50


async def test_file_unwritable_path_counts_drops(tmp_path: Path, tel: Tel) -> None:
    (tmp_path / "dir").mkdir()
    e = FileExporter(Signal.TRACES, FileConfig(path=str(tmp_path / "dir"), format="json"), tel.ctx("file", Kind.EXPORTER))
    try:
        await e.start()
    except IsADirectoryError:
        return  # refused at start, with the OS's reason: nothing is silently lost
    raise AssertionError("a directory as path must fail")


async def test_debug_basic_and_detailed(tel: Tel) -> None:
    out = io.StringIO()
    gen = Generator(SynthConfig(service_name="checkout"))
    d = DebugExporter(Signal.TRACES, DebugConfig(), tel.ctx("debug", Kind.EXPORTER), out=out)
    dm = DebugExporter(Signal.METRICS, DebugConfig(), tel.ctx("debug", Kind.EXPORTER), out=out)
    await d.start()
    await dm.start()
    for _ in range(5):
        await d.consume(gen.traces(8))
    tel.telemetry.component("batch", Kind.PROCESSOR).dropped(Signal.TRACES, 3, "queue_full")
    assert out.getvalue() == ""  # basic: no line per export
    await d.shutdown()
    assert out.getvalue() == ""  # the metrics side of debug still runs
    await dm.shutdown()  # the last one says the final interval
    line = out.getvalue()
    assert line.count("\n") == 1, line
    assert re.fullmatch(r"debug: last \d+s: metrics 0 data points; traces 40 spans \([\d,.]+/s, 5 batches\); "
                        r"errors: 3 dropped \(queue_full\)\n", line), line
    out2 = io.StringIO()
    d2 = DebugExporter(Signal.TRACES, DebugConfig(verbosity="detailed"), tel.ctx("debug/2", Kind.EXPORTER), out=out2)
    b = gen.traces(2)
    await d2.consume(b)
    text = out2.getvalue()
    assert "'service.name': 'checkout'" in text
    assert text.count("span:\n") == 2
    span = b.peek().resource_spans[0].scope_spans[0].spans[0]
    assert span.name in text
    assert f'trace_id: "{span.trace_id.hex()}"' in text and f'span_id: "{span.span_id.hex()}"' in text
    assert "\\" not in text  # no escaped bytes
    assert span.trace_id == b.peek().resource_spans[0].scope_spans[0].spans[0].trace_id  # the batch is untouched
    out3 = io.StringIO()
    d3 = DebugExporter(Signal.LOGS, DebugConfig(verbosity="normal"), tel.ctx("debug/3", Kind.EXPORTER), out=out3)
    await d3.consume(gen.logs(3))
    assert out3.getvalue().count("log severity=") == 3
    assert tel.value("exporter_sent_items_total", component="debug", kind="exporter", signal="traces") == 40
