"""An eBPF receiver without the capabilities it needs says what is missing and how to fix it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.agent import GOTEL

# uid 0 with no capabilities at all: a container whose securityContext forgot to add them.
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def test_bpf_receiver_without_capabilities_exits_78_naming_the_fixes(tmp_path: Path) -> None:
    cfg = tmp_path / "gotel.yaml"
    cfg.write_text(
        "receivers: {sched: {}}\nexporters: {debug: {}}\n"
        "service: {pipelines: {metrics: {receivers: [sched], exporters: [debug]}}}\n"
    )
    r = subprocess.run([*NO_CAPS, GOTEL, "receiver", "sched", "-c", str(cfg), "--endpoint", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "receiver sched cannot run" in r.stderr
    assert "missing CAP_BPF, CAP_PERFMON" in r.stderr and "Fix:" in r.stderr
    assert "Traceback" not in r.stderr
