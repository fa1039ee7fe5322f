"""The ring buffer read through its mapped pages (gotel.ebpf.ringbuf): every committed record once, in
order, across many wraps of a one-page ring, with records of varying length; what did not fit is counted
as lost by the BPF side, never half-read."""

from __future__ import annotations

import os
import struct

from gotel.ebpf.program import BpfProgram

SRC = r"""
#include "gotel_ringbuf.h"
GOTEL_RINGBUF(rb, 1);
BPF_ARRAY(seq, u64, 1);
struct rec { u64 n; u64 pad[8]; };
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    int z = 0;
    u64 *s = seq.lookup(&z);
    if (!s)
        return 0;
    u64 n = __sync_fetch_and_add(s, 1);
    /* 12..61 bytes: lengths that are not multiples of 8 too (the ring pads each record to 8) */
    u32 len = 12 + (n % 8) * 7;
    struct rec r = {};
    r.n = n;
    r.pad[0] = len;
    if (len > sizeof(r))
        return 0;
    if (rb.ringbuf_output(&r, len, GOTEL_RB_FLAGS))
        gotel_count_lost(GOTEL_LOST_FULL);
    return 0;
}
"""


def test_every_record_once_in_order_across_wraps() -> None:
    prog = BpfProgram(SRC, defines={"TARGET": os.getpid()})
    try:
        got: list[bytes] = []
        prog.collect_ring_buffer("rb", got)
        seen: list[int] = []
        for _round in range(200):  # 4,000 records of 12-61 bytes (+8 header, padded): ~40 wraps of 4 KiB
            for _ in range(20):
                os.getppid()
            prog.consume()
            seen += [struct.unpack_from("<Q", r)[0] for r in got]
            assert all(len(r) == 12 + (struct.unpack_from("<Q", r)[0] % 8) * 7 for r in got)
            got.clear()
        assert seen == list(range(4000))
        assert prog.lost_counts() == (0, 0)
        # not drained: the one-page ring takes what fits, the rest is counted, nothing is torn
        for _ in range(200):
            os.getppid()
        prog.consume()
        n = [struct.unpack_from("<Q", r)[0] for r in got]
        full, _ = prog.lost_counts()
        assert n == list(range(4000, 4000 + len(n))) and 0 < len(n) < 200
        assert len(n) + full == 200
    finally:
        prog.close()
