"""The console's rules: one line per problem (tracebacks only at debug), per-process messages per binary."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from gotel.telemetry.logs import PerBinary, RedactingFormatter
from tests.helpers.waiting import wait_until


@pytest.fixture
def console() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.console")
    logger.addHandler(handler)
    logger.propagate = False
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield logger, buf
    root.setLevel(level)
    logger.removeHandler(handler)


def _fail() -> None:
    try:
        open("/proc/999999999/exe")  # noqa: SIM115
    except OSError as e:
        raise RuntimeError("cannot analyse") from e


def test_exception_is_one_line_below_debug(console: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = console
    try:
        _fail()
    except RuntimeError:
        logger.exception("go_runtime: cannot trace pid %d", 42)
    out = buf.getvalue()
    assert out.count("\n") == 1, out
    assert "Traceback" not in out
    assert out.startswith("ERROR go_runtime: cannot trace pid 42: RuntimeError: cannot analyse <- FileNotFoundError:")


def test_traceback_at_debug(console: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = console
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        _fail()
    except RuntimeError:
        logger.exception("boom")
    assert "Traceback (most recent call last)" in buf.getvalue()


def test_per_binary_says_first_then_one_summary_line_per_binary(console: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = console
    pb = PerBinary(logger, "go_ebpf", interval=1.0)
    for pid in range(100, 140):
        pb.note(logging.INFO, "/usr/lib/go/pkg/tool/linux_amd64/compile", pid, "has no gRPC or net/http functions")
    for pid in range(200, 205):
        pb.note(logging.WARNING, "/usr/bin/tool", pid, "lacks DWARF")
    pb.note(logging.WARNING, "/usr/bin/tool", 205, "cannot attach: EBUSY")
    first = buf.getvalue().splitlines()
    assert len(first) == 3, first
    assert first[0] == ("INFO go_ebpf: pid 100 (/usr/lib/go/pkg/tool/linux_amd64/compile): has no gRPC or net/http "
                        "functions (further processes of this binary are summarised)")
    wait_until(lambda: len(buf.getvalue().splitlines()) >= 5, 10, what="the summary lines, said by the timer")
    lines = buf.getvalue().splitlines()[3:]
    assert sorted(lines) == [
        "INFO go_ebpf: 39 more processes of /usr/lib/go/pkg/tool/linux_amd64/compile: has no gRPC or net/http functions",
        "WARNING go_ebpf: 4 more processes of /usr/bin/tool: lacks DWARF",
    ]
