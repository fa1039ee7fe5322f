"""Which processes a receiver instruments: the `discovery:` block every eBPF and pull receiver embeds.

    discovery:
      exe_paths: ["*/grpcapp"]      # globs on /proc/PID/exe
      cmdline: "--port[= ]80"       # regex searched in the space-joined command line
      ports: [8080]                 # listening TCP ports
      pids: []                      # exact pids
      container_ids: []             # full or 12-char short ids from /proc/PID/cgroup
      go_only: true                 # only Go programs (build info present)
      exclude: {exe_paths: ["*/debug-*"]}

Every criterion that is set must match (AND); a list matches when any element does (OR). An empty
block selects every Go process on the host. `exclude` uses the same fields and wins.
"""

from __future__ import annotations

import fnmatch
import os
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gotel.discovery.procfs import ProcessInfo, listening_ports


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pids: list[int] = Field(default_factory=list, description="exact process ids")
    exe_paths: list[str] = Field(default_factory=list, description="globs matched against /proc/PID/exe")
    cmdline: str | None = Field(default=None, description="regex searched in the command line (args joined by spaces)")
    ports: list[int] = Field(default_factory=list, description="TCP ports the process listens on")
    container_ids: list[str] = Field(default_factory=list, description="container ids (full, or a prefix of 12+ hex chars)")

    @field_validator("cmdline")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"invalid regular expression {v!r}: {e}") from e
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 < p < 65536:
                raise ValueError(f"port {p} is out of range 1-65535")
        return v

    def is_empty(self) -> bool:
        return not (self.pids or self.exe_paths or self.cmdline or self.ports or self.container_ids)

    def needs_ports(self) -> bool:
        return bool(self.ports)

    def matches(self, p: ProcessInfo) -> bool:
        if self.pids and p.pid not in self.pids:
            return False
        if self.exe_paths:
            exe = p.exe.removesuffix(" (deleted)")
            if not any(fnmatch.fnmatchcase(exe, g) or fnmatch.fnmatchcase(os.path.basename(exe), g) for g in self.exe_paths):
                return False
        if self.cmdline is not None and not re.search(self.cmdline, " ".join(p.cmdline)):
            return False
        if self.container_ids:
            cid = p.container_id or ""
            if not cid or not any(cid.startswith(c) for c in self.container_ids):
                return False
        if self.ports:
            ports = p.ports or listening_ports(p.pid)
            if not ports.intersection(self.ports):
                return False
        return True


class DiscoveryConfig(Criteria):
    """The selector block embedded by every receiver that targets processes."""

    go_only: bool = Field(default=True, description="select only Go programs (the usdt receiver may trace any binary)")
    exclude: Criteria | None = Field(default=None, description="processes matching these criteria are never selected")

    def selects(self, p: ProcessInfo) -> bool:
        if self.go_only and not p.is_go:
            return False
        if self.exclude is not None and not self.exclude.is_empty() and self.exclude.matches(p):
            return False
        return self.matches(p)
