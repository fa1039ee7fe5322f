"""Client authenticator extensions, the collector's `bearertokenauth` and `basicauth`: an exporter
names one with `auth: {authenticator: bearertokenauth/x}` and sends its header with every request.

Tokens and passwords are SecretStr: never in logs, `gotel validate` or `gotel components`. A token
`filename` is re-read when the file changes (checked by stat() before each request, so a rotated
token is used from the next request on, as the collector's file watch does); when the file cannot
be read the last token stays in use and the failure is logged once, without the token.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr, model_validator

from gotel.component.contract import Component, ComponentConfig, Context, ExtensionFactory
from gotel.service.server import StartupError


@dataclass(frozen=True)
class AuthenticatorFactory(ExtensionFactory):
    """An extension exporters may name in auth::authenticator (the config loader checks this flag)."""

    client_auth: bool = True


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


class ClientAuth(ComponentConfig):
    username: str
    password: SecretStr


class Htpasswd(ComponentConfig):
    """Server side (receivers): accepted so that collector configs validate; gotel receivers do not
    take an authenticator yet."""

    file: str = ""
    inline: SecretStr | None = None


class BasicConfig(ComponentConfig):
    client_auth: ClientAuth | None = Field(None, description="username and password sent by exporters")
    htpasswd: Htpasswd | None = Field(None, description="server side: accepted, not used by gotel")


class BasicAuth(Component):
    def __init__(self, cfg: BasicConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx

    def auth_headers(self) -> dict[str, str]:
        c = self.cfg.client_auth
        if c is None:
            return {}
        raw = f"{c.username}:{c.password.get_secret_value()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _client_ready(cfg: Any) -> str:
    """Why this config cannot authenticate a client, or ''."""
    return "basicauth has no client_auth" if isinstance(cfg, BasicConfig) and cfg.client_auth is None else ""


bearer_factory = AuthenticatorFactory(
    type="bearertokenauth",
    config=BearerConfig,
    signals=frozenset(),
    description="sends `Authorization: Bearer TOKEN` (scheme, header configurable) with every request of "
    "exporters whose auth::authenticator names it; token from the config or a file re-read on change",
    create=BearerTokenAuth,
)
basic_factory = AuthenticatorFactory(
    type="basicauth",
    config=BasicConfig,
    signals=frozenset(),
    description="sends HTTP basic authentication (client_auth: username, password) with every request "
    "of exporters whose auth::authenticator names it",
    create=BasicAuth,
)
