"""Logging set-up: one format for the pipeline and its receiver processes; secrets are redacted.

The console says one line per problem: a logged exception adds its type and message to that line,
and the full traceback only appears at --log-level debug. Messages about one process among many
(a `go build` starts dozens of short-lived Go processes) go through PerBinary, which says the first
one for each binary and then counts the rest into one summary line per binary.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import threading
import time
from collections import Counter
from contextvars import ContextVar

_SECRET = re.compile(
    r"(?i)((?:authorization|api[_-]?key|x-scope-orgid|password|token|secret|bearer)[\"']?\s*[:=]\s*[\"']?)((?:(?:bearer|basic)\s+)?[^\s\"',}]+)"
)

# The start of a line this module formats: how the supervisor tells a child's log records from raw
# output of C libraries (BCC, LLVM, grpc core) that write to fd 2 themselves.
LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def redact(text: str) -> str:
    """Masks values that follow secret-looking keys, so headers and passwords never reach logs."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


def exception_line(e: BaseException) -> str:
    """`Type: message` of an exception and of the exception it was raised from, on one line."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen and len(parts) < 3:
        seen.add(id(cur))
        text = str(cur).strip().replace("\n", " ")
        parts.append(f"{type(cur).__name__}: {text}" if text else type(cur).__name__)
        cur = cur.__cause__
    return " <- ".join(parts)


class RedactingFormatter(logging.Formatter):
    """Redacts secrets; below debug level an exception is one line (`: Type: message`), not a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_info[1] is not None and not logging.getLogger().isEnabledFor(logging.DEBUG):
            e = record.exc_info[1]
            record = logging.makeLogRecord(record.__dict__)
            record.msg = f"{record.getMessage()}: {exception_line(e)}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return redact(super().format(record))


# Set in the task of each receiver of a shared receiver process ("[receiver pprof]"): its records get
# that prefix instead of the process's (tasks and asyncio.to_thread carry it; other threads do not).
LOG_PREFIX: ContextVar[str | None] = ContextVar("gotel_log_prefix", default=None)


class _Prefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        record.gotel_prefix = LOG_PREFIX.get() or self.prefix
        return True


def setup_logging(level: str = "info", prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s " + ("%(gotel_prefix)s " if prefix else "") + "%(name)s: %(message)s"
    handler.setFormatter(RedactingFormatter(fmt))
    if prefix:
        handler.addFilter(_Prefix(prefix))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class PerBinary:
    """Per-process messages summarised per binary.

    The first process of a binary that earns a message gets the full line; the later ones are counted
    and, at most once per `interval` seconds, said as one line per binary with the count of processes
    and of each message. A `go build` (dozens of compile/asm/link processes) thus costs a few lines.
    """

    def __init__(self, logger: logging.Logger, prefix: str, interval: float = 60.0) -> None:
        self.logger = logger
        self.prefix = prefix
        self.interval = interval
        self._said: set[tuple[str, str]] = set()
        self._pending: dict[str, tuple[int, Counter[str]]] = {}
        self._pids: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last_flush = time.monotonic()
        atexit.register(self.flush)

    def note(self, level: int, binary: str, pid: int, message: str) -> None:
        """Says `message` about process `pid` of `binary` now, or counts it into the next summary."""
        key = (binary, message)
        with self._lock:
            if key not in self._said:
                self._said.add(key)
                first = True
            else:
                first = False
                lvl, counts = self._pending.get(binary, (level, Counter()))
                counts[message] += 1
                self._pending[binary] = (max(lvl, level), counts)
                self._pids.setdefault(binary, set()).add(pid)
                if self._timer is None:
                    delay = max(0.0, self.interval - (time.monotonic() - self._last_flush))
                    self._timer = threading.Timer(delay, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
        if first:
            self.logger.log(level, "%s: pid %d (%s): %s (further processes of this binary are summarised)",
                            self.prefix, pid, binary, message)

    def flush(self) -> None:
        """Says the pending counts, one line per binary."""
        with self._lock:
            pending, self._pending = self._pending, {}
            pids, self._pids = self._pids, {}
            self._timer = None
            self._last_flush = time.monotonic()
        for binary, (level, counts) in pending.items():
            many = len(counts) > 1
            what = "; ".join(m + (f" ({n})" if many else "") for m, n in counts.most_common())
            self.logger.log(level, "%s: %d more processes of %s: %s", self.prefix, len(pids.get(binary, ())),
                            binary, what)
