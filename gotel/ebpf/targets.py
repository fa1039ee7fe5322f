"""The one place the eBPF side talks to Go binary analysis (gotel.golang): turns a GoBinary into the
addresses, RET sites and facts that attaching and `gotel inspect` need.

Keeping the adapter thin and in one module means a change in gotel.golang's API touches one file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gotel.ebpf.goprobes import Site
from gotel.ebpf.probespecs import BinaryFacts


def analyze(path: str) -> Any:
    """gotel.golang.analyze (cached by build id there)."""
    from gotel.golang import analyze as _analyze

    return _analyze(path)


def _call_or_get(obj: Any, name: str) -> Any:
    v = getattr(obj, name, None)
    return v() if callable(v) else v


def function_address(gb: Any, symbol: str) -> int | None:
    fn = _function(gb, symbol)
    return None if fn is None else int(_first(fn, "entry", "address", "addr"))


def _function(gb: Any, symbol: str) -> Any:
    funcs = _call_or_get(gb, "functions")
    if isinstance(funcs, dict):
        return funcs.get(symbol)
    finder = getattr(gb, "function", None)
    if callable(finder):
        try:
            return finder(symbol)
        except KeyError:
            return None
    return None


def _first(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    if isinstance(obj, int):
        return obj
    raise AttributeError(f"{type(obj).__name__} has none of {names}")


def ret_addresses(gb: Any, symbol: str) -> list[int]:
    """Virtual addresses of every RET in the function (gotel.golang gives offsets from its entry)."""
    entry = function_address(gb, symbol)
    if entry is None:
        return []
    offs = gb.ret_offsets(symbol)
    return [entry + int(o) for o in offs]


def struct_offset(gb: Any, type_name: str, field: str) -> int | None:
    try:
        v = gb.struct_offset(type_name, field)
    except (KeyError, LookupError, ValueError):
        return None
    return None if v is None else int(v)


def go_version(gb: Any) -> str | None:
    v = _call_or_get(gb, "go_version")
    return str(v) if v else None


def modules(gb: Any) -> dict[str, str]:
    mods = _call_or_get(gb, "modules") or {}
    if isinstance(mods, dict):
        return {str(k): str(_first(v, "version") if not isinstance(v, str) else v) for k, v in mods.items()}
    out: dict[str, str] = {}
    for m in mods:
        out[str(_first(m, "path"))] = str(_first(m, "version"))
    return out


def facts_for(gb: Any) -> BinaryFacts:
    rets: dict[str, int | None] = {}

    def ret_count(sym: str) -> int | None:
        if sym not in rets:
            try:
                rets[sym] = len(ret_addresses(gb, sym))
            except Exception:
                rets[sym] = None
        return rets[sym]

    return BinaryFacts(
        go_version=go_version(gb),
        modules=modules(gb),
        has_dwarf=bool(_call_or_get(gb, "has_dwarf")),
        function_address=lambda s: function_address(gb, s),
        ret_count=ret_count,
        struct_offset=lambda t, f: struct_offset(gb, t, f),
    )


def function_sites(path: str, functions: Iterable[str], fn_name: str, ret_fn_name: str | None = None) -> list[Site]:
    """Entry and every RET of each function, all running fn_name (or ret_fn_name at the RETs)."""
    gb = analyze(path)
    sites: list[Site] = []
    for sym in functions:
        entry = function_address(gb, sym)
        if entry is None:
            continue
        sites.append(Site(entry, fn_name, sym))
        sites += [Site(r, ret_fn_name or fn_name, sym, is_return=True) for r in ret_addresses(gb, sym)]
    return sites
