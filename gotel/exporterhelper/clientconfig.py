"""Client-side settings shared by network exporters, named as in the collector (confighttp/configtls).

Header values are kept as pydantic SecretStr so that printing a config, or an error about it, never
shows a token. Tokens need not be in the config file either: ``headers: {authorization: "Bearer
${env:TOKEN}"}`` takes one from the environment, ``headers_file`` from a private file.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import stat
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import yaml
from pydantic import Field, SecretStr, model_validator

from gotel.component.contract import ComponentConfig, ComponentID, Context
from gotel.config.types import Duration
from gotel.exporterhelper.queue import QueueConfig, RetryConfig

log = logging.getLogger("gotel.config")
# Header names whose values are credentials: a literal one in argv is worth a warning.
SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|passw|cookie|session|credential", re.I)


def read_headers_file(path: str) -> dict[str, str]:
    """A headers file: a YAML mapping of header name to value (``authorization: Bearer ...``).

    Raises ValueError naming the file and the problem, never a value. Warns when other users can
    read the file, as ssh does for keys."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"headers file {path}: {e.strerror or e}") from None
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("headers file %s is readable by other users (mode %04o): chmod 600 it",
                    path, stat.S_IMODE(st.st_mode))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ValueError(f"headers file {path}:{line} not a YAML mapping of header: value") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"headers file {path}: not a YAML mapping of header: value")
    out: dict[str, str] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not k.strip() or isinstance(v, dict | list) or v is None:
            raise ValueError(f"headers file {path}: entry {k!r} must be a header name with a text value")
        out[k.strip().lower()] = str(v)
    return out


def parse_header_args(args: Iterable[str], env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """``KEY=VALUE`` command-line headers -> (headers, errors, warnings).

    ``${env:NAME}`` in a value is expanded here, so that quoting it ('Bearer ${env:TOKEN}') keeps the
    token out of argv, which every local user can read in /proc/PID/cmdline. A literal credential
    still works, with a warning."""
    from gotel.config.source import expand_env

    headers: dict[str, str] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for h in args:
        k, sep, v = h.partition("=")
        k = k.strip().lower()
        if not sep or not k:
            errors.append(f"--header {k or h!r}: expected KEY=VALUE")
            continue
        value, errs, _whole = expand_env(v, env)
        errors.extend(f"--header {k}: {e}" for e in errs)
        if value == v and v and SENSITIVE_HEADER.search(k):
            warnings.append(
                f"--header '{k}' holds a literal value, visible to every local user in the process list: put "
                "${env:NAME} in the value, quoted so that the shell leaves it to gotel, or use --header-file FILE"
            )
        headers[k] = value
    return headers, errors, warnings


class TLSClientConfig(ComponentConfig):
    insecure: bool = Field(False, description="plain text (no TLS) for http:// or gRPC endpoints")
    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name_override: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class BasicAuth(ComponentConfig):
    username: str
    password: SecretStr


class AuthConfig(ComponentConfig):
    """The collector's `auth:` key of a client: a client authenticator extension, by id."""

    authenticator: str = Field(description="id of a client authenticator extension (bearertokenauth[/name], "
                               "basicauth[/name]) listed in service::extensions")

    @model_validator(mode="after")
    def _id(self) -> AuthConfig:
        ComponentID.parse(self.authenticator)  # ValueError: invalid component id
        return self


@runtime_checkable
class ClientAuthenticator(Protocol):
    """What a client authenticator extension offers exporters: the headers of the next request
    (asked per request, so that a token file's new content is used at once)."""

    def auth_headers(self) -> dict[str, str]: ...


class AuthenticatorMissingError(RuntimeError):
    """auth::authenticator names no running client authenticator (validation normally catches this)."""


class NamesAuthenticator(Protocol):
    """An `auth:` config: AuthConfig, or the Loki/remote-write HTTPAuth with its optional authenticator."""

    @property
    def authenticator(self) -> str | None: ...


def auth_headers(ctx: Context, auth: NamesAuthenticator | None) -> dict[str, str]:
    """The headers of the authenticator `auth` names, looked up by id among the running extensions
    (as sending_queue.storage is); {} without one."""
    if auth is None or not auth.authenticator:
        return {}
    exts: dict[ComponentID, Any] = ctx.extras.get("extensions", {})
    ext = exts.get(ComponentID.parse(auth.authenticator))
    if not isinstance(ext, ClientAuthenticator):
        raise AuthenticatorMissingError(
            f"{ctx.id}: auth::authenticator: {auth.authenticator} is not a running client authenticator "
            "(list it under extensions and service::extensions)")
    return ext.auth_headers()


class ClientConfig(ComponentConfig):
    """The common part of every push exporter's config."""

    endpoint: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    headers_file: str | None = Field(
        None, description="YAML file of header: value added to headers (read at start; keeps tokens out of the config)"
    )
    tls: TLSClientConfig = Field(default_factory=TLSClientConfig)
    compression: Literal["gzip", "none", ""] = "gzip"
    timeout: Duration = Field(5.0, gt=0, description="one send attempt: 5s, 500ms or seconds as a number")
    sending_queue: QueueConfig = Field(default_factory=QueueConfig)
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig)
    auth: AuthConfig | None = Field(None, description="authenticator: bearertokenauth[/name] or basicauth[/name]")

    @model_validator(mode="after")
    def _read_headers_file(self) -> ClientConfig:
        if self.headers_file:
            have = {h.lower(): x.get_secret_value() for h, x in self.headers.items()}
            for k, v in read_headers_file(self.headers_file).items():
                if k in have and have[k] != v:  # (equal: this config was validated before)
                    raise ValueError(f"header {k} is set both in headers and in headers_file {self.headers_file}")
                self.headers[k] = SecretStr(v)
        return self

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}
