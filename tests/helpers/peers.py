"""Real peers built from Go modules (tests/peers/NAME): Jaeger v2, an OpenTelemetry Collector, ...

`scripts/bootstrap_go.sh` is the one place that knows how a peer is built and where it is cached; this
module asks it for the binary's path (building it first if `make bootstrap` has not).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "tests" / "peers"


class PeerBuildError(RuntimeError):
    """A peer could not be built; the message carries the Go toolchain's output."""


@functools.cache
def peer_binary(name: str) -> Path:
    """Path of peer NAME's binary, built from tests/peers/NAME/go.mod by scripts/bootstrap_go.sh."""
    if not (PEERS / name / "go.mod").is_file():
        raise ValueError(f"no peer {name!r} under {PEERS}")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap_go.sh"), "--path", name],
                          capture_output=True, text=True)
    path = Path(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    if proc.returncode != 0 or path is None or not path.is_file():
        raise PeerBuildError(f"building peer {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return path
