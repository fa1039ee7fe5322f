"""Which processes a runtime receiver looks at: pids, executable globs, command-line regexes, Go only.

Interim selector for the process/sched/go_runtime/net receivers; the discovery module of the eBPF
substrate (issue 3) replaces the scanning when it lands, the config keys stay.
"""

from __future__ import annotations

import fnmatch
import os
import re

from pydantic import Field, field_validator

from gotel.component import ComponentConfig


class Selection(ComponentConfig):
    """A process is selected when it matches any listed pid, exe glob or cmdline regex.

    With nothing listed, every Go process on the host is selected (``go_only`` then applies).
    """

    pids: list[int] = Field(default_factory=list)
    exe: list[str] = Field(default_factory=list, description="globs on the resolved executable path")
    cmdline: list[str] = Field(default_factory=list, description="regexes searched in the command line")
    go_only: bool = Field(True, description="only processes whose executable carries Go build info")

    @field_validator("cmdline")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for r in v:
            try:
                re.compile(r)
            except re.error as e:
                raise ValueError(f"invalid regex {r!r}: {e}") from None
        return v


_GO_FILES: dict[tuple[int, int], bool] = {}


def _is_go_file(dev: int, ino: int, path: str) -> bool:
    """True when the ELF file has a .go.buildinfo section (every Go >= 1.13 binary, stripped or not)."""
    key = (dev, ino)
    if key not in _GO_FILES:
        if len(_GO_FILES) > 4096:
            _GO_FILES.clear()
        _GO_FILES[key] = _has_buildinfo(path)
    return _GO_FILES[key]


def _has_buildinfo(path: str) -> bool:
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            elf = ELFFile(f)
            return elf.get_section_by_name(".go.buildinfo") is not None
    except Exception:
        return False


def is_go_process(pid: int) -> bool:
    exe = f"/proc/{pid}/exe"
    try:
        st = os.stat(exe)
    except OSError:
        return False
    return _is_go_file(st.st_dev, st.st_ino, exe)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def select(sel: Selection, proc: str = "/proc") -> set[int]:
    """Scans /proc once and returns the selected tgids (the agent's own pid is never selected)."""
    me = os.getpid()
    explicit = bool(sel.pids or sel.exe or sel.cmdline)
    regexes = [re.compile(r) for r in sel.cmdline]
    out: set[int] = set()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me:
            continue
        hit = not explicit or pid in sel.pids
        if not hit and sel.exe:
            try:
                path = os.readlink(f"{proc}/{pid}/exe")
            except OSError:
                path = ""
            hit = any(fnmatch.fnmatch(path, g) for g in sel.exe)
        if not hit and regexes:
            cl = _cmdline(pid)
            hit = any(r.search(cl) for r in regexes)
        if not hit:
            continue
        # explicit pids are taken as given; everything else must be Go when go_only is set
        if sel.go_only and pid not in sel.pids and not is_go_process(pid):
            continue
        out.add(pid)
    return out
