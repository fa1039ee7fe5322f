"""Sleeping on an fd until it is readable or a timer is due (how idle eBPF readers avoid polling)."""

from __future__ import annotations

import asyncio
import os
import time

from gotel.ebpf.wakeup import readable


def test_wakes_when_data_arrives_and_times_out_otherwise() -> None:
    async def main() -> None:
        r, w = os.pipe()
        try:
            t0 = time.monotonic()
            assert await readable(r, 0.05) is False
            assert time.monotonic() - t0 >= 0.04
            loop = asyncio.get_running_loop()
            loop.call_later(0.02, os.write, w, b"x")
            t0 = time.monotonic()
            assert await readable(r, 5.0) is True
            assert time.monotonic() - t0 < 1.0  # woken by the write, not the timeout
            assert await readable(r, 5.0) is True  # still unread: readable at once
            os.read(r, 1)
            assert await readable(r, 0.0) is False  # a past-due timer: no wait
            # the fd is free again for the next wait (the reader was removed)
            loop.call_later(0.01, os.write, w, b"y")
            assert await readable(r, 5.0) is True
        finally:
            os.close(r)
            os.close(w)

    asyncio.run(main())
