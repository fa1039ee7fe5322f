"""The default agent's memory: PSS summed over its whole process tree while it traces a Go gRPC server.

A node agent is judged by what it takes from the node. The bound here is generous (the supervisor and
three receiver processes, two of which hold a BCC-compiled program); bench/footprint carries the goal
(<= 200 MB) and prints the figures per process. The tree is found by pid, never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gotel.host.memory import TRIM_INTERVAL
from tests.e2e.agent import GOTEL, free_port
from tests.helpers import goapps
from tests.helpers.procmem import default_config, total_pss_mib, tree_mem

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the default agent's eBPF receivers need root"),
]

# Measured here: 162 and 181 MiB (this test, two runs: gotel run 36 / 41, go_ebpf 52 / 61, go_runtime
# 41 / 45, pprof+process 33 / 34; 203 and 213 MiB the previous round, one process per receiver and the
# fork server kept). The margin (~30 MiB, as before) is for a fresh machine: ~35 MB of the agent's PSS are file pages (libpython,
# gRPC's core, the traced binary) that this shared VM's other processes split with it, and would count
# in full where the agent maps them alone; and a BPF receiver's figure varies by ~5 MB between runs.
# By bench/footprint's figures the bound fails an agent without a fork server (262-301 MB = 250-287 MiB),
# and most runs of the previous round's (218-236 MB = 208-225 MiB).
BOUND_MIB = 210


def test_default_agent_pss_while_tracing_a_grpc_server(tmp_path: Path) -> None:
    server = goapps.RunningApp([str(goapps.build("grpcapp", "go1.27")), "server"])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(default_config(free_port(), free_port(), server.pid))
    log = tmp_path / "gotel.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen([GOTEL, "run", "-c", str(cfg)], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 180
        while f"traced pid {server.pid} " not in log.read_text(errors="replace"):
            assert agent.poll() is None and time.monotonic() < end, log.read_text(errors="replace")[-4000:]
            time.sleep(0.2)
        goapps.run("grpcapp", "client", "-target", f"127.0.0.1:{server.ports['grpc']}", "-n", "500",
                   toolchain="go1.27")
        spans = tmp_path / "gotel-data" / "traces.jsonl"
        while not (spans.exists() and spans.stat().st_size > 0):  # the traced calls went all the way through
            assert time.monotonic() < end, log.read_text(errors="replace")[-4000:]
            time.sleep(0.2)
        time.sleep(TRIM_INTERVAL + 2)  # steady: every process trimmed once since the calls
        mems = tree_mem(agent.pid)
        names = sorted(m.name for m in mems)
        # process and pprof share one receiver process; the fork server retired once every receiver started
        expected = ["gotel run", "receiver go_ebpf", "receiver go_runtime", "receiver pprof+process"]
        assert names == sorted(expected), names
        total = total_pss_mib(mems)
        detail = ", ".join(f"{m.name} {m.pss_mib:.0f}" for m in mems)
        assert total < BOUND_MIB, f"default agent PSS {total:.0f} MiB >= {BOUND_MIB} MiB ({detail})"
        print(f"default agent PSS {total:.0f} MiB ({detail})")
        assert all(m.pss_mib > 1 for m in mems), detail  # a sum of real readings, not of empty files
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)
        server.stop()
