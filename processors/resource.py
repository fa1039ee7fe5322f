"""`resource` processor: the collector's attribute actions (gotel.processorhelper.attraction, the engine `attributes`
uses too) on the resource attributes of every batch, for every signal."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import Field, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.wire import framing
from gotel.processorhelper.attraction import ActionConfig, AttrActions, apply_encoded, process_on_wire


class Config(ComponentConfig):
    attributes: list[ActionConfig] = Field(default_factory=list, description="actions run in order on each resource")

    @model_validator(mode="after")
    def _actions(self) -> Config:
        if not self.attributes:
            raise ValueError('missing required key "attributes" (a list of attribute actions)')
        return self


class ResourceProcessor(Processor):
    mutates = True

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.next = nxt
        self.engine = AttrActions(cfg.attributes)

    async def consume(self, batch: Batch) -> None:
        self.process(batch)
        await self.next.consume(batch)

    def process(self, batch: Batch) -> None:
        if process_on_wire(batch, self.engine, self.on_wire):
            return
        apply = self.engine.apply
        for r in batch.resources():
            apply(r.resource.attributes)

    def on_wire(self, wire: bytes) -> bytes | None:
        """The request with the actions run on each resource, only the resources decoded and encoded
        (the items are copied as they came); `wire` itself when nothing changed; None when the request
        repeats a resource field (protobuf merges the parts: the message path does that)."""
        try:
            fr = framing(wire)
        except DecodeError:
            return None
        changed = False
        res: Any = Resource()
        for r in fr.resources:
            if len(r.resource) > 1:
                return None
            old = r.resource[0] if r.resource else b""
            new = apply_encoded(self.engine.apply, res, old)
            if new == old:
                continue
            changed = True
            if r.resource:
                r.resource[0] = new
            else:
                r.resource.append(new)
        return bytes(fr.SerializeToString()) if changed else wire


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return ResourceProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="resource",
    config=Config,
    signals=frozenset(Signal),
    description="insert, update, upsert, delete, hash (SHA-256), extract, convert resource attributes.",
    create=_create,
)
