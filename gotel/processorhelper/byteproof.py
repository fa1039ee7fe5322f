"""Regexes over text as proofs over encoded requests: `relax(rx)` gives a bytes regex that finds a match in
any bytes holding the UTF-8 of a string the text regex finds a match in. A processor that searches the
wire bytes of a request (or of one item) with it and finds nothing knows that no attribute key or string
value in them can match, and leaves them alone without decoding them.

How: each piece of the text regex becomes a piece that matches at least the same strings' bytes. One
character of text is one to four bytes: a piece that can match a non-ASCII character (`.`, a negated
class, `\\w` in Unicode mode, a case-insensitive letter) also takes any run of 2-4 bytes >= 0x80.
Anchors and lookarounds only restrict where a match may be, so they are dropped (inside the encoding,
a value neither starts the text nor is it bounded by non-word characters). What cannot be relaxed this
way (back references, conditionals) gives None: no proof.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# re's own parser (the same tree re compiles), private: typeshed has no stubs for it
p: Any = importlib.import_module("re._parser")
c: Any = importlib.import_module("re._constants")

_MULTI = rb"[\x80-\xff]{2,4}"  # one non-ASCII character, as UTF-8
_CATEGORY = {c.CATEGORY_SPACE: r"\s", c.CATEGORY_NOT_SPACE: r"\S", c.CATEGORY_DIGIT: r"\d",
             c.CATEGORY_NOT_DIGIT: r"\D", c.CATEGORY_WORD: r"\w", c.CATEGORY_NOT_WORD: r"\W"}


def _category(cat: Any, ascii_mode: bool) -> tuple[bytes, bool]:
    r"""The ASCII bytes a class escape matches (asked of re itself, in the regex's mode), and whether it
    may match a non-ASCII character: all but \s, \d, \w in ASCII mode do."""
    rx = re.compile(_CATEGORY[cat], re.ASCII if ascii_mode else 0)
    members = b"".join(_byte(ch) for ch in range(0x80) if rx.match(chr(ch)))
    return members, not (ascii_mode and cat in (c.CATEGORY_SPACE, c.CATEGORY_DIGIT, c.CATEGORY_WORD))


class _NoProof(Exception):
    pass


def _byte(ch: int) -> bytes:
    return re.escape(bytes([ch])) if ch < 0x80 else b""


class _Relaxer:
    def __init__(self, flags: int) -> None:
        self.ascii = bool(flags & re.ASCII)
        self.icase = bool(flags & re.IGNORECASE)

    def seq(self, items: Any, icase: bool) -> bytes:
        return b"".join(self.one(op, av, icase) for op, av in items)

    def _class(self, members: bytes, non_ascii: bool) -> bytes:
        cls = b"[" + members + b"]" if members else b""
        if non_ascii:
            return b"(?:" + cls + b"|" + _MULTI + b")" if cls else _MULTI
        return cls if cls else b"(?!)"

    def _letters(self, ch: int, icase: bool) -> tuple[bytes, bool]:
        """A literal's byte(s) in a class, and whether a non-ASCII character may match it."""
        if ch >= 0x80:  # case-insensitive, a non-ASCII letter may match an ASCII one (K, the Kelvin sign)
            return (b"\\x00-\\x7f", True) if icase else (b"", True)
        if icase and chr(ch).isalpha():
            return re.escape(chr(ch).lower().encode()) + re.escape(chr(ch).upper().encode()), not self.ascii
        return _byte(ch), False

    def one(self, op: Any, av: Any, icase: bool) -> bytes:
        if op is c.LITERAL:
            members, multi = self._letters(av, icase)
            if not multi and len(members) <= 2 and not (icase and chr(av).isalpha()):
                return members
            return self._class(members, multi)
        if op is c.ANY:  # any character (a newline too: (?s) may be set inside a group)
            return self._class(b"\\x00-\\xff", True)
        if op is c.NOT_LITERAL:
            excluded = b"" if icase else _byte(av)
            return self._class(b"^" + excluded if excluded else b"\\x00-\\xff", True)
        if op is c.IN:
            return self._in(av, icase)
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            lo, hi, item = av
            body = self.seq(item, icase)
            hi_s = b"" if hi == c.MAXREPEAT else str(hi).encode()
            return b"(?:" + body + b"){" + str(lo).encode() + b"," + hi_s + b"}"
        if op is c.SUBPATTERN:
            _group, add, dele, item = av
            if add & re.UNICODE or dele & re.ASCII:
                raise _NoProof("Unicode classes inside an ASCII regex")
            inner_icase = (icase or bool(add & re.IGNORECASE)) and not dele & re.IGNORECASE
            return b"(?:" + self.seq(item, inner_icase) + b")"
        if op is c.ATOMIC_GROUP:
            return b"(?:" + self.seq(av, icase) + b")"
        if op is c.BRANCH:
            return b"(?:" + b"|".join(self.seq(alt, icase) for alt in av[1]) + b")"
        if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            return b""  # only where a match may be: dropped, the relaxed regex matches more
        raise _NoProof(str(op))

    def _in(self, items: Any, icase: bool) -> bytes:
        negate = bool(items) and items[0][0] is c.NEGATE
        if negate:
            if icase:  # which letters a negated case-insensitive class leaves out: any byte may do
                return self._class(b"\\x00-\\xff", True)
            excluded = b"".join(self._member(op, av, False)[0] for op, av in items[1:])
            return self._class(b"^" + excluded if excluded else b"\\x00-\\xff", True)
        members = []
        multi = False
        for op, av in items:
            m, n = self._member(op, av, icase)
            members.append(m)
            multi |= n
        return self._class(b"".join(members), multi)

    def _member(self, op: Any, av: Any, icase: bool) -> tuple[bytes, bool]:
        if op is c.LITERAL:
            return self._letters(av, icase)
        if op is c.RANGE:
            lo, hi = av
            if icase and hi >= 0x80:
                return b"\\x00-\\x7f", True
            multi = hi >= 0x80 or (icase and not self.ascii)
            hi = min(hi, 0x7F)
            if lo > hi:
                return b"", True
            rng = _byte(lo) + b"-" + _byte(hi)
            if icase:
                lower = "".join(ch for ch in map(chr, range(lo, hi + 1)) if ch.isalpha())
                rng += re.escape((lower.lower() + lower.upper()).encode())
            return rng, multi
        if op is c.CATEGORY:
            if av not in _CATEGORY:
                raise _NoProof(str(av))
            return _category(av, self.ascii)
        raise _NoProof(str(op))


def relax(rx: re.Pattern[str]) -> re.Pattern[bytes] | None:
    """A bytes regex matching (at least) the UTF-8 of every string rx finds a match in; None: no proof."""
    try:
        tree = p.parse(rx.pattern, rx.flags & ~re.UNICODE)
        r = _Relaxer(tree.state.flags | rx.flags)
        return re.compile(r.seq(tree, r.icase), re.DOTALL)
    except (_NoProof, re.error, RecursionError):
        return None


def relax_all(patterns: list[re.Pattern[str]]) -> re.Pattern[bytes] | None:
    """One bytes regex for all of them (a match of any one); None when one of them gives no proof."""
    parts = []
    for rx in patterns:
        b = relax(rx)
        if b is None:
            return None
        parts.append(b"(?:" + b.pattern + b")")
    if not parts:
        return re.compile(b"(?!)")
    return re.compile(b"|".join(parts), re.DOTALL)


def starts_with_literal(rx: re.Pattern[bytes]) -> bool:
    """Whether every match starts with one fixed byte: re then skips to its occurrences at C speed.
    Without that, searching a whole request tries a match at every byte (e.g. `[a-z]+://` relaxed:
    tens of milliseconds for 160 kB), which can cost more than decoding the request."""
    tree = list(p.parse(rx.pattern, rx.flags))
    while tree:
        op, av = tree[0]
        if op is c.LITERAL:
            return True
        if op is not c.SUBPATTERN:
            return False
        tree = list(av[3])
    return False
