"""One HTTP POST attempt for push exporters (Loki, remote-write): session, TLS, auth, status -> ExportError.

The retry loop is QueuedExporter's; this module only classifies an answer: which status codes are
retryable, what Retry-After says, and what the backend's reason was (from the body, shortened).
"""

from __future__ import annotations

import base64
import email.utils
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from pydantic import Field, SecretStr, model_validator

from gotel import __version__
from gotel.component.contract import ComponentConfig, Context
from gotel.exporterhelper.clientconfig import BasicAuth, TLSClientConfig, auth_headers
from gotel.exporterhelper.queue import ExportError

USER_AGENT = f"gotel/{__version__}"


class HTTPAuth(ComponentConfig):
    """Basic or bearer authentication, or the collector's authenticator extension; the secrets never
    reach logs (SecretStr)."""

    basic: BasicAuth | None = None
    bearer_token: SecretStr | None = None
    authenticator: str | None = Field(None, description="id of a client authenticator extension "
                                      "(bearertokenauth[/name], basicauth[/name]), as in the collector")

    @model_validator(mode="after")
    def _one(self) -> HTTPAuth:
        if sum(x is not None for x in (self.basic, self.bearer_token, self.authenticator)) > 1:
            raise ValueError("use one of basic, bearer_token and authenticator")
        return self

    def dynamic(self, ctx: Context) -> Callable[[], dict[str, str]] | None:
        """Per-request headers of the authenticator extension, if one is named."""
        return (lambda: auth_headers(ctx, self)) if self.authenticator else None

    def header(self) -> str | None:
        if self.basic is not None:
            raw = f"{self.basic.username}:{self.basic.password.get_secret_value()}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if self.bearer_token is not None:
            return "Bearer " + self.bearer_token.get_secret_value()
        return None


class HTTPAuthField(ComponentConfig):
    auth: HTTPAuth = Field(default_factory=HTTPAuth)


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds from delay-seconds or an HTTP-date (RFC 9110 section 10.2.3), a date in the
    past being 0; None if absent or unreadable (a negative or exponent number too). The one parser every
    HTTP exporter uses; fractional seconds, which some servers send, are read too."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


def short(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


class HTTPPoster:
    """The one HTTP sender of every HTTP exporter: a keep-alive aiohttp session bound to one endpoint
    (TCP or a unix socket), TLS settings and fixed headers, with transport failures classified once.

    A certificate the client does not trust is not retried (it does not heal by waiting): dropped and
    counted as ``tls_certificate`` with a message naming tls.ca_file. A refused or unreachable endpoint
    (``unreachable``) and any other transport error (``transport``) are retried.
    """

    def __init__(self, url: str, headers: Mapping[str, str], tls: TLSClientConfig, timeout: float,
                 auth: Callable[[], Mapping[str, str]] | None = None, *, unix_socket: str | None = None,
                 limit: int = 0, safe_url: str | None = None) -> None:
        self.url = url
        self.auth = auth  # an authenticator extension's headers, asked per request (tokens rotate)
        self.headers = {"User-Agent": USER_AGENT, **headers}
        self.tls = tls
        self.timeout = timeout
        self.unix_socket = unix_socket
        self.limit = limit
        self.safe_url = safe_url or url  # the URL as logs may show it (no credentials)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.url.startswith("https://"):
            return self.tls.ssl_context()
        return False

    async def start(self) -> None:
        if self._session is None:
            conn: aiohttp.BaseConnector
            if self.unix_socket:
                conn = aiohttp.UnixConnector(path=self.unix_socket, limit=self.limit)
            else:
                conn = aiohttp.TCPConnector(ssl=self._ssl(), limit=self.limit)
            self._session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def post(self, body: Any, headers: Mapping[str, str] | None = None, *, url: str | None = None,
                   params: Mapping[str, str] | None = None) -> tuple[int, bytes, Mapping[str, str]]:
        """(status, body, headers) of one POST to the endpoint (or `url` on the same server); transport
        failures raise an ExportError classified as above."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        h = dict(self.headers)
        if headers:
            h.update(headers)
        if self.auth is not None:
            h.update(self.auth())
        target = url or self.url
        shown = self.safe_url if url is None else url
        try:
            async with self._session.post(target, data=body, headers=h, params=params, allow_redirects=False) as resp:
                data = await resp.read()
                return resp.status, data, resp.headers
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            why = getattr(e, "certificate_error", None) or e
            raise ExportError(f"TLS: the certificate of {shown} is not trusted ({why}); "
                              "set tls.ca_file to the CA that signed it", retryable=False,
                              reason="tls_certificate") from None
        except aiohttp.ClientConnectorError as e:
            raise ExportError(f"cannot connect to {shown}: {e.os_error or e}", retryable=True,
                              reason="unreachable") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ExportError(f"{shown}: {type(e).__name__}: {e}", retryable=True, reason="transport") from None

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
