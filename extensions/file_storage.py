"""`file_storage` extension: a key-value store per component on the local disk (the collector's
file_storage, with its keys), used by exporters for a sending queue that survives kill -9 and restarts.

Each client (one per component and name, e.g. exporter otlp, signal traces) is one SQLite database
in WAL mode under ``directory``: a write is one small transaction, a committed write survives a
killed process, and with ``fsync: true`` (synchronous=FULL) also a power loss. SQLite is in the
standard library and crash-safe by design; an append-only segment log would need its own recovery
code for the same guarantee. Calls run on one thread per client, so the event loop never waits on
the disk. A client holds an exclusive lock on its database (waiting up to ``timeout``): two
processes sharing one queue would send everything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import Field, field_validator

from gotel.component.contract import (
    SHUTDOWN_DEADLINE,
    Component,
    ComponentConfig,
    ComponentID,
    Context,
    ExtensionFactory,
    Kind,
)
from gotel.config.types import Duration
from gotel.exporterhelper.queue import StorageError

T = TypeVar("T")
DEFAULT_DIRECTORY = "/var/lib/gotel/file_storage"


class CompactionConfig(ComponentConfig):
    on_start: bool = Field(False, description="compact every database when the extension starts")
    on_rebound: bool = Field(
        False, description="compact online once usage fell below rebound_trigger_threshold_mib "
        "after having exceeded rebound_needed_threshold_mib")
    directory: str | None = Field(None, description="accepted for the collector's configs; SQLite compacts in place")
    max_transaction_size: int = Field(65536, ge=0, description="accepted for the collector's configs")
    rebound_needed_threshold_mib: int = Field(100, ge=0)
    rebound_trigger_threshold_mib: int = Field(10, ge=0)
    check_interval: Duration = Field(5.0, gt=0, description="how often on_rebound looks at the sizes")
    cleanup_on_start: bool = Field(False, description="accepted for the collector's configs")


class Config(ComponentConfig):
    directory: str = Field(DEFAULT_DIRECTORY, description="where the databases live (one per component)")
    timeout: Duration = Field(1.0, gt=0, description="longest wait for a database's lock")
    fsync: bool = Field(False, description="fsync every write: survives power loss, not only a killed process")
    create_directory: bool = Field(False, description="create `directory` when it does not exist")
    directory_permissions: str = Field("0750", description="octal mode of a directory create_directory makes")
    compaction: CompactionConfig = Field(default_factory=CompactionConfig)

    @field_validator("directory_permissions")
    @classmethod
    def _octal(cls, v: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3}", v):
            raise ValueError(f"directory_permissions must be an octal mode such as 0750, not {v!r}")
        return v


def _file_name(kind: Kind, cid: ComponentID, name: str) -> str:
    """exporter_otlp_backup_traces.db: readable, and safe whatever the id holds."""
    raw = "_".join(p for p in (kind.value, cid.type, cid.name, name) if p)
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw) + ".db"


class FileClient:
    """One component's store: get/set/delete/keys, each call one committed transaction."""

    def __init__(self, path: str, cfg: Config) -> None:
        self.path = path
        self.cfg = cfg
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file_storage")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._peak = 0

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            raise StorageError(f"{self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- blocking parts, on the client's thread ---------------------------------------------------

    def _open(self) -> None:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        end = time.monotonic() + self.cfg.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    os.close(fd)
                    raise StorageError(f"{self.path} is in use by another process "
                                       f"(waited {self.cfg.timeout:g}s for its lock)") from None
                time.sleep(0.02)
        self._lock_fd = fd
        fresh = not os.path.exists(self.path)
        db = sqlite3.connect(self.path, timeout=self.cfg.timeout, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)  # the queue holds telemetry: not for other users
        if fresh:
            db.execute("PRAGMA page_size=65536")  # batches are megabytes: fewer, larger pages (measured 2x)
        db.execute("PRAGMA journal_mode=WAL")
        # Without fsync (the collector's default, bbolt NoSync) a committed write is in the kernel's page
        # cache: it survives kill -9 and OOM kills, not a power loss; fsync: true adds that.
        db.execute(f"PRAGMA synchronous={'FULL' if self.cfg.fsync else 'OFF'}")
        db.execute("PRAGMA wal_autocheckpoint=100")  # a small WAL: checkpoints copy less at a time
        db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        if self.cfg.compaction.on_start:
            db.execute("VACUUM")
        self._db = db

    def _get(self, key: str) -> bytes | None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set(self, key: str, value: bytes) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def _delete(self, key: str) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def _keys(self, prefix: str) -> list[str]:
        assert self._db is not None
        hi = prefix + "\U0010ffff"
        return [r[0] for r in self._db.execute("SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                                               (prefix, hi))]

    def _sizes(self) -> tuple[int, int]:
        """(bytes in use, bytes of the file) of the database."""
        assert self._db is not None
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        count = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * page, count * page

    def _maybe_compact(self) -> bool:
        """on_rebound: once the data grew past the needed threshold and shrank below the trigger."""
        c = self.cfg.compaction
        used, total = self._sizes()
        self._peak = max(self._peak, total)
        if self._peak >= c.rebound_needed_threshold_mib << 20 and used < c.rebound_trigger_threshold_mib << 20:
            assert self._db is not None
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._peak = self._sizes()[1]
            return True
        return False

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- the client API (gotel.exporterhelper.queue.StorageClient) --------------------------------------

    async def open(self) -> None:
        try:
            await self._call(self._open)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open {self.path}: {e}") from e

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._call(self._get, key)
        return result

    async def set(self, key: str, value: bytes) -> None:
        await self._call(self._set, key, value)

    async def delete(self, key: str) -> None:
        await self._call(self._delete, key)

    async def keys(self, prefix: str = "") -> list[str]:
        result: list[str] = await self._call(self._keys, prefix)
        return result

    async def compact_if_needed(self) -> bool:
        done: bool = await self._call(self._maybe_compact)
        return done

    async def close(self) -> None:
        if self._pool is None:
            return
        with contextlib.suppress(Exception):
            await self._call(self._close)
        self._pool.shutdown(wait=False)
        self._pool = None  # type: ignore[assignment]  # closed: the pool is gone for good


class FileStorage(Component):
    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.log = ctx.logger
        self.clients: list[FileClient] = []
        self._rebound: asyncio.Task[None] | None = None

    async def start(self) -> None:
        d = self.cfg.directory
        if not os.path.isdir(d):
            if not self.cfg.create_directory:
                raise StorageError(f"directory {d} does not exist "
                                   "(create it, or set create_directory: true)")
            os.makedirs(d, mode=int(self.cfg.directory_permissions, 8), exist_ok=True)
        if not os.access(d, os.W_OK | os.X_OK):
            raise StorageError(f"directory {d} is not writable by this process")
        if self.cfg.compaction.on_rebound:
            self._rebound = asyncio.create_task(self._rebound_loop(), name=f"{self.ctx.id}-compaction")

    async def client(self, kind: Kind, cid: ComponentID, name: str) -> FileClient:
        c = FileClient(os.path.join(self.cfg.directory, _file_name(kind, cid, name)), self.cfg)
        await c.open()
        self.clients.append(c)
        return c

    async def _rebound_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.compaction.check_interval)
            for c in list(self.clients):
                try:
                    if await c.compact_if_needed():
                        self.log.info("%s: compacted %s", self.ctx.id, c.path)
                except Exception as e:
                    self.log.warning("%s: compacting %s failed: %s", self.ctx.id, c.path, e)

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        if self._rebound is not None:
            self._rebound.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebound
            self._rebound = None
        for c in self.clients:
            await c.close()
        self.clients.clear()


factory = ExtensionFactory(
    type="file_storage",
    config=Config,
    signals=frozenset(),
    description="key-value storage on the local disk (SQLite, WAL): persistent sending queues "
    "(sending_queue.storage) that survive kill -9 and restarts",
    create=FileStorage,
)
