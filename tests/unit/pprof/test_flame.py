from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gotel import flame, otlpbuild, pprof, profconv  # noqa: F401
from gotel.commands import flame as cmd
from tests.helpers.pprofkit import make_profile

CPU = [("samples", "count"), ("cpu", "nanoseconds")]


def cpu_profile() -> pprof.Profile:
    return make_profile(CPU, [
        (["main.hotLoop", "main.burn", "main.main"], [90, 900_000_000]),
        (["runtime.mallocgc", "main.burn", "main.main"], [10, 100_000_000]),
        (["syscall.read", "main.io"], [5, 50_000_000]),
    ])


def run(*argv: str) -> int:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(list(argv)))


def test_svg_from_pprof_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cpu.pprof"
    f.write_bytes(pprof.encode(cpu_profile()))
    out = tmp_path / "cpu.svg"
    assert run(str(f), "--svg", str(out), "--top", "3") == 0
    root = ET.parse(out).getroot()  # well-formed, self-contained XML
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text or "" for t in root.iter(ns + "title")]
    assert any(t.startswith("main.hotLoop — 900.00ms (85.7") for t in titles)
    assert not any(e.tag.endswith("script") for e in root.iter())
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if "main." in ln or "runtime." in ln or "syscall." in ln]
    assert "main.hotLoop" in lines[0]  # top of the table


def test_otlp_json_lines_and_sample_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from google.protobuf import json_format

    req = profconv.pprof_to_otlp(cpu_profile(), {"service.name": "svc"})
    line = json.dumps(json_format.MessageToDict(req))
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps({"resourceSpans": []}) + "\n" + line + "\n")
    assert run(str(f), "--type", "samples", "--top", "2") == 0
    assert "top 2 by flat samples" in capsys.readouterr().out


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.html"
    f.write_text("<html>nope</html>")
    assert run(str(f)) == 1
    assert "HTML" in capsys.readouterr().err
    g = tmp_path / "cpu.pprof"
    g.write_bytes(pprof.encode(cpu_profile()))
    assert run(str(g), "--type", "alloc_space") == 1
    assert "not in profile" in capsys.readouterr().err
