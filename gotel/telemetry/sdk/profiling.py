"""gotel profiling itself into Pyroscope (`service::telemetry::profiling`), with pyroscope-io.

Every gotel process starts its own profiler: the pipeline process (label `gotel_process="pipeline"`)
and each receiver process (`gotel_process="receiver"`, `gotel_receiver="<id>"`), so gotel's own cost
shows in the same flame graphs as the Go services it watches, split by process. Receiver processes get
the settings in their stdin spec, never in argv (the password would be readable there).
"""

from __future__ import annotations

import logging
from typing import Any

from gotel.config.telemetry import ProfilingConfig
from gotel.telemetry.sdk.level import safe_endpoint

log = logging.getLogger("gotel.telemetry.counters")

_started = False


def process_tags(receiver: str | None = None) -> dict[str, str]:
    """The labels that tell gotel's processes apart in Pyroscope."""
    if receiver is None:
        return {"gotel_process": "pipeline"}
    return {"gotel_process": "receiver", "gotel_receiver": receiver}


def start_profiling(cfg: ProfilingConfig | dict[str, Any], receiver: str | None = None) -> bool:
    """Starts this process's profiler (once); False, with one warning, if pyroscope-io cannot."""
    global _started
    if _started:
        return True
    c = cfg if isinstance(cfg, ProfilingConfig) else ProfilingConfig.model_validate(cfg)
    try:
        import pyroscope

        pyroscope.configure(
            application_name=c.application_name,
            server_address=c.server_address,
            sample_rate=c.sample_rate,
            tags={**c.tags, **process_tags(receiver)},
            basic_auth_username=c.basic_auth_username,
            basic_auth_password=c.basic_auth_password,
            tenant_id=c.tenant_id,
            oncpu=c.oncpu,
            gil_only=c.gil_only,
            upload_interval=max(1, round(c.upload_interval)),
            enable_logging=False,
        )
    except Exception as e:
        log.warning("self-profiling not started: %s", e)
        return False
    _started = True
    if receiver is None:
        log.info("self-profiling into %s as %s", safe_endpoint(c.server_address), c.application_name)
    return True


def stop_profiling() -> None:
    """Sends what was sampled last and stops the profiler."""
    global _started
    if not _started:
        return
    _started = False
    try:
        import pyroscope

        pyroscope.shutdown()
    except Exception as e:
        log.debug("self-profiling did not stop cleanly: %s", e)
