"""OTTL conditions (the collector's OpenTelemetry Transformation Language, boolean part) over OTLP protobuf.

`compile_condition` parses and compiles one condition for a signal, in a given context or one inferred
from its paths' context prefixes (``span.name``, ``resource.attributes["k"]``) as the collector's
context inference does; `ConditionSet` evaluates a list of them ORed, under an error mode. A condition
gotel cannot parse or evaluate is an OttlSyntaxError with its column, at config time, never a silent pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from gotel.ottl.compiler import (
    CONTEXT_OF_CONVERTER,
    OttlRuntimeError,
    calls,
    compile_tree,
    path_contexts,
)
from gotel.ottl.contexts import HIERARCHY, Item
from gotel.ottl.grammar import OttlSyntaxError, parse
from gotel.ottl.literals import OWN, Needs, may_fail, required, required_any

ErrorMode = Literal["ignore", "silent", "propagate"]

__all__ = [
    "HIERARCHY",
    "Condition",
    "ConditionSet",
    "ErrorMode",
    "Item",
    "Needs",
    "OttlEvalError",
    "OttlRuntimeError",
    "OttlSyntaxError",
    "compile_condition",
]


class OttlEvalError(Exception):
    """A condition failed under error_mode propagate: the batch it was evaluated for is refused."""


@dataclass(frozen=True)
class Condition:
    text: str
    context: str
    evaluate: Callable[[Item], bool]
    # byte strings one of which a request must contain for this condition to match any of its items
    # (None: no such proof); see gotel.ottl.literals
    needs: Needs = None
    # the same, within the bytes of the item (span, metric, log record) being decided
    item_needs: Needs = None
    may_fail: bool = True


def infer_context(text: str, signal: str) -> str:
    """The lowest context a condition's path prefixes name (the collector's context inference)."""
    tree = parse(text)
    order = HIERARCHY[signal]
    found: str | None = None
    for ctx, p in path_contexts(tree, signal):
        if ctx is None:
            prefixes = ", ".join(f"{c}." for c in order)
            raise OttlSyntaxError(f'path "{p.text()}" needs a context prefix ({prefixes}) to infer the context '
                                  "from; or give the group a context:", p.col)
        if found is None or order.index(ctx) > order.index(found):
            found = ctx
    for call in calls(tree):
        need = CONTEXT_OF_CONVERTER.get(call.name)
        if need is None or need not in order:
            continue
        if found is not None and found != need:
            raise OttlSyntaxError(f"{call.name} is available only in the {need} context, but the paths of this "
                                  f"condition put it in the {found} context: split it, or give a context:", call.col)
        found = need
    if found is None:
        raise OttlSyntaxError("cannot infer the context: no path names one (write e.g. "
                              f"{order[-1]}.attributes[\"k\"]), or give the group a context:", 1)
    return found


def compile_condition(text: str, signal: str, context: str | None = None) -> Condition:
    """Parses and compiles; raises OttlSyntaxError (with the column) for anything gotel cannot evaluate."""
    if context is None:
        context = infer_context(text, signal)
    if context not in HIERARCHY[signal]:
        raise OttlSyntaxError(f'unknown {signal} context "{context}" (valid: {", ".join(HIERARCHY[signal])})', 1)
    tree = parse(text)
    own = OWN.get(context)
    return Condition(text, context, compile_tree(tree, signal, context), required(tree, context),
                     required(tree, context, own) if own is not None else None, may_fail(tree))


class ConditionSet:
    """Conditions ORed, as the collector's ConditionSequence: an error is logged (ignore), passed over
    (silent) or raised as OttlEvalError (propagate); a failed condition never matches."""

    def __init__(self, conditions: Sequence[Condition], error_mode: ErrorMode, logger: logging.Logger,
                 where: str) -> None:
        self.conditions = list(conditions)
        self.error_mode = error_mode
        self.logger = logger
        self.where = where
        self.errors = 0
        self._last_log = 0.0
        self._evals = [c.evaluate for c in self.conditions]
        # byte proofs skip evaluations: never for a condition whose error would refuse the batch
        provable = [c for c in self.conditions if not (error_mode == "propagate" and c.may_fail)]
        whole = len(provable) == len(self.conditions)
        self.needs: Needs = required_any([c.needs for c in provable]) if whole else None
        self.item_needs: Needs = required_any([c.item_needs for c in provable]) if whole else None
        # per condition, what an item's own bytes must hold for it to match (None: no proof)
        self.item_proofs: list[Needs] = [None if error_mode == "propagate" and c.may_fail else c.item_needs
                                         for c in self.conditions]
        if len(self._evals) == 1:
            self.matches = self._match_one  # type: ignore[method-assign]  # one condition: its fast path

    def cannot_match(self, raw: bytes) -> bool:
        """True when raw (a whole request) holds none of the bytes every match needs."""
        return self.needs is not None and not any(b in raw for b in self.needs)

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def _match_one(self, it: Item) -> bool:
        try:
            return self._evals[0](it)
        except (OttlRuntimeError, TypeError, ValueError, IndexError) as e:
            self._failed(self.conditions[0], e)
            return False

    def matches_some(self, it: Item, which: Sequence[int]) -> bool:
        """matches() over the conditions at these indices only (the others cannot match this item)."""
        evals = self._evals
        for i in which:
            try:
                if evals[i](it):
                    return True
            except (OttlRuntimeError, TypeError, ValueError, IndexError) as e:
                self._failed(self.conditions[i], e)
        return False

    def matches(self, it: Item) -> bool:
        for i, ev in enumerate(self._evals):
            try:
                if ev(it):
                    return True
            except (OttlRuntimeError, TypeError, ValueError, IndexError) as e:
                self._failed(self.conditions[i], e)
        return False

    def _failed(self, c: Condition, e: Exception) -> None:
        self.errors += 1
        msg = f'{self.where}: condition "{c.text}" failed: {e}'
        if self.error_mode == "propagate":
            raise OttlEvalError(msg) from e
        if self.error_mode == "ignore":
            now = time.monotonic()
            if now - self._last_log >= 1.0:  # one line a second, not one per item
                self._last_log = now
                self.logger.warning("%s (error_mode ignore: treated as no match; %d so far)", msg, self.errors)
