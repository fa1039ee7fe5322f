"""The file_storage extension and the persistent sending queue built on it, in one process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.exporterhelper.queue import (
    ExportError,
    QueueConfig,
    QueuedExporter,
    RetryConfig,
    Sender,
    StorageError,
)
from gotel.extensions.file_storage import Config, FileStorage
from gotel.pdata.batch import Batch, Signal
from gotel.telemetry.counters import Telemetry
from tests.helpers.otlp_samples import traces


def ctx(cid: str, kind: Kind, exts: dict[ComponentID, object] | None = None) -> Context:
    c = Context(ComponentID.parse(cid), kind, logging.getLogger(cid), Telemetry().component(cid, kind))
    if exts is not None:
        c.extras["extensions"] = exts
    return c


class Backend(Sender):
    def __init__(self) -> None:
        self.down = True
        self.got: list[int] = []  # span ids, as the integers otlp_samples numbers them by

    async def send(self, batch: Batch) -> None:
        if self.down:
            raise ExportError("down", retryable=True, reason="unavailable")
        self.got.extend(int.from_bytes(s.span_id, "big") for s in batch.peek().resource_spans[0].scope_spans[0].spans)  # type: ignore[attr-defined]


async def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    ext = FileStorage(Config(directory=str(tmp_path / "nope")), ctx("file_storage", Kind.EXTENSION))
    with pytest.raises(StorageError, match=r"directory .*nope does not exist \(create it, or set create_directory: true\)"):
        await ext.start()
    ok = FileStorage(Config(directory=str(tmp_path / "made"), create_directory=True), ctx("file_storage", Kind.EXTENSION))
    await ok.start()
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o750
    await ok.shutdown()


async def test_a_database_belongs_to_one_client(tmp_path: Path) -> None:
    a = FileStorage(Config(directory=str(tmp_path), timeout=0.2), ctx("file_storage", Kind.EXTENSION))
    await a.start()
    c1 = await a.client(Kind.EXPORTER, ComponentID("otlp"), "traces")
    with pytest.raises(StorageError, match=r"exporter_otlp_traces.db is in use by another process \(waited 0.2s"):
        await a.client(Kind.EXPORTER, ComponentID("otlp"), "traces")
    await c1.set("k", b"v")
    assert await c1.get("k") == b"v" and await c1.keys("k") == ["k"] and await c1.keys("x") == []
    await a.shutdown()


async def test_storage_must_name_a_running_extension() -> None:
    e = QueuedExporter(Signal.TRACES, ctx("otlp", Kind.EXPORTER, {}), Backend(), QueueConfig(storage="file_storage/q"))
    with pytest.raises(StorageError, match=r"sending_queue::storage: file_storage/q is not a running storage extension"):
        await e.start()


@pytest.mark.parametrize("fsync", [False, True])
async def test_queue_on_disk_survives_an_abandoned_process(tmp_path: Path, fsync: bool) -> None:
    """A first exporter stops at its deadline with the backend down: its batches stay on disk and a new
    exporter (a new run) sends them, oldest first, then deletes them."""
    fs = FileStorage(Config(directory=str(tmp_path), fsync=fsync), ctx("file_storage", Kind.EXTENSION))
    await fs.start()
    exts: dict[ComponentID, object] = {ComponentID("file_storage"): fs}
    retry = RetryConfig(initial_interval=0.05, max_interval=0.05, max_elapsed_time=0)
    b1 = Backend()
    e1 = QueuedExporter(Signal.TRACES, ctx("otlp", Kind.EXPORTER, exts), b1,
                        QueueConfig(storage="file_storage", num_consumers=2), retry)
    await e1.start()
    for i in range(10):
        await e1.consume(traces(10, start=i * 10))
    await asyncio.sleep(0.2)
    await e1.shutdown(deadline=0.3)
    assert b1.got == []
    b2 = Backend()
    b2.down = False
    e2 = QueuedExporter(Signal.TRACES, ctx("otlp", Kind.EXPORTER, exts), b2,
                        QueueConfig(storage="file_storage", num_consumers=1), retry)
    await e2.start()
    await e2.shutdown(deadline=5)
    assert b2.got == list(range(1, 101))
    e3 = QueuedExporter(Signal.TRACES, ctx("otlp", Kind.EXPORTER, exts), b2, QueueConfig(storage="file_storage"), retry)
    await e3.start()
    assert e3._size == 0  # everything acknowledged was deleted
    await e3.shutdown()
    await fs.shutdown()


async def test_rebound_compaction_gives_the_space_back(tmp_path: Path) -> None:
    """on_rebound: the file grew past the needed threshold, the data fell below the trigger: VACUUM."""
    cfg = Config(directory=str(tmp_path), compaction={"on_rebound": True, "rebound_needed_threshold_mib": 4,
                                                      "rebound_trigger_threshold_mib": 1})
    fs = FileStorage(cfg, ctx("file_storage", Kind.EXTENSION))
    await fs.start()
    c = await fs.client(Kind.EXPORTER, ComponentID("otlp"), "traces")
    db = tmp_path / "exporter_otlp_traces.db"
    for i in range(8):
        await c.set(f"q.{i}", bytes(1 << 20))
    assert not await c.compact_if_needed()  # 8 MiB in use: not below the trigger
    for i in range(8):
        await c.delete(f"q.{i}")
    assert await c.compact_if_needed()
    assert db.stat().st_size < 1 << 20
    await fs.shutdown()


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_loki_push_requests_survive_in_storage(tmp_path: Path, encoding: str) -> None:
    """Loki's queue holds converted push requests: they are stored with its codec and sent by the next run."""
    from gotel.exporters import loki
    from tests.helpers.loki_server import LokiServer
    from tests.unit.exporters.test_loki import logs

    server = await LokiServer().start()
    fs = FileStorage(Config(directory=str(tmp_path)), ctx("file_storage", Kind.EXTENSION))
    await fs.start()
    exts: dict[ComponentID, object] = {ComponentID("file_storage"): fs}
    try:
        cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", encoding=encoding,
                          retry_on_failure=RetryConfig(initial_interval=0.05, max_interval=0.05, max_elapsed_time=0),
                          sending_queue=QueueConfig(storage="file_storage"))
        server.fail_next(503, times=10_000)
        first = loki.create(Signal.LOGS, cfg, ctx("loki", Kind.EXPORTER, exts))
        await first.start()
        await first.consume(logs(30))
        await first.consume(logs(20, line="second {i}"))
        await asyncio.sleep(0.2)
        await first.shutdown(deadline=0.3)
        assert server.entries() == []
        server.forced.clear()
        server.requests.clear()
        second = loki.create(Signal.LOGS, cfg, ctx("loki", Kind.EXPORTER, exts))
        await second.start()
        await second.shutdown()
        lines = sorted(e.line for _, e in server.entries())
        assert len(lines) == 50
        assert lines == sorted([f"request {i} done" for i in range(30)] + [f"second {i}" for i in range(20)])
    finally:
        await fs.shutdown()
        await server.stop()
