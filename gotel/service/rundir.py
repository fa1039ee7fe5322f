"""The pipeline's private run-time folder (the internal socket lives there), and its clean-up.

The folder is named after the pipeline's pid (``gotel-run-<pid>-XXXX``), so a later start can tell
a folder left by a crashed or killed pipeline (its pid is gone) from one a running pipeline still
uses: only the first kind is removed, and only when it belongs to this user.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile

log = logging.getLogger("gotel.service")
PREFIX = "gotel-run-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[A-Za-z0-9_]+$")


def base_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        base = tempfile.gettempdir()
    return base


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def clean_stale(base: str | None = None) -> list[str]:
    """Removes this user's run-time folders whose pipeline pid no longer runs; returns their paths."""
    base = base or base_dir()
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        m = _NAME.match(name)
        if m is None:
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != uid:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    if removed:
        log.info("removed %d run-time folder(s) left by pipelines that did not stop cleanly: %s",
                 len(removed), ", ".join(removed))
    return removed


def runtime_dir() -> str:
    """A private (0700) folder for the internal socket, after removing stale ones."""
    base = base_dir()
    clean_stale(base)
    d = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base)
    os.chmod(d, 0o700)
    return d
