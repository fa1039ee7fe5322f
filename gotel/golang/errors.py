"""Errors of Go binary analysis: each says what is missing and in which file, never a guess."""

from __future__ import annotations


class GoAnalysisError(Exception):
    """Base class: the binary cannot answer this question."""


class NotELF(GoAnalysisError):
    """The file is not a 64-bit little-endian x86-64 ELF executable."""


class NotGo(GoAnalysisError):
    """The file has no Go build info and no Go pclntab: not a Go program."""


class NoDWARF(GoAnalysisError):
    """The binary carries no DWARF (built with -ldflags=-w, or stripped): struct offsets are unknown."""


class TypeNotFound(GoAnalysisError, KeyError):
    """The DWARF has no struct type of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FieldNotFound(GoAnalysisError, KeyError):
    """The struct has no such field (the message lists the fields it has)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FunctionNotFound(GoAnalysisError, KeyError):
    """Neither the symbol table nor the pclntab has that function."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
