from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gotel.cli.commands import flame as cmd
from gotel.formats import (
    pprof,
    profconv,
)
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


HEAP = [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")]


def _mixed_file(tmp_path: Path) -> Path:
    """What the file exporter writes for a pprof target: goroutine first, then CPU, heap, CPU again."""
    from google.protobuf import json_format

    gor = make_profile([("goroutine", "count")], [(["runtime.gopark", "main.wait"], [40])])
    heap = make_profile(HEAP, [(["main.alloc", "main.main"], [10, 1 << 30, 5, 1 << 29])])
    cpu2 = make_profile(CPU, [(["main.hotLoop", "main.burn", "main.main"], [10, 100_000_000])])
    lines = [json.dumps(json_format.MessageToDict(profconv.pprof_to_otlp(p, {"service.name": "svc"})))
             for p in (gor, cpu_profile(), heap, cpu2)]
    f = tmp_path / "profiles.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_mixed_file_defaults_to_cpu_and_never_adds_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _mixed_file(tmp_path)
    out = tmp_path / "f.svg"
    assert run(str(f), "--svg", str(out), "--top", "3") == 0
    captured = capsys.readouterr()
    # CPU only: 900+100+50 ms in the first CPU profile, 100 ms in the second; not bytes, not goroutines
    assert "top 3 by flat cpu (nanoseconds), total 1.15s" in captured.out
    assert "2 profiles; 2 without cpu left out" in captured.err
    title = ET.parse(out).getroot().find("{http://www.w3.org/2000/svg}text")
    assert title is not None and (title.text or "").startswith("cpu (nanoseconds)")


def test_type_cpu_finds_cpu_among_others_and_list_says_what_is_there(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    f = _mixed_file(tmp_path)
    assert run(str(f), "--type", "cpu", "--top", "1") == 0
    assert "total 1.15s" in capsys.readouterr().out
    assert run(str(f), "--type", "goroutine", "--top", "1") == 0
    assert "top 1 by flat goroutine (count), total 40" in capsys.readouterr().out
    assert run(str(f), "--list") == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == "cpu (nanoseconds): 2 profiles, total 1.15s (svc)"
    assert "goroutine (count): 1 profile, total 40 (svc)" in listed
    assert "inuse_space (bytes): 1 profile, total 512.00MiB (svc)" in listed
    assert run(str(f), "--type", "wall") == 1
    err = capsys.readouterr().err
    assert "sample type 'wall' not in profile; it holds:" in err and "cpu (nanoseconds): 2 profiles" in err
