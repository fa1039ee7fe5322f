"""HTTP GETs of pprof endpoints with every failure classified.

Classes (the ``class`` label of gotel_pprof_scrape_failures_total): timeout, refused, unreachable,
not_found, http_error, cpu_busy, write_timeout, not_pprof, too_large, empty_profile, netns.
Checks follow what broke real scrapers: a status other than 200, an HTML login page or a JSON error
where a profile was expected, a body that is neither gzip nor protobuf, a truncated gzip.
"""

from __future__ import annotations

import asyncio
import errno
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp

from gotel.formats import pprof
from gotel.host.netns import NetnsError, NetnsSocketFactory
from gotel.receiverhelper.targets import Target


class ScrapeError(Exception):
    def __init__(self, cls: str, message: str, hint: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.cls = cls
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        m = super().__str__()
        return f"{m} ({self.hint})" if self.hint else m


@dataclass
class Response:
    body: bytes
    content_type: str
    duration: float


def _sniff_not_pprof(body: bytes) -> str | None:
    head = body[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<title", b"<?xml")) or b"<html" in head[:200]:
        return "an HTML page"
    if head[:1] in (b"{", b"["):
        return "JSON"
    return None


def check_pprof_body(body: bytes, content_type: str) -> None:
    """Raises ScrapeError(not_pprof) unless the body can be a (gzipped) pprof protobuf."""
    if not body:
        raise ScrapeError("not_pprof", "empty body where a pprof profile was expected")
    what = _sniff_not_pprof(body)
    if what:
        snippet = body[:120].decode(errors="replace").replace("\n", " ")
        raise ScrapeError("not_pprof", f"got {what} where a pprof profile was expected ({content_type or 'no content type'}): {snippet!r}")
    if body[:2] == b"\x1f\x8b":
        return
    # an uncompressed profile starts with field 1 (sample_type, length-delimited) or another small field
    wire, field = body[0] & 7, body[0] >> 3
    if wire not in (0, 1, 2, 5) or not 1 <= field <= 15:
        raise ScrapeError("not_pprof", f"body is neither gzip nor a pprof protobuf (first bytes {body[:8].hex()}, {content_type or 'no content type'})")


_CLOSING: set[asyncio.Future[None]] = set()
_INDEX_LINK = re.compile(rb"""href=['"]?(?:\./)?goroutine\?debug=1""")


def is_pprof_index(body: bytes) -> bool:
    """The index page net/http/pprof serves (every Go version since 1.x: the same heading and links)."""
    head = body[:65536]
    return b"Types of profiles available" in head and _INDEX_LINK.search(head) is not None


class Fetcher:
    """One aiohttp session per network namespace; sessions are made on first use."""

    def __init__(self, timeout: float = 10.0, max_body_bytes: int = 64 << 20, user_agent: str = "gotel-pprof") -> None:
        self.timeout = timeout
        self.max_body = max_body_bytes
        self.headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip"}
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        self._factories: dict[str, NetnsSocketFactory] = {}

    def _session(self, netns: str | None) -> aiohttp.ClientSession:
        s = self._sessions.get(netns)
        if s is None or s.closed:
            if netns is None:
                conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            else:
                try:
                    f = self._factories.get(netns) or NetnsSocketFactory(netns)
                except NetnsError as e:
                    raise ScrapeError("netns", str(e), "the agent needs CAP_SYS_ADMIN and access to /proc/PID/ns/net") from None
                self._factories[netns] = f
                conn = aiohttp.TCPConnector(limit=0, socket_factory=f, use_dns_cache=False)
            s = aiohttp.ClientSession(connector=conn, headers=self.headers, auto_decompress=False)
            self._sessions[netns] = s
        return s

    def forget_netns(self, netns: str) -> None:
        """Called when no target uses a namespace any more (its process exited)."""
        s = self._sessions.pop(netns, None)
        if s is not None:
            task = asyncio.ensure_future(s.close())
            _CLOSING.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(_CLOSING.discard)
        f = self._factories.pop(netns, None)
        if f is not None:
            f.close()

    async def get(self, target: Target, path: str, params: dict[str, str] | None = None,
                  timeout: float | None = None, expect: str = "pprof") -> Response:
        url = target.url + path
        t = self.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            session = self._session(target.netns)
            async with asyncio.timeout(t):
                async with session.get(url, params=params, allow_redirects=True) as r:
                    body = await self._read(r)
                    ctype = r.headers.get("Content-Type", "")
                    status = r.status
                    enc = r.headers.get("Content-Encoding", "")
        except TimeoutError:
            raise ScrapeError("timeout", f"no complete answer from {url} within {t:g}s") from None
        except aiohttp.ClientConnectorError as e:
            code = getattr(e.os_error, "errno", None)
            if code == errno.ECONNREFUSED:
                raise ScrapeError("refused", f"connection refused by {target.instance}",
                                  "nothing listens there (program exited or pprof is served on another port)") from None
            raise ScrapeError("unreachable", f"cannot connect to {target.instance}: {e.os_error}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            raise ScrapeError("unreachable", f"{url} closed the connection mid-answer: {e}") from None
        except aiohttp.ClientError as e:
            raise ScrapeError("unreachable", f"{url}: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise ScrapeError("unreachable", f"{url}: {e}") from None
        if enc == "gzip":  # transport compression added by a proxy, on top of the (gzipped) profile
            try:
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            except zlib.error as e:
                raise ScrapeError("not_pprof", f"{url}: bad Content-Encoding gzip: {e}") from None
        duration = time.monotonic() - start
        if status != 200:
            self._status_error(url, status, body, path)
        if expect == "pprof":
            check_pprof_body(body, ctype)
        elif expect == "text" and _sniff_not_pprof(body):
            raise ScrapeError("not_pprof", f"got {_sniff_not_pprof(body)} where a goroutine dump was expected")
        return Response(body, ctype, duration)

    async def _read(self, r: aiohttp.ClientResponse) -> bytes:
        n = r.content_length
        if n is not None and n > self.max_body:
            raise ScrapeError("too_large", f"answer of {n} bytes exceeds max_body_bytes={self.max_body}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_body:
                raise ScrapeError("too_large", f"answer exceeds max_body_bytes={self.max_body}")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _status_error(url: str, status: int, body: bytes, path: str) -> None:
        text = body[:300].decode(errors="replace").strip()
        low = text.lower()
        if status == 404:
            hint = "the program does not serve this profile"
            if path.endswith("goroutineleak"):
                hint = "goroutineleak needs Go >= 1.27 (or 1.26 with GOEXPERIMENT=goroutineleakprofile)"
            elif "delta_" in path:
                hint = "godeltaprof endpoints need github.com/grafana/pyroscope-go/godeltaprof/http/pprof"
            else:
                hint = 'import _ "net/http/pprof" and serve http.DefaultServeMux, or set path_prefix'
            raise ScrapeError("not_found", f"{url} answered 404", hint, status)
        if "already in use" in low or "could not enable cpu profiling" in low or "cpu profiling already" in low:
            raise ScrapeError("cpu_busy", f"{url}: CPU profiling is already running in the target ({text[:100]!r})",
                              "another profiler (or go tool pprof) holds the CPU profiler; gotel waits for the next interval", status)
        if "writetimeout" in low or "write timeout" in low:
            raise ScrapeError("write_timeout", f"{url}: {text[:160]!r}",
                              "the profile duration exceeds the server's WriteTimeout: lower cpu.duration", status)
        raise ScrapeError("http_error", f"{url} answered {status}: {text[:160]!r}", status=status)

    async def probe(self, target: Target, path: str) -> bool:
        """True when the port answers as pprof (used by discovery): the net/http/pprof index page (its
        "Types of profiles available" table with profile links), else a goroutine profile that decodes.
        A 200 is not enough: a catch-all handler answers 200 to /debug/pprof/ too, even echoing the path."""
        t = min(self.timeout, 3.0)
        try:
            r = await self.get(target, path, timeout=t, expect="any")
            if is_pprof_index(r.body):
                return True
        except ScrapeError:
            pass
        try:
            r = await self.get(target, path.rstrip("/") + "/goroutine", timeout=t, expect="pprof")
            return any(st == "goroutine" for st, _u in pprof.sample_type_names(pprof.decode(r.body)))
        except (ScrapeError, pprof.PprofError):
            return False

    async def close(self) -> None:
        for s in self._sessions.values():
            await s.close()
        self._sessions.clear()
        for f in self._factories.values():
            f.close()
        self._factories.clear()

    def stats(self) -> dict[str, Any]:
        return {"sessions": len(self._sessions), "netns": sorted(self._factories)}
