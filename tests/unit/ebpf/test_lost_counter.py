"""Kernel-side loss counters become self-telemetry deltas."""

from __future__ import annotations

from typing import Any

from gotel.component.contract import Kind
from gotel.ebpf.program import LostCounter
from gotel.telemetry.counters import Telemetry


class _FakeProgram:
    def __init__(self) -> None:
        self.counts = (0, 0)
        self.skipped = 0

    def lost_counts(self) -> tuple[int, int]:
        return self.counts

    def skipped_runs(self) -> int:
        return self.skipped


def test_deltas_are_exported_with_reasons() -> None:
    t = Telemetry()
    prog: Any = _FakeProgram()
    lc = LostCounter(prog, t.component("usdt", Kind.RECEIVER), "usdt")
    prog.counts = (3, 1)
    assert lc.update() == (3, 1, 0)
    prog.counts, prog.skipped = (5, 1), 4
    assert lc.update() == (2, 0, 4)

    def val(reason: str) -> float | None:
        return t.registry.get_sample_value(
            "gotel_ebpf_lost_events_total", {"component": "usdt", "kind": "receiver", "program": "usdt", "reason": reason}
        )

    assert val("ringbuf_full") == 5
    assert val("unreadable") == 1
    assert val("skipped_nested") == 4
