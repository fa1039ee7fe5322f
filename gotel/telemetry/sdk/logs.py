"""`service::telemetry::logs`: gotel's log lines where and how the collector's config asks.

`encoding: console` keeps gotel's one-line format, `json` writes one object per record (ts, level,
logger, msg and the `initial_fields`); `output_paths` and `error_output_paths` take stderr, stdout or
file names; `processors` export the records as OTLP logs through the OpenTelemetry SDK. Every line,
whatever its encoding or destination, goes through the same secret redaction.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import warnings
from typing import Any

from gotel.telemetry.logs import RedactingFormatter

log = logging.getLogger("gotel.telemetry.counters")

_LEVELS = {"warn": "WARNING", "dpanic": "ERROR", "panic": "CRITICAL", "fatal": "CRITICAL"}


def python_level(level: str) -> str:
    """A collector (zap) level name as a Python logging level name."""
    return _LEVELS.get(level.lower(), level.upper())


class JsonFormatter(RedactingFormatter):
    """One JSON object per record, redacted like the console format."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__("%(message)s")
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {**self.fields, "ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": msg}
        return json.dumps(out, default=str)


def _handler(path: str) -> logging.Handler:
    if path == "stderr":
        return logging.StreamHandler(sys.stderr)
    if path == "stdout":
        return logging.StreamHandler(sys.stdout)
    return logging.FileHandler(path, encoding="utf-8")


class _NotTheSDK(logging.Filter):
    """The OTLP log exporter's own warnings are not exported through itself (a failing endpoint would
    feed its own queue)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def customised(cfg: Any) -> bool:
    """Whether `cfg` (a TelemetryLogs) asks for more than a level: then apply_log_config is needed."""
    return bool(cfg.model_fields_set - {"level"})


# A receiver process's line: `2026-01-02 03:04:05,678 INFO [receiver otlp] gotel.x: message`
_CHILD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ([A-Z]+) (\[receiver [^\]]+\]) ([\w.]+): (.*)$", re.S)


def relog(line: str) -> None:
    """A receiver process's log line through this process's logging (its encoding, its outputs)."""
    m = _CHILD.match(line)
    if m is None:
        logging.getLogger("gotel.receiver").info("%s", line)
        return
    level, prefix, name, msg = m.groups()
    logging.getLogger(name).log(logging.getLevelNamesMapping().get(level, logging.INFO), "%s %s", prefix, msg)


def apply_log_config(cfg: Any, level: str, resource: dict[str, Any], prefix: str = "") -> list[Any]:
    """Replaces the root logger's handlers as `cfg` (a TelemetryLogs) says. Returns the SDK logger
    providers of `processors`, to be shut down (flushed) at exit."""
    if cfg.encoding == "json":
        formatter: logging.Formatter = JsonFormatter(cfg.initial_fields)
    else:
        extra = " ".join(f"{k}={v}" for k, v in cfg.initial_fields.items())
        fmt = "%(asctime)s %(levelname)s " + (prefix + " " if prefix else "") + "%(name)s: " + \
            (extra.replace("%", "%%") + " " if extra else "") + "%(message)s"
        formatter = RedactingFormatter(fmt)
    handlers: list[logging.Handler] = []
    opened: dict[str, logging.Handler] = {}
    for path in cfg.output_paths:
        h = opened.setdefault(path, _handler(path))
        handlers.append(h)
    for path in cfg.error_output_paths:
        if path in cfg.output_paths:
            continue  # it has every record already, errors among them
        h = _handler(path)
        h.setLevel(logging.ERROR)
        handlers.append(h)
    for h in handlers:
        h.setFormatter(formatter)
    providers = [p for p in (_otlp_provider(proc, resource) for proc in cfg.processors) if p is not None]
    for provider in providers:
        from opentelemetry.sdk._logs import LoggingHandler

        with warnings.catch_warnings():  # deprecated for opentelemetry-instrumentation-logging's, same job
            warnings.simplefilter("ignore", DeprecationWarning)
            h = LoggingHandler(logger_provider=provider)
        h.addFilter(_NotTheSDK())
        handlers.append(h)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(python_level(level))
    return providers


def _otlp_provider(proc: Any, resource: dict[str, Any]) -> Any:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        ConsoleLogExporter,
        SimpleLogRecordProcessor,
    )
    from opentelemetry.sdk.resources import Resource

    spec = proc.batch or proc.simple
    exporter = _log_exporter(spec.exporter) if spec.exporter.otlp is not None else ConsoleLogExporter()
    provider = LoggerProvider(resource=Resource.create(resource))
    if proc.batch is not None:
        b = proc.batch
        provider.add_log_record_processor(BatchLogRecordProcessor(
            exporter, schedule_delay_millis=b.schedule_delay * 1000, export_timeout_millis=b.export_timeout * 1000,
            max_queue_size=b.max_queue_size, max_export_batch_size=min(b.max_export_batch_size, b.max_queue_size)))
    else:
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider


def _log_exporter(e: Any) -> Any:
    from gotel.telemetry.sdk.otlpexport import otlp_exporter

    return otlp_exporter(e.otlp, "logs")


def shutdown_providers(providers: list[Any]) -> None:
    for p in providers:
        try:
            p.shutdown()
        except Exception as e:  # the process is exiting: one line, no traceback
            print(f"gotel: exporting the last log records failed: {e}", file=sys.stderr)
