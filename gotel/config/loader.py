"""Validates a config document against the installed components and collects every problem at once."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from importlib import resources
from typing import Any

from pydantic import BaseModel, ValidationError

from gotel.component.contract import ComponentID, Kind
from gotel.component.registry import LazyRegistry, Registry, registry
from gotel.config.collector import COMPAT_DOC, is_collector_type
from gotel.config.connectors import connector_rules
from gotel.config.model import (
    ComponentEntry,
    Config,
    ConfigError,
    PipelineSpec,
    ServiceConfig,
    SupervisorConfig,
    TelemetryConfig,
)
from gotel.config.source import Path, Source, load_source
from gotel.config.types import format_duration, is_duration_field, parse_duration
from gotel.pdata.batch import Signal

SECTIONS: dict[str, Kind] = {
    "receivers": Kind.RECEIVER,
    "processors": Kind.PROCESSOR,
    "exporters": Kind.EXPORTER,
    "connectors": Kind.CONNECTOR,
    "extensions": Kind.EXTENSION,
}
TOP_KEYS = [*SECTIONS, "service"]
SERVICE_KEYS = ["pipelines", "extensions", "telemetry", "shutdown_timeout", "supervisor"]
PIPELINE_KEYS = {"receivers": Kind.RECEIVER, "processors": Kind.PROCESSOR, "exporters": Kind.EXPORTER}
_SECRETISH = re.compile(r"(?i)pass|token|secret|auth|header|key")
DEFAULT_CONFIG_NAME = "default.yaml"


def _unknown_key(key: str, valid: list[str]) -> str:
    msg = f'unknown key "{key}"'
    close = difflib.get_close_matches(key, valid, 1, 0.6)
    if close:
        return f'{msg} (did you mean "{close[0]}"?)'
    if valid:
        return f"{msg} (valid keys: {', '.join(valid)})"
    return msg


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside an annotation, and whether a container level (dict/list) wraps it."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (dict, list, tuple, set, frozenset, Mapping):
        for a in typing.get_args(annotation):
            m, _ = _model_in(a)
            if m:
                return m, True
        return None, True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for a in typing.get_args(annotation):
            m, c = _model_in(a)
            if m:
                return m, c
    return None, False


def _model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model that holds the keys under loc (list and dict levels skipped), if there is one."""
    cur: type[BaseModel] | None = model
    i = 0
    while cur is not None and i < len(loc):
        f = cur.model_fields.get(loc[i])
        if f is None:
            return None
        cur, container = _model_in(f.annotation)
        i += 2 if container else 1
    return cur if i >= len(loc) else None


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    cur = _model_at(model, loc)
    return sorted(cur.model_fields) if cur is not None else []


def _is_duration_at(model: type[BaseModel], loc: tuple[str, ...]) -> bool:
    """Whether loc names a Duration field, so that its bounds are reported as durations."""
    cur = _model_at(model, loc[:-1])
    f = cur.model_fields.get(loc[-1]) if cur is not None else None
    return f is not None and is_duration_field(f.annotation, f.metadata)


_BOUNDS = {"greater_than": ("gt", "more than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def _written_path(src: Source, base: Path, loc: tuple[str, ...], model: type[BaseModel]) -> Path:
    """The path as written: a renamed key's value is reported at its old key when that was used."""
    path = (*base, *loc)
    if not loc or path in src.lines:
        return path
    m = _model_at(model, loc[:-1])
    for old, r in getattr(m, "renamed_keys", {}).items():
        alt = (*base, *loc[:-1], old)
        if r.new == loc[-1] and alt in src.lines:
            return alt
    return path


def report_validation_error(src: Source, base: Path, exc: ValidationError, model: type[BaseModel]) -> None:
    """Maps pydantic errors to `::` paths and YAML lines; unknown keys are named, with a suggestion."""
    for err in exc.errors():
        # pydantic adds union/validator tags such as "function-after[...]" to loc; they are not keys.
        loc = tuple(str(x) for x in err["loc"] if not (isinstance(x, str) and "[" in x))
        path = _written_path(src, base, loc, model)
        typ = err["type"]
        if typ == "extra_forbidden":
            src.error(path, _unknown_key(loc[-1], _fields_at(model, loc[:-1])))
        elif typ == "missing":
            src.error(path[:-1], f'missing required key "{loc[-1]}"')
        elif typ in _BOUNDS and loc and _is_duration_at(model, loc):
            bound, words = _BOUNDS[typ]
            inp = err.get("input")  # parsed seconds, or as written when the bound wraps an optional duration
            got = inp if isinstance(inp, str) else format_duration(inp) if isinstance(inp, int | float) else repr(inp)
            src.error(path, f"must be {words} {format_duration(err['ctx'][bound])} (got {got})")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            inp = err.get("input")
            if isinstance(inp, str | int | float) and not isinstance(inp, bool) and not _SECRETISH.search("".join(loc)):
                s = repr(inp)
                if len(s) <= 60 and s not in msg:
                    msg += f" (got {s})"
            src.error(path, msg)


def report_renamed_keys(src: Source, base: Path, body: Any, model: type[BaseModel]) -> None:
    """A warning per deprecated key written, at its line, with the line to write instead."""
    if not isinstance(body, dict):
        return
    for old, r in getattr(model, "renamed_keys", {}).items():
        if old in body:
            try:
                example = f"{r.new}: {format_duration(parse_duration(r.convert(body[old])))}" if r.unit else r.new
            except ValueError:
                example = r.new
            src.error((*base, old), f'"{old}" is deprecated: write {example}', warning=True)
    for key, value in body.items():
        f = model.model_fields.get(str(key))
        sub, container = _model_in(f.annotation) if f is not None else (None, False)
        if sub is None:
            continue
        if not container:
            report_renamed_keys(src, (*base, str(key)), value, sub)
        elif isinstance(value, dict | list):
            for k, v in value.items() if isinstance(value, dict) else enumerate(value):
                report_renamed_keys(src, (*base, str(key), str(k)), v, sub)


class _Validator:
    def __init__(self, src: Source, reg: Registry) -> None:
        self.src = src
        self.reg = reg
        self.cfg = Config(file=src.file)

    def mapping(self, value: Any, path: Path, what: str) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.src.error(path, f"{what} must be a mapping, got {type(value).__name__}")
            return None
        return value

    def run(self) -> Config:
        data = self.src.data
        top = self.mapping(data, (), "the config")
        if top is None:
            return self.cfg
        for key in top:
            if key not in TOP_KEYS:
                self.src.error((key,), _unknown_key(key, TOP_KEYS))
        for section, kind in SECTIONS.items():
            self.components(kind, section, top.get(section))
        self.service(top.get("service"))
        self.ports()
        return self.cfg

    def ports(self) -> None:
        """Two listeners on one host:port: an error at the later key, naming the earlier one."""
        from gotel.config.ports import clash_message, clashes, listeners

        for first, later in clashes(listeners(self.cfg)):
            self.src.error(later.path, clash_message(first, later))

    def _load_problem(self, kind: Kind, typ: str) -> str | None:
        group = f"gotel.{kind.value}s "
        for e in self.reg.errors:
            if e.startswith(group + typ + ":") or e.startswith(group + self.reg.canonical(kind, typ) + ":"):
                return e.split(": ", 1)[1]
        return None

    def components(self, kind: Kind, section: str, value: Any) -> None:
        entries = self.mapping(value, (section,), section)
        if not entries:
            return
        out = self.cfg.section(kind)
        for key, raw in entries.items():
            path = (section, key)
            try:
                cid = ComponentID.parse(key)
            except ValueError as e:
                self.src.error(path, str(e))
                continue
            factory = self.reg.get(kind, cid.type)
            if factory is None:
                problem = self._load_problem(kind, cid.type)
                if problem:
                    self.src.error(path, f'{kind.value} type "{cid.type}" is installed but cannot be loaded: {problem}')
                    continue
                if is_collector_type(kind, cid.type):  # the collector's, not a typo: one error, no guess
                    self.src.error(path, f'gotel has no {kind.value} "{cid.type}" yet (see {COMPAT_DOC})')
                    continue
                valid = self.reg.types(kind)
                aliases = sorted(self.reg.aliases[kind]) if kind in self.reg.aliases else []
                listing = ", ".join(valid) if valid else "none are installed"
                msg = f'unknown {kind.value} type "{cid.type}" (valid: {listing})'
                close = difflib.get_close_matches(cid.type, valid + aliases, 1, 0.6)
                if close:
                    msg = f'unknown {kind.value} type "{cid.type}", did you mean "{close[0]}"? (valid: {listing})'
                self.src.error(path, msg)
                continue
            body = self.mapping(raw, path, f"the config of {kind.value} {key}")
            if body is None:
                continue
            report_renamed_keys(self.src, path, body, factory.config)
            try:
                model = factory.config.model_validate(body)
            except ValidationError as e:
                report_validation_error(self.src, path, e, factory.config)
                continue
            reason = getattr(factory, "ignored", "")  # accepted for collector configs, not run (pprof)
            if reason:
                self.src.error(path, f"{kind.value} {key} is accepted and ignored: {reason}", warning=True)
            if kind == Kind.CONNECTOR and (cid in self.cfg.receivers or cid in self.cfg.exporters):
                other = "receiver" if cid in self.cfg.receivers else "exporter"
                self.src.error(path, f"ambiguous id {key}: both a {other} and a connector have it; "
                               "rename one (type/name)")
                continue
            out[cid] = ComponentEntry(cid, kind, factory, model, self.src.line(path))

    def service(self, value: Any) -> None:
        svc = self.mapping(value, ("service",), "service")
        if svc is None:
            return
        sc = self.cfg.service = ServiceConfig()
        for key in svc:
            if key not in SERVICE_KEYS:
                self.src.error(("service", key), _unknown_key(key, SERVICE_KEYS))
        if "telemetry" in svc:
            t = self.mapping(svc["telemetry"], ("service", "telemetry"), "service::telemetry")
            if t is not None:
                report_renamed_keys(self.src, ("service", "telemetry"), t, TelemetryConfig)
                try:
                    sc.telemetry = TelemetryConfig.model_validate(t)
                except ValidationError as e:
                    report_validation_error(self.src, ("service", "telemetry"), e, TelemetryConfig)
        if "supervisor" in svc:
            s = self.mapping(svc["supervisor"], ("service", "supervisor"), "service::supervisor")
            if s is not None:
                report_renamed_keys(self.src, ("service", "supervisor"), s, SupervisorConfig)
                try:
                    sc.supervisor = SupervisorConfig.model_validate(s)
                except ValidationError as e:
                    report_validation_error(self.src, ("service", "supervisor"), e, SupervisorConfig)
        if "shutdown_timeout" in svc:
            try:
                sc.shutdown_timeout = parse_duration(svc["shutdown_timeout"])
            except ValueError as e:
                self.src.error(("service", "shutdown_timeout"), str(e))
        sc.extensions = self.id_list(svc.get("extensions"), ("service", "extensions"), Kind.EXTENSION, None)
        self.authenticators()
        self.pipelines(svc.get("pipelines"))
        self.own_process()
        self.unused()

    def authenticators(self) -> None:
        """Each component's auth::authenticator names a configured, enabled client authenticator; each
        receiver protocol's (protocols::grpc|http::auth) a server authenticator."""
        for section, kind in SECTIONS.items():
            for cid, entry in self.cfg.section(kind).items():
                name = getattr(getattr(entry.config, "auth", None), "authenticator", None)
                if isinstance(name, str):
                    self._authenticator((section, str(cid), "auth", "authenticator"), name, "client")
                for proto in ("grpc", "http"):
                    server = getattr(getattr(entry.config, "protocols", None), proto, None)
                    name = getattr(getattr(server, "auth", None), "authenticator", None)
                    if isinstance(name, str):
                        self._authenticator((section, str(cid), "protocols", proto, "auth", "authenticator"), name,
                                            "server")

    def _authenticator(self, path: Path, name: str, side: str) -> None:
        """`name` is a configured, enabled authenticator able to act on `side` (client or server)."""
        ext = self.cfg.extensions.get(ComponentID.parse(name))
        if ext is None:
            if not self._section_had("extensions", name):  # else reported there
                names = ", ".join(self._written("extensions")) or "none"
                self.src.error(path, f'extension "{name}" is not configured (configured: {names})')
        elif not getattr(ext.factory, f"{side}_auth", False):
            self.src.error(path, f'extension "{name}" is a {ext.factory.type} extension, not a {side} '
                           "authenticator (bearertokenauth, basicauth)")
        elif side == "client" and getattr(ext.config, "client_auth", True) is None:
            self.src.error(path, f'extension "{name}" has no client_auth: it cannot authenticate a client')
        elif side == "server" and hasattr(ext.config, "htpasswd") and ext.config.htpasswd is None:
            self.src.error(path, f'extension "{name}" has no htpasswd: it cannot check a client\'s credentials')
        elif ext.id not in self.cfg.service.extensions:
            self.src.error(path, f'extension "{name}" is not listed in service::extensions, so it does not run')

    def id_list(self, value: Any, path: Path, kind: Kind, signal: Signal | None) -> list[ComponentID]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.src.error(path, f"expected a list of {kind.value} ids, got {type(value).__name__}")
            return []
        out: list[ComponentID] = []
        configured = self.cfg.section(kind)
        section = f"{kind.value}s"
        for i, item in enumerate(value):
            ipath = (*path, str(i))
            line = self.src.line(ipath)
            if not isinstance(item, str):
                self.src.error(path, f"{kind.value} id must be a string, got {item!r}", line=line)
                continue
            try:
                cid = ComponentID.parse(item)
            except ValueError as e:
                self.src.error(path, str(e), line=line)
                continue
            if cid in out:
                self.src.error(path, f'{kind.value} "{item}" is listed twice', line=line)
                continue
            entry = configured.get(cid)
            as_connector = kind in (Kind.RECEIVER, Kind.EXPORTER)  # connectors are both
            if entry is None and as_connector:
                entry = self.cfg.connectors.get(cid)
            if entry is None:
                written = self._written(section) + (self._written("connectors") if as_connector else [])
                names = ", ".join(sorted(written)) or "none"
                # an id written in its section (or under connectors) that failed there was reported
                # there: no second error here
                if not self._section_had(section, item) and not (
                        as_connector and self._section_had("connectors", item)):
                    self.src.error(path, f'{kind.value} "{item}" is not configured (configured: {names})', line=line)
                continue
            if entry.kind == Kind.CONNECTOR and signal is not None:
                # as an exporter it consumes the pipeline's signal; as a receiver it emits it
                side = 0 if kind == Kind.EXPORTER else 1
                sigs = {pair[side] for pair in entry.factory.pairs}
                if signal not in sigs:
                    role = "exporter" if kind == Kind.EXPORTER else "receiver"
                    ok = ", ".join(sorted(s.value for s in sigs)) or "none"
                    self.src.error(path, f'connector "{item}" cannot be the {role} of a {signal.value} pipeline '
                                   f"(type {entry.factory.type} as {role}: {ok})", line=line)
                    continue
                out.append(cid)
                continue
            if signal is not None and signal not in entry.factory.signals:
                supported = ", ".join(sorted(s.value for s in entry.factory.signals)) or "none"
                self.src.error(
                    path,
                    f'{kind.value} "{item}" does not support {signal.value} (type {entry.factory.type} supports: {supported})',
                    line=line,
                )
                continue
            check = getattr(entry.factory, "signal_problem", None)
            if check is not None and signal is not None:
                problem = check(entry.config, signal)
                if problem:  # reported at the processor; it is still the one this pipeline names
                    self.src.error((section, item), f"in a {signal.value} pipeline: {problem}")
            out.append(cid)
        return out

    def _written(self, section: str) -> list[str]:
        top = self.src.data if isinstance(self.src.data, dict) else {}
        sec = top.get(section)
        return sorted(str(k) for k in sec) if isinstance(sec, dict) else []

    def _section_had(self, section: str, item: str) -> bool:
        """True when the id was written in its section but failed there (already reported)."""
        top = self.src.data if isinstance(self.src.data, dict) else {}
        sec = top.get(section)
        return isinstance(sec, dict) and item in sec

    def pipelines(self, value: Any) -> None:
        path: Path = ("service", "pipelines")
        pls = self.mapping(value, path, "service::pipelines")
        if pls is None:
            return
        if not pls:
            self.src.error(path, "no pipelines are configured: at least one is needed")
            return
        fed = set(self.cfg.service.telemetry.metrics.pipelines)
        for name, body in pls.items():
            ppath = (*path, name)
            typ, _, _sub = name.partition("/")
            try:
                signal = Signal(typ)
                ComponentID.parse(name)
            except ValueError:
                self.src.error(
                    ppath,
                    f'invalid pipeline id "{name}": expected traces|metrics|logs|profiles[/name]',
                )
                continue
            b = self.mapping(body, ppath, f"pipeline {name}")
            if b is None:
                continue
            for key in b:
                if key not in PIPELINE_KEYS:
                    self.src.error((*ppath, key), _unknown_key(key, list(PIPELINE_KEYS)))
            lists = {k: self.id_list(b.get(k), (*ppath, k), kind, signal) for k, kind in PIPELINE_KEYS.items()}
            if not b.get("receivers") and name not in fed:
                self.src.error(ppath, f"pipeline {name} has no receivers")
            if not b.get("exporters"):
                self.src.error(ppath, f"pipeline {name} has no exporters")
            self.cfg.service.pipelines[name] = PipelineSpec(
                name, signal, lists["receivers"], lists["processors"], lists["exporters"], self.src.line(ppath)
            )
        connector_rules(self.src, self.cfg)
        for p in sorted(fed):
            spec = self.cfg.service.pipelines.get(p)
            tpath = ("service", "telemetry", "metrics", "pipelines")
            if spec is None:
                self.src.error(tpath, f'pipeline "{p}" is not configured (configured: {", ".join(pls) or "none"})')
            elif spec.signal != Signal.METRICS:
                self.src.error(tpath, f'pipeline "{p}" is a {spec.signal.value} pipeline; self-telemetry needs a metrics one')

    def own_process(self) -> None:
        """service::supervisor::own_process names configured receivers."""
        for i, rid in enumerate(self.cfg.service.supervisor.own_process):
            try:
                cid = ComponentID.parse(rid)
            except ValueError as e:
                self.src.error(("service", "supervisor", "own_process", str(i)), str(e))
                continue
            if cid not in self.cfg.receivers:
                have = ", ".join(str(c) for c in self.cfg.receivers) or "none"
                self.src.error(("service", "supervisor", "own_process", str(i)),
                               f"receiver {rid} is not configured (configured: {have})")

    def unused(self) -> None:
        used: set[tuple[Kind, ComponentID]] = set()
        for spec in self.cfg.service.pipelines.values():
            for k, ids in ((Kind.RECEIVER, spec.receivers), (Kind.PROCESSOR, spec.processors), (Kind.EXPORTER, spec.exporters)):
                used.update((k, c) for c in ids)
        used.update((Kind.EXTENSION, c) for c in self.cfg.service.extensions)
        used.update((Kind.CONNECTOR, c) for k, c in list(used) if c in self.cfg.connectors)
        for section, kind in SECTIONS.items():
            for cid in self.cfg.section(kind):
                if (kind, cid) not in used:
                    self.src.error(
                        (section, str(cid)),
                        f"{kind.value} {cid} is configured but not used by any pipeline; it will not run",
                        warning=True,
                    )


def _tidy(src: Source) -> None:
    """Orders issues by line; drops follow-ups at a place already reported (e.g. the empty value
    left by an undefined variable failing type validation too)."""
    seen: set[tuple[int | None, str]] = set()
    out = []
    for i in src.issues:
        key = (i.line, i.path)
        if not i.warning:  # a warning at a place (a deprecated key) never hides an error there
            if key in seen:
                continue
            seen.add(key)
        out.append(i)
    src.issues[:] = sorted(out, key=lambda i: (i.line or 0))


def validate_source(src: Source, reg: Registry | None = None) -> Config:
    if src.data is None and src.issues:
        raise ConfigError(src.issues)
    if reg is None:  # GOTEL_ALL_PLUGINS=1: import every installed plugin (bench/footprint's baseline)
        reg = registry() if os.environ.get("GOTEL_ALL_PLUGINS", "") not in ("", "0") else LazyRegistry()
    cfg = _Validator(src, reg).run()
    _tidy(src)
    cfg.warnings = [i for i in src.issues if i.warning]
    if any(not i.warning for i in src.issues):
        raise ConfigError(src.issues)
    return cfg


def load_config(
    file: str, *, text: str | None = None, env: Mapping[str, str] | None = None, reg: Registry | None = None
) -> Config:
    """Loads and validates a config; raises ConfigError with every problem found."""
    return validate_source(load_source(file, text, env), reg)


def default_config_text() -> str:
    return resources.files("gotel.defaults").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def load_default_config(env: Mapping[str, str] | None = None, reg: Registry | None = None) -> Config:
    return load_config(f"{DEFAULT_CONFIG_NAME} (embedded)", text=default_config_text(), env=env, reg=reg)
