"""`resource` processor: the collector's attribute actions (gotel.processorhelper.attraction, the engine `attributes`
uses too) on the resource attributes of every batch, for every signal."""

from __future__ import annotations

from pydantic import Field, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.pdata.batch import Batch, Signal
from gotel.processorhelper.attraction import ActionConfig, AttrActions


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
        wire = batch.cached_bytes()
        if wire is not None and not self.engine.may_act(wire):
            return  # none of the keys the actions need is in the request: its bytes pass untouched
        apply = self.engine.apply
        for r in batch.resources():
            apply(r.resource.attributes)


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return ResourceProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="resource",
    config=Config,
    signals=frozenset(Signal),
    description="insert, update, upsert, delete, hash (SHA-256), extract, convert resource attributes.",
    create=_create,
)
