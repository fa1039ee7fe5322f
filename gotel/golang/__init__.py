"""Go binary analysis for the eBPF receivers: build info, functions, RET offsets, DWARF struct offsets, USDT.

Pure Python (pyelftools, capstone); no BPF. Entry point: `analyze(path) -> GoBinary`. See docs/golang.md.
"""

from gotel.golang.binary import FileIdentity, GoBinary, analyze, cache_clear
from gotel.golang.buildinfo import BuildInfo, Module
from gotel.golang.errors import (
    FieldNotFound,
    FunctionNotFound,
    GoAnalysisError,
    NoDWARF,
    NotELF,
    NotGo,
    TypeNotFound,
)
from gotel.golang.symbols import Function
from gotel.golang.usdt import ProbeArg, USDTProbe

__all__ = [
    "BuildInfo", "FieldNotFound", "FileIdentity", "Function", "FunctionNotFound", "GoAnalysisError", "GoBinary",
    "Module", "NoDWARF", "NotELF", "NotGo", "ProbeArg", "TypeNotFound", "USDTProbe", "analyze", "cache_clear",
]
