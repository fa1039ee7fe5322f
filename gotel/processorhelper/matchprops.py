"""The collector's legacy `include`/`exclude` match properties (internal/filter/filterconfig), which the
`attributes` processor uses to choose the spans, log records and metrics its actions apply to.

A property list matches when every property given matches (services, span names, kinds, bodies,
severity texts, metric names: any item of the list; attributes and resources: all of them; libraries:
each). `match_type: regexp` searches (an unanchored regex, as Go's MatchString); `strict` compares
equal. An item is skipped when `include` does not match it or `exclude` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from gotel.component.contract import ComponentConfig
from gotel.pdata.batch import Signal, any_value
from gotel.processorhelper.attraction import as_string

SPAN_KINDS = ("SPAN_KIND_CLIENT", "SPAN_KIND_CONSUMER", "SPAN_KIND_INTERNAL", "SPAN_KIND_PRODUCER",
              "SPAN_KIND_SERVER")
_KIND_NAMES = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
               "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")
NIL_SERVICE = "<nil-service-name>"


class RegexpOptions(ComponentConfig):
    cacheenabled: bool = Field(False, description="accepted for compatibility; gotel's regex matching needs no cache")
    cachemaxnumentries: int = Field(0, ge=0)


class AttributeMatch(ComponentConfig):
    key: str
    value: Any = Field(None, description="absent: the key only has to be present")


class LibraryMatch(ComponentConfig):
    name: str
    version: str | None = Field(None, description="absent: any version; \"\": only an empty version")


class SeverityNumberMatch(ComponentConfig):
    # a number, as the collector takes it (it refuses names such as "WARN")
    min: int = Field(0, ge=0, le=24, description="lowest severity number that matches (9 = INFO, 13 = WARN, 17 = ERROR)")
    match_undefined: bool = Field(False, description="whether records without a severity number match")


class MatchProperties(ComponentConfig):
    match_type: Literal["strict", "regexp"]
    regexp: RegexpOptions | None = None
    services: list[str] = Field(default_factory=list)
    span_names: list[str] = Field(default_factory=list)
    span_kinds: list[str] = Field(default_factory=list)
    log_bodies: list[str] = Field(default_factory=list)
    log_severity_texts: list[str] = Field(default_factory=list)
    log_severity_number: SeverityNumberMatch | None = None
    metric_names: list[str] = Field(default_factory=list)
    attributes: list[AttributeMatch] = Field(default_factory=list)
    resources: list[AttributeMatch] = Field(default_factory=list)
    libraries: list[LibraryMatch] = Field(default_factory=list)

    @model_validator(mode="after")
    def _patterns(self) -> MatchProperties:
        if self.match_type == "regexp":
            for field in ("services", "span_names", "span_kinds", "log_bodies", "log_severity_texts", "metric_names"):
                for p in getattr(self, field):
                    _regex(p, field)
            for field in ("attributes", "resources"):
                for a in getattr(self, field):
                    if a.value is not None:
                        if not isinstance(a.value, str):
                            raise ValueError(f'{field}: match_type regexp needs a string value for "{a.key}", '
                                             f"got {type(a.value).__name__}")
                        _regex(a.value, field)
            for lib in self.libraries:
                _regex(lib.name, "libraries")
                if lib.version is not None:
                    _regex(lib.version, "libraries")
        for field in ("attributes", "resources"):
            if any(not a.key for a in getattr(self, field)):
                raise ValueError(f"{field}: an empty key cannot match")
        return self

    def problem_for(self, signal: Signal) -> str | None:
        """The collector's per-signal rules (ValidateForSpans / ValidateForLogs), as one line."""
        if signal == Signal.TRACES:
            for f in ("log_bodies", "log_severity_texts"):
                if getattr(self, f):
                    return f"{f} cannot be used for spans"
            if self.log_severity_number is not None:
                return "log_severity_number cannot be used for spans"
            if not (self.services or self.span_names or self.attributes or self.libraries or self.resources
                    or self.span_kinds):
                return ('give at least one of "services", "span_names", "span_kinds", "attributes", '
                        '"resources" or "libraries" for spans')
            if self.match_type == "strict":
                bad = [k for k in self.span_kinds if k not in SPAN_KINDS]
                if bad:
                    return f'span_kinds "{bad[0]}" is not a span kind (valid: {", ".join(SPAN_KINDS)})'
        elif signal == Signal.LOGS:
            if self.span_names or self.services or self.span_kinds:
                return "services, span_names and span_kinds cannot be used for log records"
            if not (self.attributes or self.libraries or self.resources or self.log_bodies
                    or self.log_severity_texts or self.log_severity_number is not None):
                return ('give at least one of "attributes", "resources", "libraries", "log_bodies", '
                        '"log_severity_texts" or "log_severity_number" for log records')
        elif signal == Signal.METRICS:
            bad = [f for f in ("span_names", "span_kinds", "log_bodies", "log_severity_texts", "log_severity_number",
                               "services", "attributes", "libraries") if getattr(self, f)]
            if bad:
                return f"{', '.join(bad)} cannot be used for metrics (only metric_names, and resources)"
        return None


def _regex(p: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(p)
    except re.error as e:
        raise ValueError(f"{where}: invalid regex `{p}`: {e}") from None


StrMatch = Callable[[str], bool]


def _string_set(items: list[str], regexp: bool) -> StrMatch:
    if regexp:
        rxs = [re.compile(p) for p in dict.fromkeys(items)]
        return lambda s: any(r.search(s) for r in rxs)
    exact = frozenset(items)
    return exact.__contains__


_STRINGABLE = frozenset(("string_value", "bool_value", "int_value", "double_value"))


def _regex_value(rx: re.Pattern[str]) -> Callable[[Any], bool]:
    """A value matches when it is a string, bool, int or double whose text the regex finds."""

    def check(av: Any) -> bool:
        return av.WhichOneof("value") in _STRINGABLE and rx.search(as_string(av)) is not None

    return check


class _Attrs:
    """All of the listed attributes present (and equal to / matching their value)."""

    def __init__(self, items: list[AttributeMatch], regexp: bool) -> None:
        self.checks: list[tuple[str, Callable[[Any], bool] | None]] = []
        for a in items:
            if a.value is None:
                self.checks.append((a.key, None))
            elif regexp:
                self.checks.append((a.key, _regex_value(re.compile(a.value))))
            else:
                self.checks.append((a.key, any_value(a.value).__eq__))

    def match(self, kvs: Any) -> bool:
        if not self.checks:
            return True
        if not kvs:
            return False
        by_key: dict[str, Any] = {}
        for x in kvs:
            by_key.setdefault(x.key, x.value)
        for key, check in self.checks:
            av = by_key.get(key)
            if av is None or (check is not None and not check(av)):
                return False
        return True


class Matcher:
    """One compiled `include` or `exclude` for one signal."""

    def __init__(self, mp: MatchProperties, signal: Signal) -> None:
        rx = mp.match_type == "regexp"
        self.names = _string_set(mp.metric_names, rx) if mp.metric_names else None
        self.services = _string_set(mp.services, rx) if mp.services else None
        self.span_names = _string_set(mp.span_names, rx) if mp.span_names else None
        self.kinds = _string_set(mp.span_kinds, rx) if mp.span_kinds else None
        self.bodies = _string_set(mp.log_bodies, rx) if mp.log_bodies else None
        self.sev_texts = _string_set(mp.log_severity_texts, rx) if mp.log_severity_texts else None
        sn = mp.log_severity_number
        self.sev_num = (sn.min, sn.match_undefined) if sn is not None else None
        self.libraries = [(_string_set([lib.name], rx), _string_set([lib.version], rx) if lib.version is not None
                           else None) for lib in mp.libraries]
        self.attrs = _Attrs(mp.attributes, rx)
        self.resources = _Attrs(mp.resources, rx) if mp.resources else None

    def scope_match(self, resource: Any, scope: Any) -> bool:
        """The resource, service and library part: the same for every item of one scope."""
        if self.services is not None:
            av = None
            for x in resource.attributes:
                if x.key == "service.name":
                    av = x.value
                    break
            if not self.services(as_string(av) if av is not None else NIL_SERVICE):
                return False
        for name, version in self.libraries:
            if not name(scope.name) or (version is not None and not version(scope.version)):
                return False
        return self.resources is None or self.resources.match(resource.attributes)

    def span_match(self, span: Any) -> bool:
        if self.span_names is not None and not self.span_names(span.name):
            return False
        if self.kinds is not None and not self.kinds(_KIND_NAMES[span.kind] if span.kind < 6 else ""):
            return False
        return self.attrs.match(span.attributes)

    def log_match(self, lr: Any) -> bool:
        if self.bodies is not None and not self.bodies(as_string(lr.body)):
            return False
        if self.sev_texts is not None and not self.sev_texts(lr.severity_text):
            return False
        if self.sev_num is not None:
            lo, undefined = self.sev_num
            if lr.severity_number == 0:
                if not undefined:
                    return False
            elif lr.severity_number < lo:
                return False
        return self.attrs.match(lr.attributes)

    def metric_match(self, metric: Any) -> bool:
        return self.names is None or self.names(metric.name)


def problem(include: MatchProperties | None, exclude: MatchProperties | None, signal: Signal) -> str | None:
    for name, mp in (("include", include), ("exclude", exclude)):
        if mp is not None:
            p = mp.problem_for(signal)
            if p:
                return f"{name}: {p}"
    return None
