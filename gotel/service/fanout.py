"""Fan-out: one producer, several consumers. Only consumers that mutate get copies; readers share."""

from __future__ import annotations

from collections.abc import Sequence

from gotel.component import Consumer, ConsumerError, RefusedError
from gotel.pdata import Batch


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


def fanout(consumers: Sequence[Consumer]) -> Consumer:
    """A single consumer needs no fan-out."""
    return consumers[0] if len(consumers) == 1 else Fanout(consumers)
