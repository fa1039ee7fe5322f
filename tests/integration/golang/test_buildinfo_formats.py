"""The pre-Go-1.18 build info layout (pointers to string headers) — no such toolchain is installed here, so
a copy of a Go 1.19 binary is rewritten into that layout: same strings, reached through pointers."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import gotel.golang as golang
from gotel.golang.buildinfo import MAGIC, _uvarint
from gotel.golang.elf import ElfImage
from tests.helpers import goapps


def test_pointer_format_build_info(tmp_path: Path) -> None:
    src = goapps.build("modapp", "go1.19")
    want = golang.analyze(src).buildinfo
    img = ElfImage(src)
    bi_sec, data_sec = img.sections[".go.buildinfo"], img.sections[".data"]
    blob = bytes(img.data[bi_sec.offset:bi_sec.offset + bi_sec.size])
    assert blob[:14] == MAGIC and blob[15] & 2  # inline today
    vlen, vpos = _uvarint(blob, 32)
    mlen, mpos = _uvarint(blob, vpos + vlen)
    img.close()
    out = tmp_path / "old-layout"
    shutil.copy(src, out)
    with open(out, "r+b") as f:
        # two Go string headers {ptr, len} at the start of .data, pointing at the strings already there
        f.seek(data_sec.offset)
        f.write(struct.pack("<4Q", bi_sec.addr + vpos, vlen, bi_sec.addr + mpos, mlen))
        # header: flags 0 (pointer format, little endian), then pointers to those two headers
        f.seek(bi_sec.offset + 15)
        f.write(bytes([0]) + struct.pack("<2Q", data_sec.addr, data_sec.addr + 16))
        # wipe the inline copy so a parser reading it would fail the comparison
        f.seek(bi_sec.offset + 32)
        f.write(b"\0" * (vpos - 32))
    got = golang.GoBinary(out).buildinfo  # not analyze(): its cache would answer by the unchanged build id
    assert got == want and got is not None and got.dep("example.com/gotelfix/dep") is not None
