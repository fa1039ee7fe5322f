"""Server authenticators: what a receiver's `auth: {authenticator: ID}` names (the collector's
configauth on a server): an extension that tells whether a request's headers carry valid credentials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from gotel.component.contract import Context
from gotel.component.ids import ComponentID


@runtime_checkable
class ServerAuthenticator(Protocol):
    def authenticate(self, headers: Mapping[str, str]) -> str:
        """'' when the headers (keys lower-case) carry valid credentials; else why not, for the
        client's error message (never the credentials themselves)."""
        ...


class ServerAuthenticatorMissingError(RuntimeError):
    """auth::authenticator names no running server authenticator (validation normally catches this)."""


def server_authenticator(ctx: Context, name: str) -> ServerAuthenticator:
    """The running extension `name`, looked up as exporters look up client authenticators."""
    exts: dict[ComponentID, Any] = ctx.extras.get("extensions", {})
    ext = exts.get(ComponentID.parse(name))
    if not isinstance(ext, ServerAuthenticator):
        raise ServerAuthenticatorMissingError(
            f"{ctx.id}: auth::authenticator: {name} is not a running server authenticator "
            "(list it under extensions and service::extensions)")
    return ext
