"""RED metrics counted in the kernel (bpf/include/go_ebpf_red.h) and the source-sampling settings.

Every call that ends is added to the BPF hash `go_red` under a key made of what its metric labels come
from; this module reads the map as deltas once per export interval and folds them into the Assembler's
series (events.Assembler.fold_red), so counts are exact whether or not a call's span was kept, and the
agent pays per series and interval, not per call. Spans still offer exemplars (the slowest kept call).
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gotel.config.types import Duration
from gotel.receivers.go_ebpf.events import STR_LEN, TP_LEN

RED_M = 16
# struct red_key / struct red_val of go_ebpf_red.h (tests/unit/go_ebpf/test_record_layout.py compares them)
RED_KEY = struct.Struct(f"<IBBHiI16s{RED_M}s{STR_LEN}s{TP_LEN}s")
RED_NB, RED_BB = 16, 9
RED_VAL = struct.Struct(f"<4Q{RED_NB}Q2Q{RED_BB}Q2Q")
GO_CFG = struct.Struct("<QQII")


class SamplingConfig(BaseModel):
    """Which calls become spans; decided in BPF when a call ends (metrics count every call anyway)."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(1.0, ge=0.0, le=1.0, description=(
        "fraction of the calls not kept otherwise that are kept, chosen by a hash of the call's connection "
        "and stream so the client and the server of one call decide alike (1: every call)"))
    slow_threshold: Duration | None = Field(None, gt=0, description=(
        "calls lasting at least this long are always kept (unset: no such rule)"))


def keep_below(fraction: float) -> int:
    """The 32-bit hash threshold under which a call is kept."""
    return min(int(fraction * (1 << 32)), (1 << 32) - 1)


def configure(program: Any, sampling: SamplingConfig, mono_to_unix: int) -> None:
    """Writes go_cfg: the clock offset (deadlines are wall times) and the sampling rule."""
    on = sampling.fraction < 1.0 or sampling.slow_threshold is not None
    slow = int(sampling.slow_threshold * 1e9) if sampling.slow_threshold is not None else 0
    raw = GO_CFG.pack(mono_to_unix & ((1 << 64) - 1), slow, keep_below(sampling.fraction), 1 if on else 0)
    table = program.table("go_cfg")
    leaf = table.Leaf.from_buffer_copy(raw)
    table[ctypes.c_int(0)] = leaf


class KernelRed:
    """Reads go_red as deltas into an Assembler; forgets a process's series when it is gone."""

    def __init__(self, program: Any, asm: Any) -> None:
        self.table = program.table("go_red")
        self.counts = program.table("go_sampling_counts")
        self.asm = asm
        self._last: dict[bytes, tuple[int, ...]] = {}

    def read(self) -> int:
        """Folds what changed since the last read; returns the number of series changed."""
        changed = 0
        for k, v in self.table.items():
            kb, vals = bytes(k), RED_VAL.unpack(bytes(v))
            prev = self._last.get(kb)
            if prev is not None and prev[0] == vals[0]:
                continue
            self._last[kb] = vals
            delta = vals if prev is None else tuple(a - b for a, b in zip(vals, prev, strict=True))
            if delta[0] > 0:
                self.asm.fold_red(kb, delta, vals)
                changed += 1
        return changed

    def forget(self, pid: int) -> None:
        """A process is gone: its last deltas read, its series leave the map."""
        self.read()
        for kb in [kb for kb in self._last if RED_KEY.unpack_from(kb)[0] == pid]:
            del self._last[kb]
            with contextlib.suppress(KeyError):
                del self.table[self.table.Key.from_buffer_copy(kb)]

    def sampled(self) -> tuple[int, int]:
        """(kept, not kept) by sampling since load."""
        return (int(sum(self.counts[ctypes.c_int(0)])), int(sum(self.counts[ctypes.c_int(1)])))
