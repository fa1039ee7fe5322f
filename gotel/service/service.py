"""The pipeline process: graph, internal entry point, receiver processes, self-telemetry, signals.

Start: exporters → processors → in-process receivers (the internal otlp entry point among them) →
receiver processes. SIGTERM/SIGINT: receiver processes stop first (flushing into the still-running
pipeline), then in-process receivers, then processors flush, then exporters drain their queues —
all within service.shutdown_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from typing import Any

from gotel.component.contract import Component, ComponentID, Kind, Receiver
from gotel.component.lifecycle import make_context, shutdown_with_deadline
from gotel.config.model import Config
from gotel.exporterhelper.queue import StorageError
from gotel.host.memory import trim_until
from gotel.pdata.batch import Metrics, Signal
from gotel.service.graph import Graph
from gotel.service.internal import INTERNAL_RECEIVER, internal_receiver
from gotel.service.router import Router
from gotel.service.rundir import runtime_dir
from gotel.service.server import StartupError, TelemetryServer
from gotel.service.supervisor import CounterCarry, Supervisor
from gotel.telemetry.counters import Telemetry, default_telemetry
from gotel.telemetry.sdk.level import LevelView
from gotel.telemetry.sdk.logs import customised, relog
from gotel.telemetry.sdk.resource import own_resource
from gotel.telemetry.selfmetrics import MergedRegistry, families_to_otlp

log = logging.getLogger("gotel.service")


class Service:
    def __init__(self, cfg: Config, tel: Telemetry | None = None, log_level: str = "info") -> None:
        self.cfg = cfg
        self.tel = tel or default_telemetry()
        self.log_level = log_level
        self.merged = MergedRegistry(self.tel.registry)
        self.view = LevelView(self.merged, cfg.service.telemetry.metrics.level, self.tel.core)
        self.own: Any = None  # OwnMetrics (gotel.telemetry.sdk.metrics, imported only with readers)  # service::telemetry::metrics::readers
        self.pull_servers: list[TelemetryServer] = []
        self.graph = Graph(cfg, self.tel)
        self.ready = False
        self.up_since: float | None = None  # UNIX time the service became ready (health_check's upSince)
        self.rundir: str | None = None
        self.internal: Receiver | None = None
        self.supervisor: Supervisor | None = None
        self.server: TelemetryServer | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.socket_path: str | None = None
        self.extensions: list[tuple[ComponentID, Component]] = []
        self.routers: list[Router] = []
        self.carry = CounterCarry()  # receiver processes' counters, continued across their restarts

    # --- readiness --------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        receivers = self.supervisor.status() if self.supervisor else {}
        ready = self.ready and all(r["up"] for r in receivers.values())
        return ready, {"ready": ready, "started": self.ready, "up_since": self.up_since, "receivers": receivers}

    # --- life cycle -------------------------------------------------------------------------------

    def _out_of_process(self) -> dict[ComponentID, list[Signal]]:
        return {rid: list(node.sinks) for rid, node in self.graph.receivers.items() if not node.in_process}

    async def start(self) -> None:
        from gotel.config.ports import busy_ports

        busy = await asyncio.to_thread(busy_ports, self.cfg)  # before anything binds: one line per port
        if busy:
            raise StartupError("; ".join(busy))
        tm = self.cfg.service.telemetry.metrics
        if tm.serves_address():
            self.server = TelemetryServer(tm.address, self.view, self.readiness, metrics_enabled=tm.level != "none")
            await self.server.start()
        if tm.readers and tm.level != "none":
            await self._start_readers()
        # Extensions first (health checks, auth providers): components may rely on them.
        for eid in self.cfg.service.extensions:
            entry = self.cfg.extensions[eid]
            ectx = make_context(self.tel, eid, Kind.EXTENSION)
            ectx.extras["health"] = self.readiness  # health_check serves the same state as /readyz
            ext = entry.factory.create(entry.config, ectx)
            try:
                await ext.start()
            except StorageError as e:
                raise StartupError(f"extension {eid}: {e}") from e
            self.extensions.append((eid, ext))
            self.graph.extensions[eid] = ext
        try:
            await self.graph.start_exporters_and_processors()
        except StorageError as e:
            raise StartupError(str(e)) from e
        children = self._out_of_process()
        if children:
            self.rundir = runtime_dir()
            self.socket_path = os.path.join(self.rundir, "otlp.sock")
            await self._start_internal(children)
        await self.graph.start_receivers()
        if children:
            assert self.socket_path is not None
            tel_cfg = self.cfg.service.telemetry
            self.supervisor = Supervisor(
                f"unix://{self.socket_path}", self.cfg.service.supervisor, self.tel, self.log_level,
                telemetry_interval=min(2.0, self.cfg.service.telemetry.metrics.interval),
                carry=self.carry, received=self._received,
                profiling=tel_cfg.profiling.model_dump() if tel_cfg.profiling is not None else None,
            )
            if customised(tel_cfg.logs):
                self.supervisor.relog = relog
            for rid, signals in children.items():
                self.supervisor.add(self.cfg.receivers[rid], signals)
            await self.supervisor.start()
        if self.cfg.service.telemetry.metrics.pipelines and self.cfg.service.telemetry.metrics.level != "none":
            self._feeder = asyncio.create_task(self._feed_self_metrics(), name="self-metrics")
        self.ready = True
        self.up_since = time.time()
        log.info("gotel started: %s", self.cfg.summary())

    async def _start_readers(self) -> None:
        from gotel.telemetry.sdk.metrics import OwnMetrics

        tm = self.cfg.service.telemetry.metrics
        self.own = OwnMetrics(tm.readers, self.view.collect, own_resource(self.cfg.service.telemetry.resource))
        pulls = [i for i, r in enumerate(tm.readers) if r.pull is not None]
        for i, ep in zip(pulls, self.own.pull, strict=True):
            server = TelemetryServer(ep.address, ep.registry, self.readiness,
                                     key=f"service::telemetry::metrics::readers[{i}]::pull::exporter::prometheus")
            self.pull_servers.append(server)
            await server.start()

    async def _start_internal(self, children: dict[ComponentID, list[Signal]]) -> None:
        assert self.socket_path is not None
        sinks: dict[Signal, Any] = {}
        for signal_ in Signal:
            routes = {str(rid): self.graph.receivers[rid].sinks[signal_]
                      for rid, sigs in children.items() if signal_ in sigs}
            on_tel = self._receiver_telemetry if signal_ == Signal.METRICS else None
            sinks[signal_] = Router(signal_, routes, on_tel)
            self.routers.append(sinks[signal_])
        ctx = make_context(self.tel, INTERNAL_RECEIVER, Kind.RECEIVER)
        self.internal = internal_receiver(self.socket_path, sinks, ctx)
        await self.internal.start()

    def _receiver_telemetry(self, rid: str, batch: Metrics) -> None:
        self.merged.update(rid, self.carry.apply(rid, batch))

    def _received(self, rid: str) -> dict[str, int]:
        return {str(r.signal): r.received[rid] for r in self.routers}

    async def _feed_self_metrics(self) -> None:
        targets = [self.graph.pipelines[p].entry for p in self.cfg.service.telemetry.metrics.pipelines]
        resource = own_resource(self.cfg.service.telemetry.resource)
        while True:
            await asyncio.sleep(self.cfg.service.telemetry.metrics.interval)
            batch = families_to_otlp(self.view.collect(), resource)
            for t in targets:
                assert t is not None
                try:
                    await t.consume(batch.copy() if len(targets) > 1 else batch)
                except Exception as e:
                    log.warning("self-metrics not accepted by the pipeline: %s", e)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                log.info("received %s: shutting down (again to force)", signal.Signals(signum).name)
                self._stop.set()
            else:
                log.warning("second signal: exiting without draining")
                os._exit(1)

        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, on_signal, s)
        try:
            try:
                await self.start()
            except StartupError as e:
                log.error("gotel failed to start: %s", e)
                await self.shutdown()
                return 1
            except Exception:
                log.exception("gotel failed to start")
                await self.shutdown()
                return 1
            await trim_until(self._stop)  # start-up's and batches' freed C heap goes back to the kernel
            await self.shutdown()
            return 0
        finally:
            for s in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(s)

    async def shutdown(self) -> None:
        started = time.monotonic()
        deadline = started + self.cfg.service.shutdown_timeout
        self.ready = False
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if self.supervisor is not None:
            await self.supervisor.stop(min(self.cfg.service.supervisor.stop_timeout, max(0.5, deadline - time.monotonic())))
        if self.internal is not None:
            await shutdown_with_deadline(self.internal, f"receiver {INTERNAL_RECEIVER}", deadline)
        await self.graph.shutdown(deadline)
        for eid, ext in reversed(self.extensions):
            await shutdown_with_deadline(ext, f"extension {eid}", deadline)
        self.extensions.clear()
        if self.own is not None:  # the periodic readers' last export carries the final counts
            await asyncio.to_thread(self.own.shutdown, max(0.5, deadline - time.monotonic()))
            self.own = None
        for server in self.pull_servers:
            await server.stop()
        self.pull_servers.clear()
        if self.server is not None:
            await self.server.stop()
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)
        log.info("gotel stopped in %.2fs", time.monotonic() - started)
