"""The fork server forked by `gotel run` itself (gotel.service.forkserver.prefork): it is the supervisor's child,
named gotel-fork, forks commands that get their stdin/stderr and report their exit code, is reaped by
the client; it is never forked while another thread runs, nor with GOTEL_NO_PREFORK=1.

Each case runs in a fresh interpreter: prefork freezes the caller's objects and forks it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import asyncio, json, os, sys, threading, time
from gotel.service.forkserver import ForkServerClient, prefork

if sys.argv[1] == "thread":
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
forked = prefork(["synthetic"])

def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()

async def main():
    fs = ForkServerClient()
    await fs.start(["synthetic"])
    parent_is_us = int(stat(fs.pid)[1]) == os.getpid()
    p = await fs.spawn(["validate", "-c", sys.argv[2]], b"", 1 << 20)
    with open(f"/proc/{fs.pid}/comm") as f:  # named by now: it has served a request
        comm = f.read().strip()
    err = (await p.stderr.read()).decode()
    code = await p.wait()
    server = fs.proc
    await fs.stop()
    print(json.dumps({"forked": forked, "parent_is_us": parent_is_us, "comm": comm, "code": code,
                      "err": err, "server_rc": server.returncode}))
asyncio.run(main())
"""


def _run(mode: str, bad: Path, env_extra: dict[str, str] | None = None) -> dict[str, object]:
    env = {**os.environ, **(env_extra or {})}
    env.pop("GOTEL_NO_FORKSERVER", None)
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(bad)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    info: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return info


def test_a_preforked_server_forks_commands_and_is_reaped(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers: {nope: {}}\n")
    info = _run("plain", bad)
    assert info["forked"] is True
    assert info["comm"] == "gotel-fork" and info["parent_is_us"] is True
    assert info["code"] == 1 and "nope" in str(info["err"])  # validate's own message, through our pipe
    assert info["server_rc"] == 0  # it returned when the client closed the socket, and was reaped


def test_no_prefork_while_a_thread_runs_or_when_turned_off(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers: {nope: {}}\n")
    for mode, env in (("thread", {}), ("plain", {"GOTEL_NO_PREFORK": "1"})):
        info = _run(mode, bad, env)
        assert info["forked"] is False, (mode, env)
        # the client then execs a server as before (also our child), which works the same
        assert info["comm"] == "gotel-fork" and info["code"] == 1 and "nope" in str(info["err"])
        assert info["server_rc"] == 0
