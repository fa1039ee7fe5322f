"""`forward` connector: hands a pipeline's data on, unchanged, to the pipelines that receive from it
(the collector's way to fan one pipeline out into several, or several into one)."""

from __future__ import annotations

from gotel.component.contract import (
    ALL_SIGNALS,
    ComponentConfig,
    Connector,
    ConnectorFactory,
    Consumer,
    Context,
)
from gotel.pdata.batch import Batch, Signal


class Config(ComponentConfig):
    pass


class Forward(Connector):
    def __init__(self, nxt: Consumer) -> None:
        self.next = nxt
        # The batch goes on as it is: the copy rule is the downstream pipelines' (their fan-out copies
        # for those that mutate), so this is a mutator exactly when they all are.
        self.mutates = nxt.mutates

    async def consume(self, batch: Batch) -> None:
        await self.next.consume(batch)


def _create(src: Signal, dst: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Forward:
    return Forward(nxt)


factory = ConnectorFactory(
    type="forward",
    config=Config,
    signals=ALL_SIGNALS,
    pairs=frozenset((s, s) for s in Signal),
    description="passes data unchanged from the pipelines that export to it to those that receive from it",
    create=_create,
)
