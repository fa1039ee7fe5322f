"""A receiver in its process, pushing OTLP through exporters to an endpoint.

Used by `gotel receiver` both standalone (pointed at any collector) and as a receiver process of
the agent (``--internal``: config from stdin, the pipeline's unix socket as endpoint, and the
receiver's own metrics pushed every few seconds with the ``gotel-telemetry`` marker). A receiver
process of the agent may run several light receivers (``shares_process``, run_receivers): each has
its own sinks (its ``gotel-receiver`` id), telemetry registry and log prefix, exactly as if alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from gotel.component.contract import (
    EXIT_CANNOT_RUN,
    RECEIVER_ID_HEADER,
    ComponentID,
    Exporter,
    ExporterFactory,
    Kind,
    ReceiverFactory,
)
from gotel.component.lifecycle import make_context, shutdown_with_deadline
from gotel.component.registry import GROUPS, registry
from gotel.ebpf.checks import BpfUnavailableError, require_bpf
from gotel.exporterhelper.queue import QueuedExporter
from gotel.host.memory import receiver_gc, trim_until
from gotel.pdata.batch import Signal
from gotel.telemetry.counters import Telemetry, default_telemetry
from gotel.telemetry.logs import LOG_PREFIX
from gotel.telemetry.selfmetrics import TELEMETRY_HEADER, MergedRegistry, families_to_otlp

log = logging.getLogger("gotel.receiver")


def load_one(kind: Kind, typ: str) -> tuple[Any, str]:
    """One factory by its canonical type, importing nothing else: a receiver process must start in
    well under a second, and the full registry imports every plugin (BCC, Kubernetes client...)."""
    group = GROUPS[kind]
    for ep in entry_points(group=group, name=typ):
        try:
            return ep.load(), ""
        except Exception as e:
            return None, f"cannot import {ep.value}: {e}"
    reg = registry()  # an alias, or a type only the full registry knows
    f = reg.get(kind, typ)
    return f, "" if f else "; ".join(e for e in reg.errors if f" {typ}:" in e) or "not installed"


def sink_config(endpoint: str, protocol: str, headers: dict[str, str], compression: str | None,
                insecure: bool | None) -> tuple[str, dict[str, Any]]:
    """(exporter type, its config) for an endpoint URL.

    unix:///path and http://host:port are gRPC in plain text; https://host:port is gRPC over TLS;
    with protocol "http", the URL is the OTLP/HTTP base URL.
    """
    # Back-pressure instead of drops: a full queue makes the receiver wait, so losses happen (and are
    # counted) at the source, e.g. a ring buffer, rather than after the work of building the data.
    cfg: dict[str, Any] = {"endpoint": endpoint, "headers": dict(headers),
                           "sending_queue": {"queue_size": 16 << 20, "block_on_overflow": True}}
    plain = endpoint.startswith(("unix:", "http://"))
    if insecure is not None:
        plain = insecure
    if protocol == "grpc":
        cfg["tls"] = {"insecure": plain}
        if compression is not None:
            cfg["compression"] = compression
        elif endpoint.startswith("unix:"):
            cfg["compression"] = "none"  # a local socket gains nothing from gzip
        return "otlp", cfg
    if compression is not None:
        cfg["compression"] = compression
    return "otlp_http", cfg


async def run_receiver(
    cid: ComponentID,
    factory: ReceiverFactory,
    config: Any,
    signals: list[Signal],
    exporter_type: str,
    exporter_cfg: dict[str, Any],
    telemetry_interval: float = 0.0,
    shutdown_timeout: float = 5.0,
    stop: asyncio.Event | None = None,
    tel: Telemetry | None = None,
    started: Callable[[], None] | None = None,
) -> int:
    """Runs the receiver until SIGTERM/SIGINT, or until `stop` is set when one is given (then the
    caller handles signals and trims the heap); the exit code."""
    ef, problems = load_one(Kind.EXPORTER, exporter_type)
    if not isinstance(ef, ExporterFactory):
        log.error("the %s exporter is not installed; cannot send OTLP (%s)", exporter_type, problems)
        return 1
    receiver_gc()  # before start-up: the receiver's own objects are the collector's work from the first
    tel = tel or default_telemetry()
    headers = {**exporter_cfg.get("headers", {}), RECEIVER_ID_HEADER: str(cid)}
    ecfg = ef.config.model_validate({**exporter_cfg, "headers": headers})
    sink_id = ComponentID(exporter_type, "sink")
    sinks: dict[Signal, Exporter] = {
        s: ef.create(s, ecfg, make_context(tel, sink_id, Kind.EXPORTER, s)) for s in signals
    }
    tel_exporter: Exporter | None = None
    if telemetry_interval > 0:
        tcfg = ef.config.model_validate({**exporter_cfg, "headers": {**headers, TELEMETRY_HEADER: "1"}})
        tel_exporter = ef.create(Signal.METRICS, tcfg,
                                 make_context(tel, ComponentID(exporter_type, "telemetry"), Kind.EXPORTER, Signal.METRICS))
    for e in (*sinks.values(), tel_exporter):
        if isinstance(e, QueuedExporter):
            # the local hop's exit account: a line only when something was dropped (the pipeline
            # counts what it received; one clean line per receiver and signal would say nothing)
            e.clean_summary_level = logging.DEBUG
    for e in sinks.values():
        await e.start()
    if tel_exporter is not None:
        await tel_exporter.start()
    alone = stop is None
    stop = stop or asyncio.Event()
    tel_stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if alone:
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)

    async def push_telemetry() -> None:
        assert tel_exporter is not None
        merged = MergedRegistry(tel.registry)
        resource = {"service.name": "gotel", "gotel.receiver": str(cid), "process.pid": os.getpid()}
        while True:
            with contextlib.suppress(Exception):
                await tel_exporter.consume(families_to_otlp(merged.collect(), resource))
            if tel_stop.is_set():
                return  # that was the final snapshot, sent after the receiver stopped
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tel_stop.wait(), telemetry_interval)

    tel_task = asyncio.create_task(push_telemetry()) if tel_exporter is not None else None
    code = 0
    receiver = None
    try:
        if factory.needs_bpf:
            await asyncio.to_thread(require_bpf)  # every failed check with its fix, before any receiver code runs
        receiver = factory.create(config, sinks, make_context(tel, cid, Kind.RECEIVER))
        await receiver.start()
        log.info("receiver %s running: %s to %s", cid, ", ".join(signals), exporter_cfg.get("endpoint"))
        if started is not None:
            started()
        if alone:
            await trim_until(stop)  # the C heap's free pages go back to the kernel while the receiver runs
        else:
            await stop.wait()
    except BpfUnavailableError as e:
        # Not a crash: the host lacks what the receiver needs. The message lists each fix.
        log.error("receiver %s cannot run: %s", cid, e)
        code = EXIT_CANNOT_RUN
    except Exception:
        log.exception("receiver %s failed", cid)
        code = 1
    finally:
        deadline = loop.time() + shutdown_timeout
        if receiver is not None:
            await shutdown_with_deadline(receiver, f"receiver {cid}", _mono(deadline, loop))
        await asyncio.gather(*(shutdown_with_deadline(e, f"exporter for {s}", _mono(deadline, loop))
                               for s, e in sinks.items()))
        if tel_task is not None:
            # the final snapshot after the sinks drained: the pipeline gets this process's complete
            # account (accepted, sent, dropped), which it carries over to the next process
            tel_stop.set()
            with contextlib.suppress(Exception):
                await tel_task
        if tel_exporter is not None:
            await shutdown_with_deadline(tel_exporter, "telemetry exporter", _mono(deadline, loop))
    return code


async def run_receivers(
    members: list[tuple[ComponentID, ReceiverFactory, Any, list[Signal]]],
    exporter_type: str,
    exporter_cfg: dict[str, Any],
    telemetry_interval: float = 0.0,
    shutdown_timeout: float = 5.0,
) -> int:
    """Light receivers sharing one process, each as run_receiver runs it alone, with a Telemetry of
    its own (the pipeline accounts per receiver id) and its id as log prefix. SIGTERM stops them all;
    when one fails, the others stop too and the process exits with its code: the supervisor restarts
    them together."""
    if len(members) == 1:
        cid, factory, cfg, signals = members[0]
        return await run_receiver(cid, factory, cfg, signals, exporter_type, exporter_cfg,
                                  telemetry_interval, shutdown_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)

    waiting = len(members)
    trim: asyncio.Task[None] | None = None

    def started() -> None:
        nonlocal waiting, trim
        waiting -= 1
        if waiting == 0:  # start-up is over: one periodic trim for the process
            trim = asyncio.create_task(trim_until(stop))

    async def one(cid: ComponentID, factory: ReceiverFactory, cfg: Any, signals: list[Signal]) -> int:
        LOG_PREFIX.set(f"[receiver {cid}]")  # this task's context: its records, not the others'
        code = await run_receiver(cid, factory, cfg, signals, exporter_type, exporter_cfg, telemetry_interval,
                                  shutdown_timeout, stop=stop, tel=Telemetry(), started=started)
        if not stop.is_set():
            log.error("receiver %s ended: stopping the receivers that share its process", cid)
            stop.set()
        return code

    codes = await asyncio.gather(*(one(*m) for m in members))
    if trim is not None:
        await trim
    return next((c for c in codes if c), 0)


def _mono(loop_deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    """shutdown_with_deadline takes time.monotonic() deadlines; converts from the loop's clock."""
    return time.monotonic() + max(0.1, loop_deadline - loop.time())
