"""Fan-out: one producer, several consumers. Only consumers that mutate get copies; readers share.

Whether a pipeline mutates is decided for the pipeline as a whole (the collector's MutatesData,
aggregated per pipeline): a read-only first processor may hand the batch on to a mutating one.
"""

from __future__ import annotations

from collections.abc import Sequence

from gotel.component.contract import Consumer, ConsumerError, RefusedError
from gotel.pdata.batch import Batch


class Fanout:
    """Readers get the original. Mutators get copies, except that when every consumer mutates the
    last one gets the original (nobody else looks at it afterwards)."""

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        if not consumers:
            raise ValueError("a fan-out needs at least one consumer")
        self.consumers = list(consumers)
        self.readers = [c for c in consumers if not c.mutates]
        self.mutators = [c for c in consumers if c.mutates]

    @property
    def mutates(self) -> bool:
        return not self.readers

    async def consume(self, batch: Batch) -> None:
        errors: list[BaseException] = []
        mutators = self.mutators
        for i, c in enumerate(mutators):
            last_owner = not self.readers and i == len(mutators) - 1
            try:
                await c.consume(batch if last_owner else batch.copy())
            except ConsumerError as e:
                errors.append(e)
        for c in self.readers:
            try:
                await c.consume(batch)
            except ConsumerError as e:
                errors.append(e)
        if errors:
            if len(errors) == 1:
                raise errors[0]
            msg = "; ".join(str(e) for e in errors)
            if all(isinstance(e, RefusedError) for e in errors):
                raise RefusedError(msg)
            raise ConsumerError(msg)


def chain_mutates(processors: Sequence[Consumer], exporters: Consumer) -> bool:
    """Does a pipeline change the batches it is given? Yes when any processor mutates, or when its
    exporter side does: a processor that only reads still passes the caller's batch on."""
    return exporters.mutates or any(p.mutates for p in processors)


class PipelineEntry:
    """A pipeline's first consumer, carrying the pipeline's capability rather than its own."""

    def __init__(self, first: Consumer, mutates: bool) -> None:
        self.first = first
        self.mutates = mutates

    async def consume(self, batch: Batch) -> None:
        await self.first.consume(batch)


def pipeline_entry(processors: Sequence[Consumer], exporters: Consumer) -> Consumer:
    """The consumer a receiver's fan-out sees for one pipeline; wrapped only when the first
    consumer's own answer differs from the pipeline's."""
    first = processors[0] if processors else exporters
    mutates = chain_mutates(processors, exporters)
    return first if first.mutates == mutates else PipelineEntry(first, mutates)


def fanout(consumers: Sequence[Consumer]) -> Consumer:
    """A single consumer needs no fan-out."""
    return consumers[0] if len(consumers) == 1 else Fanout(consumers)
