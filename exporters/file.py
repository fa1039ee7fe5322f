"""`file` exporter: OTLP-JSON lines (or length-prefixed protobuf) in a file, with size-based rotation.

Configured as the collector's file exporter (path, format, rotation.max_megabytes/max_backups,
flush_interval), so its files are readable by the collector's otlpjsonfile receiver and by jq.
All signals of one exporter id share one file (and one writer thread: serializing JSON and writing
must not stall the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Annotated, Literal

from pydantic import BeforeValidator, Field, PlainSerializer

from gotel.component.contract import ALL_SIGNALS, ComponentConfig, Context, Exporter, ExporterFactory
from gotel.config.types import Duration
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.otlpjson import to_json

MIB = 1 << 20
log = logging.getLogger("gotel.exporter.file")


def _mode(v: object) -> int:
    """0600 (YAML's octal int), "0600", "600" or "0o600" -> 0o600."""
    if isinstance(v, bool):
        raise ValueError("a file mode such as 0600")
    if isinstance(v, str):
        text = v.strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise ValueError(f"{v!r} is not an octal file mode such as 0600")
        v = int(text, 8)
    if not isinstance(v, int) or not 0 <= v <= 0o777:
        raise ValueError(f"{v!r} is not a file mode between 0000 and 0777")
    return v


FileMode = Annotated[int, BeforeValidator(_mode), PlainSerializer(lambda v: f"0{v:o}", when_used="json")]


class Rotation(ComponentConfig):
    max_megabytes: int = Field(100, ge=1, description="rotate when the file would grow beyond this size")
    max_backups: int = Field(100, ge=0, description="rotated files kept; 0 keeps all")
    localtime: bool = Field(False, description="timestamps of rotated files in local time instead of UTC")


class Config(ComponentConfig):
    path: str = Field(description="file to write; its directory is created")
    format: Literal["json", "proto"] = Field("json", description="json: one OTLP-JSON request per line; proto: 4-byte big-endian length + request")
    rotation: Rotation | None = Field(None, description="size-based rotation; off when absent")
    flush_interval: Duration = Field(1.0, gt=0, description="how often buffered writes reach the file")
    queue_size: int = Field(1000, ge=1, description="requests waiting for the writer thread before new ones are dropped")
    # Defaults given as text so that `gotel components` shows them in octal; validated into ints.
    file_mode: FileMode = Field("0600", validate_default=True,
                                description="permissions of the files written (octal, e.g. 0640); set on open")
    directory_mode: FileMode = Field("0700", validate_default=True,
                                     description="permissions of a directory the exporter creates")


def stat_mode(fd: int) -> int:
    return os.fstat(fd).st_mode & 0o777


@dataclass
class _Item:
    batch: Batch
    exporter: FileExporter


class _Writer:
    """One file, one thread. Shared by the exporter's per-signal instances."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.path = os.path.abspath(cfg.path)
        self.q: queue.Queue[_Item | None] = queue.Queue(cfg.queue_size)
        self.users = 0
        self.thread: threading.Thread | None = None
        self.f: IO[bytes] | None = None
        self.size = 0
        self.error: str | None = None

    def start(self) -> None:
        self.users += 1
        if self.thread is None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=self.cfg.directory_mode, exist_ok=True)
            self._open()
            self.thread = threading.Thread(target=self._run, name=f"file-exporter:{self.path}", daemon=True)
            self.thread.start()

    def _open(self) -> None:
        # Telemetry can hold anything (URLs, user ids, tokens in attributes): private unless configured.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.cfg.file_mode)
        try:
            if stat_mode(fd) != self.cfg.file_mode:
                os.fchmod(fd, self.cfg.file_mode)  # the umask narrowed it, or an older run left 0644
        except OSError as e:
            log.warning("file exporter: cannot set mode %04o on %s: %s", self.cfg.file_mode, self.path, e.strerror or e)
        self.f = os.fdopen(fd, "ab")
        self.size = os.path.getsize(self.path)

    def _encode(self, batch: Batch) -> bytes:
        if self.cfg.format == "proto":
            raw = batch.to_bytes()
            return struct.pack(">I", len(raw)) + raw
        return (to_json(batch.peek()) + "\n").encode()

    def _file(self) -> IO[bytes]:
        assert self.f is not None, "the writer thread runs only after open()"
        return self.f

    def _rotate(self) -> None:
        rot = self.cfg.rotation
        assert rot is not None
        f = self._file()
        f.close()
        now = datetime.now() if rot.localtime else datetime.now(UTC)
        base, ext = os.path.splitext(self.path)
        stamp = now.strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        target = f"{base}-{stamp}{ext}"
        n = 1
        while os.path.exists(target):
            target = f"{base}-{stamp}.{n}{ext}"
            n += 1
        os.rename(self.path, target)
        if rot.max_backups:
            backups = sorted(glob.glob(glob.escape(base) + "-*" + glob.escape(ext)), key=os.path.getmtime)
            for old in backups[: max(0, len(backups) - rot.max_backups)]:
                with contextlib.suppress(OSError):
                    os.remove(old)
        self._open()

    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = self.q.get(timeout=self.cfg.flush_interval)
            except queue.Empty:
                item = None
                if self.f is not None:
                    self.f.flush()
                last_flush = time.monotonic()
                continue
            if item is None:
                self._file().flush()
                return
            n = item.batch.item_count()
            try:
                data = self._encode(item.batch)
                rot = self.cfg.rotation
                if rot is not None and self.size and self.size + len(data) > rot.max_megabytes * MIB:
                    self._rotate()
                self._file().write(data)
                self.size += len(data)
                item.exporter._done(n, None)
            except Exception as e:  # disk full, permissions: count and keep going
                item.exporter._done(n, f"{type(e).__name__}: {e}")
            if time.monotonic() - last_flush >= self.cfg.flush_interval:
                self._file().flush()
                last_flush = time.monotonic()

    def stop(self, timeout: float) -> None:
        self.users -= 1
        if self.users > 0 or self.thread is None:
            return
        self.q.put(None)
        self.thread.join(timeout)
        if self.f is not None:
            with contextlib.suppress(Exception):
                self.f.close()
        self.thread = None
        _WRITERS.pop(self.path, None)


_WRITERS: dict[str, _Writer] = {}
_LOCK = threading.Lock()


class FileExporter(Exporter):
    mutates = False

    def __init__(self, signal: Signal, cfg: Config, ctx: Context) -> None:
        self.signal = signal
        self.cfg = cfg
        self.ctx = ctx
        self.writer: _Writer | None = None
        self._last_log = 0.0

    async def start(self) -> None:
        path = os.path.abspath(self.cfg.path)
        with _LOCK:
            w = _WRITERS.get(path)
            if w is None:
                w = _WRITERS[path] = _Writer(self.cfg)
            w.start()
        self.writer = w

    def _done(self, n: int, error: str | None) -> None:
        """Called from the writer thread."""
        if error is None:
            self.ctx.telemetry.sent(self.signal, n)
            return
        self.ctx.telemetry.dropped(self.signal, n, "write_error")
        self.ctx.telemetry.send_failed(self.signal, n)
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            self.ctx.logger.error("%s: cannot write %s: %s", self.ctx.id, self.cfg.path, error)

    async def consume(self, batch: Batch) -> None:
        if self.writer is None:
            raise RuntimeError("file exporter used before start()")
        try:
            self.writer.q.put_nowait(_Item(batch, self))
        except queue.Full:
            n = batch.item_count()
            self.ctx.telemetry.dropped(self.signal, n, "queue_full")
            self.ctx.telemetry.send_failed(self.signal, n)
            now = time.monotonic()
            if now - self._last_log >= 1.0:
                self._last_log = now
                self.ctx.logger.warning("%s: writer is behind (queue of %d full): dropped %d %s",
                                        self.ctx.id, self.cfg.queue_size, n, self.signal)

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self.writer is not None:
            w, self.writer = self.writer, None
            await asyncio.to_thread(w.stop, deadline)


def create(signal: Signal, cfg: Config, ctx: Context) -> FileExporter:
    return FileExporter(signal, cfg, ctx)


factory = ExporterFactory(
    type="file",
    config=Config,
    signals=ALL_SIGNALS,
    description="Writes OTLP-JSON lines (or length-prefixed protobuf) to a file, with size-based rotation.",
    create=create,
)
