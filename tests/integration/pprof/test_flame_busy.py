"""`gotel flame URL` on a target whose CPU profiler is busy says the target's own reason."""

from __future__ import annotations

import argparse
import threading
import urllib.error
import urllib.request

import pytest

from gotel.cli.commands import flame as flame_cmd

from .conftest import goapp, wait_cpu_profile_running  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_busy_cpu_profiler_text_is_passed_through(goapp, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    app = goapp("runtime")
    holder = threading.Thread(target=lambda: urllib.request.urlopen(app.url("/debug/pprof/profile?seconds=4"),
                                                                    timeout=30).read(), daemon=True)
    holder.start()
    wait_cpu_profile_running(app)
    # the target's own answer, read independently
    try:
        urllib.request.urlopen(app.url("/debug/pprof/profile?seconds=1"), timeout=30)
        raise AssertionError("a second CPU profile was accepted")
    except urllib.error.HTTPError as e:
        truth = e.read().decode().strip()
        assert e.code == 500
    assert "cpu profiling already in use" in truth
    p = argparse.ArgumentParser()
    flame_cmd.add_arguments(p)
    rc = flame_cmd.run(p.parse_args([f"http://127.0.0.1:{app.port()}", "--seconds", "1"]))
    holder.join(10)
    assert rc == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "answered 500: " + " ".join(truth.split()) in err
    assert "HTTP Error 500" not in err
