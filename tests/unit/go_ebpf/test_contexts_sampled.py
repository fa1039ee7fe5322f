"""Sampled context tracking's judgement of a tracked context from its memory, and its config bounds (the
BPF side and the estimates are tested against the fixture in tests/integration/go_ebpf/test_below.py)."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from gotel.receivers.go_ebpf import Config
from gotel.receivers.go_ebpf.contexts import ContextLeaks, Sampled

ERR = 48  # context.cancelCtx.err on every Go DWARF has shown (1.19, 1.26, 1.27)
PARENT = (0x5A0000, 0xC000010000)


class FakeMemory:
    """A process's memory as a dict of address -> bytes."""

    def __init__(self, blocks: dict[int, bytes]) -> None:
        self.blocks = blocks

    def read(self, addr: int, n: int) -> bytes | None:
        b = self.blocks.get(addr)
        return b[:n] if b is not None and len(b) >= n else None

    def close(self) -> None:
        pass


def cancel_ctx(parent: tuple[int, int], err_tab: int) -> bytes:
    """A cancelCtx's first ERR + 16 bytes: Context (itab, data), mu, done, children, err (tab, data)."""
    return struct.pack("<QQ", *parent) + bytes(ERR - 16) + struct.pack("<QQ", err_tab, err_tab and 0xC0000FF000)


def judge(mem: bytes | None, age_s: float, weight: int = 1) -> str:
    leaks = ContextLeaks(program=None, max_age_s=30.0)
    blocks = {} if mem is None else {0xC000123000: mem}
    leaks.sampled[7] = Sampled(ERR, FakeMemory(blocks))  # type: ignore[arg-type]
    k = SimpleNamespace(tgid=7, fn=0xC000123000)
    now = 1_000_000_000_000
    v = SimpleNamespace(born_ns=now - int(age_s * 1e9), weight=weight, parent=PARENT)
    return leaks._judge(k, v, now)


def test_a_canceled_context_ended_whatever_its_age() -> None:
    assert judge(cancel_ctx(PARENT, 0x5B0000), age_s=0.5) == "canceled"
    assert judge(cancel_ctx(PARENT, 0x5B0000), age_s=300) == "canceled"


def test_an_uncanceled_context_leaks_only_past_the_age() -> None:
    assert judge(cancel_ctx(PARENT, 0), age_s=29) == ""
    assert judge(cancel_ctx(PARENT, 0), age_s=31) == "aged"


def test_memory_holding_another_object_is_gone_not_a_leak() -> None:
    other = (0x5A0000, 0xC000020000)  # a context of another parent took the address
    assert judge(cancel_ctx(other, 0), age_s=31) == "gone"
    assert judge(None, age_s=31) == "gone"  # unreadable: the process is gone


def test_a_context_just_created_is_left_for_the_next_scan() -> None:
    # its parent is stored inside propagateCancel, after the probe: not yet in memory
    assert judge(cancel_ctx((0, 0), 0), age_s=0.001) == ""


def test_exact_entries_age_without_reading_memory() -> None:
    assert judge(None, age_s=31, weight=0) == "aged"
    assert judge(None, age_s=1, weight=0) == ""


def test_window_must_be_shorter_than_period() -> None:
    with pytest.raises(ValidationError, match=r"context_window \(6s\) must be shorter than context_period \(5s\)"):
        Config.model_validate({"context_window": "6s", "context_period": "5s"})
    c = Config.model_validate({"contexts": True})
    assert (c.context_mode, c.context_window, c.context_period) == ("sampled", 0.25, 5.0)
