"""The resource of gotel's own telemetry: defaults the collector also sets, then `service::telemetry::resource`."""

from __future__ import annotations

import os
import socket
from typing import Any

from gotel import __version__


def own_resource(configured: dict[str, Any] | None = None, pid: int | None = None) -> dict[str, Any]:
    """service.name, service.version and service.instance.id (host:pid), overridden by the config; a
    null value removes an attribute, as in the collector."""
    pid = os.getpid() if pid is None else pid
    out: dict[str, Any] = {
        "service.name": "gotel",
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}:{pid}",
        "process.pid": pid,
    }
    for k, v in (configured or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[str(k)] = v if isinstance(v, bool | int | float) else str(v)
    return out
