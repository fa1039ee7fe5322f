"""relax(): whenever the text regex finds a match in a string, the relaxed bytes regex finds one in any
bytes that hold the string's UTF-8 (the proof the redaction processor relies on to leave bytes alone)."""

from __future__ import annotations

import random
import re

import pytest

from gotel.processorhelper.byteproof import relax, relax_all
from gotel.processors.redaction import CREDENTIAL_KEYS, CREDENTIAL_VALUES, compile_go

PATTERNS = [
    CREDENTIAL_KEYS, *(p for p, _ in CREDENTIAL_VALUES),
    r"4[0-9]{12}(?:[0-9]{3})?", r"(5[1-5][0-9]{14})", r"^secret$", r"\bpass\b", r"(?i)k[a-z]+", r"(?i)^s\w+",
    r"[^a-z]{3}", r"a.b", r"(?s)x.y", r"\s+\d", r"(?i)[^x]y", "\u00e9+", "(?i)\u00c9", "[\u00e0-\u00ff]", "(?i)[\u017f-\u017f]",
    r"(?=abc)ab", r"(?!q)\w\W?", r"x*", r"(?i:AB)c", r"(?>a+)b", r"a++b", r"[\s\d]{2}", r"(?i)\u212a",
    r"(?m)^a$", r"[^\W\d]+", r"\Ba", r"(?i)[^k]y", r"(?x) a  b", r"a{2,}?", r"(?s:.)+x", r"[\D]@", r"[\S]+@",
]
ALPHABET = "aAbBcCkKsSxXyYqQ \u00e9 \u00c9 \u212a\u017f\u0130\u0131 \x1c\n\t0123456789-_./:@?&=#4515"
WORDS = ["http.request.header.Authorization", "x-api-key", "SET_COOKIE", "pwd", "Bearer ab.c", "basic\x1cZm9v",
         "https://user:pw@host/x", "?token=abc", "&api-key=k", "4111111111111", "5105105105105100", "secret",
         "pass", "\u017fecret", "ab", "abc", "xy", "x\ny", "AB", "aab", "\u00e9\u00e9", "\u00c9", "\u212a"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) if rng.random() < 0.7 else rng.choice(WORDS)
                   for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("ascii_mode", [False, True])
def test_relaxed_regex_finds_every_match(pattern: str, ascii_mode: bool) -> None:
    rx = compile_go(pattern) if ascii_mode else re.compile(pattern)
    relaxed = relax(rx)
    assert relaxed is not None, pattern
    rng = random.Random(pattern)
    hits = 0
    for _ in range(3000):
        s = _text(rng)
        if rx.search(s) is None:
            continue
        hits += 1
        framed = rng.randbytes(rng.randint(0, 4)) + s.encode() + rng.randbytes(rng.randint(0, 4))
        assert relaxed.search(framed) is not None, (pattern, s)
    assert hits, pattern  # the pool of strings exercised the pattern


def test_what_cannot_be_relaxed_gives_no_proof() -> None:
    assert relax(re.compile(r"(a)\1")) is None
    assert relax(re.compile(r"(a)?(?(1)b|c)")) is None
    assert relax_all([re.compile("x"), re.compile(r"(a)\1")]) is None


def test_a_relaxed_regex_still_rules_out() -> None:
    """Not a regex that matches everything: the bench's values and keys hold none of these."""
    rx = relax_all([compile_go(r"4[0-9]{12}(?:[0-9]{3})?"), compile_go(r"(5[1-5][0-9]{14})"),
                    re.compile(CREDENTIAL_KEYS)])
    assert rx is not None
    assert rx.search(b"\x0a\x0eclient.address\x12\x0b\x0a\x0910.0.3.45") is None
    assert rx.search(b"\x0a\x21http.request.header.authorization") is not None
