"""Authenticator extensions, the collector's `bearertokenauth` and `basicauth`: an exporter names one
with `auth: {authenticator: bearertokenauth/x}` and sends its header with every request; an otlp
receiver's protocol names one the same way and accepts only requests whose header it verifies
(bearertokenauth: the scheme and one of the tokens; basicauth: a user of its `htpasswd`).

Tokens and passwords are SecretStr: never in logs, `gotel validate` or `gotel components`. A token
`filename` is re-read when the file changes (checked by stat() before each request, so a rotated
token is used from the next request on, as the collector's file watch does); when the file cannot
be read the last token stays in use and the failure is logged once, without the token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr, model_validator

from gotel.component.contract import Component, ComponentConfig, Context, ExtensionFactory
from gotel.extensions.htpasswd import HtpasswdError, parse, verify
from gotel.service.server import StartupError


@dataclass(frozen=True)
class AuthenticatorFactory(ExtensionFactory):
    """An extension exporters (client_auth) and receivers (server_auth) may name in auth::authenticator
    (the config loader checks these flags)."""

    client_auth: bool = True
    server_auth: bool = True


class BearerConfig(ComponentConfig):
    scheme: str = Field("Bearer", description="prefix of the header value ('' sends the bare token)")
    header: str = Field("Authorization", description="header (gRPC metadata key) that carries the token")
    token: SecretStr | None = Field(None, description="the token (prefer ${env:NAME} or filename)")
    tokens: list[SecretStr] = Field(default_factory=list, description="clients send the first one")
    filename: str = Field("", description="file holding the token; re-read when it changes; wins over token")

    @model_validator(mode="after")
    def _one(self) -> BearerConfig:
        if self.token is None and not self.tokens and not self.filename:
            raise ValueError("one of token, tokens or filename is required")
        if not self.header.strip():
            raise ValueError("header must not be empty")
        return self


class BearerTokenAuth(Component):
    def __init__(self, cfg: BearerConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.log: logging.Logger = ctx.logger
        self._token = ""
        self._stamp: tuple[int, int, int] | None = None
        self._failing = False
        if not cfg.filename:
            self._token = (cfg.token or cfg.tokens[0]).get_secret_value()

    def _reload(self) -> None:
        """Reads the token file when its inode, size or mtime changed since the last read."""
        path = self.cfg.filename
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            if self._stamp is None:
                raise
            if not self._failing:
                self.log.error("%s: cannot read token file %s (%s): still sending the previous token",
                               self.ctx.id, path, e.strerror or e)
                self._failing = True
            return
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH) and self._stamp is None:
            self.log.warning("%s: token file %s is readable by other users (mode %04o): chmod 600 it",
                             self.ctx.id, path, stat.S_IMODE(st.st_mode))
        if self._stamp is not None:
            self.log.info("%s: token file %s changed: using its new token", self.ctx.id, path)
        self._token, self._stamp, self._failing = token, stamp, False

    async def start(self) -> None:
        if self.cfg.filename:
            try:
                self._reload()
            except OSError as e:
                raise StartupError(f"extension {self.ctx.id}: cannot read token file {self.cfg.filename}: "
                                   f"{e.strerror or e}") from None

    def auth_headers(self) -> dict[str, str]:
        if self.cfg.filename:
            self._reload()
        value = f"{self.cfg.scheme} {self._token}" if self.cfg.scheme else self._token
        return {self.cfg.header: value}

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """Server side: the header must be the scheme and one of the tokens (compared in constant time)."""
        value = headers.get(self.cfg.header.lower(), "")
        if not value:
            return f"missing or empty {self.cfg.header} header"
        if self.cfg.filename:
            self._reload()
            tokens = [self._token]
        else:
            tokens = [t.get_secret_value() for t in ([self.cfg.token] if self.cfg.token else []) + self.cfg.tokens]
        got = value.encode()
        ok = False
        for t in tokens:
            ok |= hmac.compare_digest(got, (f"{self.cfg.scheme} {t}" if self.cfg.scheme else t).encode())
        return "" if ok else f"invalid {self.cfg.header} header"


class ClientAuth(ComponentConfig):
    username: str
    password: SecretStr


class Htpasswd(ComponentConfig):
    """Server side (receivers' auth): the users a request's basic credentials are checked against."""

    file: str = Field("", description="an htpasswd file: plain, {SHA}, {SSHA}, $apr1$, $5$, $6$ (bcrypt with the bcrypt package)")
    inline: SecretStr | None = Field(None, description="htpasswd lines in the config (e.g. ${env:USER}:${env:PASS}); win over file")

    @model_validator(mode="after")
    def _some(self) -> Htpasswd:
        if not self.file and self.inline is None:
            raise ValueError("htpasswd needs file or inline")
        return self


class BasicConfig(ComponentConfig):
    client_auth: ClientAuth | None = Field(None, description="username and password sent by exporters")
    htpasswd: Htpasswd | None = Field(None, description="users that receivers naming this extension accept")


class BasicAuth(Component):
    def __init__(self, cfg: BasicConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self._users: dict[str, str] = {}

    async def start(self) -> None:
        h = self.cfg.htpasswd
        if h is None:
            return
        try:
            if h.file:
                with open(h.file, encoding="utf-8") as f:
                    self._users.update(parse(f.read(), h.file))
            if h.inline is not None:  # inline entries win over the file's, as in the collector
                self._users.update(parse(h.inline.get_secret_value(), "htpasswd::inline"))
        except OSError as e:
            raise StartupError(f"extension {self.ctx.id}: cannot read htpasswd file {h.file}: {e.strerror or e}") from None
        except HtpasswdError as e:
            raise StartupError(f"extension {self.ctx.id}: {e}") from None

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """Server side: `Authorization: Basic base64(user:password)` of a user in htpasswd."""
        if self.cfg.htpasswd is None:
            return "basicauth has no htpasswd"
        scheme, _, b64 = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "basic" or not b64:
            return "missing or malformed basic Authorization header"
        try:
            user, sep, password = base64.b64decode(b64.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "malformed basic Authorization header"
        stored = self._users.get(user)
        if not sep or stored is None or not verify(password, stored):
            return "invalid username or password"
        return ""

    def auth_headers(self) -> dict[str, str]:
        c = self.cfg.client_auth
        if c is None:
            return {}
        raw = f"{c.username}:{c.password.get_secret_value()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def server_ready(cfg: Any) -> str:
    """Why this config cannot authenticate a server's clients, or ''."""
    return "basicauth has no htpasswd" if isinstance(cfg, BasicConfig) and cfg.htpasswd is None else ""


def _client_ready(cfg: Any) -> str:
    """Why this config cannot authenticate a client, or ''."""
    return "basicauth has no client_auth" if isinstance(cfg, BasicConfig) and cfg.client_auth is None else ""


bearer_factory = AuthenticatorFactory(
    type="bearertokenauth",
    config=BearerConfig,
    signals=frozenset(),
    description="sends `Authorization: Bearer TOKEN` (scheme, header configurable) with every request of "
    "exporters whose auth::authenticator names it, and makes otlp receivers that name it require one of its "
    "tokens; token from the config or a file re-read on change",
    create=BearerTokenAuth,
)
basic_factory = AuthenticatorFactory(
    type="basicauth",
    config=BasicConfig,
    signals=frozenset(),
    description="sends HTTP basic authentication (client_auth: username, password) with every request "
    "of exporters whose auth::authenticator names it; otlp receivers that name it accept only its "
    "htpasswd users",
    create=BasicAuth,
)
