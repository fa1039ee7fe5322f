"""Logging set-up: one format for the pipeline and its receiver processes; secrets are redacted."""

from __future__ import annotations

import logging
import re
import sys

_SECRET = re.compile(
    r"(?i)((?:authorization|api[_-]?key|x-scope-orgid|password|token|secret|bearer)[\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"
)


def redact(text: str) -> str:
    """Masks values that follow secret-looking keys, so headers and passwords never reach logs."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "info", prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s " + (prefix + " " if prefix else "") + "%(name)s: %(message)s"
    handler.setFormatter(RedactingFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
