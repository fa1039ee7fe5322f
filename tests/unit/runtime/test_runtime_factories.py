"""The four runtime receivers are registered, validate their config, and parse kernel formats."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gotel.component.contract import Kind, ReceiverFactory
from gotel.component.registry import registry
from gotel.pdata.batch import Signal
from gotel.receivers import go_runtime, net, process, sched


@pytest.mark.parametrize(
    ("name", "bpf", "signals"),
    [
        ("process", False, {Signal.METRICS, Signal.LOGS}),
        ("sched", True, {Signal.METRICS, Signal.LOGS}),
        ("go_runtime", True, {Signal.METRICS, Signal.LOGS}),
        ("net", True, {Signal.METRICS}),
    ],
)
def test_registered(name: str, bpf: bool, signals: set[Signal]) -> None:
    f = registry(refresh=True).get(Kind.RECEIVER, name)
    assert f is not None and isinstance(f, ReceiverFactory)
    assert f.type == name and f.needs_bpf is bpf and set(f.signals) == signals
    f.default_config()  # defaults validate


def test_typos_are_errors() -> None:
    with pytest.raises(ValidationError, match="colection_interval"):
        process.Config.model_validate({"colection_interval": 5})
    with pytest.raises(ValidationError, match="unknown x86-64 syscall"):
        sched.Config.model_validate({"ignore_syscalls": ["futx"]})
    with pytest.raises(ValidationError):
        go_runtime.Config.model_validate({"discovery": {"pids": ["x"]}})
    with pytest.raises(ValidationError):
        net.Config.model_validate({"collection_interval": 0})


def test_blocked_mask_from_format(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fmt = tmp_path / "format"
    fmt.write_text(
        'print fmt: "prev_state=%s%s", (REC->prev_state & ((((0x00000000 | 0x00000001 | 0x00000002) + 1) << 1) - 1)) '
        '? __print_flags(REC->prev_state & 7, "|", { 0x00000001, "S" }, { 0x00000002, "D" }, { 0x00000004, "T" }, '
        '{ 0x00000008, "t" }, { 0x00000080, "I" }) : "R"'
    )
    assert sched.blocked_mask(str(fmt)) == 0x8F
    real = sched.blocked_mask()
    assert real & 0x1 and real & 0x2 and not real & 0x100  # S and D block; the preempt bit does not


def test_drop_reasons_parse() -> None:
    fmt = 'print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" })'
    assert net.drop_reasons(fmt) == {2: "NOT_SPECIFIED", 3: "NO_SOCKET"}
    assert net.drop_reasons("print fmt: nothing") == {}
