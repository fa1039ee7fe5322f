"""A cached analysis first made through /proc/PID/exe stays usable after that process exits."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gotel import golang
from gotel.golang.elf import ElfImage
from tests.helpers import goapps


def test_path_of_a_cached_binary_outlives_the_process_it_was_read_through(goapp: Callable[..., Any]) -> None:
    golang.cache_clear()
    app = goapp("httpapp", "server")
    first = golang.analyze(f"/proc/{app.pid}/exe")
    assert str(first.path) == f"/proc/{app.pid}/exe"
    app.stop()
    assert not os.path.exists(f"/proc/{app.pid}/exe")
    again = golang.analyze(goapps.build("httpapp", "go1.27"))
    assert again is first  # the cache hit, not a second analysis
    assert os.path.exists(again.path)
    ElfImage(again.path).close()  # whoever reopens the file (symbols, uprobe attach) finds it
