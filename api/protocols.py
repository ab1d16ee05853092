"""The HTTP connection itself, against slow and greedy clients, whichever implementation
serves (uvicorn's httptools or h11): a request's headers must arrive within
`header_timeout_seconds` and under `max_header_bytes + max_url_bytes`, else the connection
is closed (431 when too big), and no more than `max_connections` connections are held.

uvicorn alone lets a connection that sends nothing, or trickles its headers, live for ever
(its keep-alive timeout starts only after a response), and its `limit_concurrency` counts
such connections: a few hundred of them answer every good request with 503. Here
connections are bounded apart, and the limit on work (`api.middleware.InFlight`) counts
only requests whose headers have arrived.

Left out: TLS (terminate it in a reverse proxy) and per-address connection limits (a proxy
or firewall sees the real addresses).
"""

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger("rag.api")
TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class Guarded:
    """Mixed into uvicorn's protocol classes (`protocol_class` makes the pair)."""

    header_seconds = 10.0
    max_header_bytes = 16384 + 8192
    max_connections = 1000
    # what uvicorn's protocols have (typed here for the mixin)
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._deadline: asyncio.TimerHandle | None = None
        self._received = 0
        if len(self.connections) > self.max_connections:
            log.warning("connection refused: %d connections are open (RAG_MAX_CONNECTIONS)", len(self.connections))
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        # after a response: the next request's headers, or the rest of a body the app refused
        # without reading it (dropped by uvicorn as it comes): both within the deadline
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()
        waiting = self._deadline is not None
        in_headers = self.cycle is None or (self.cycle.response_complete and not self.cycle.more_body)
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if not waiting:
            return
        if self.cycle is not before:  # the headers are in: a request began (its body may follow in `data`)
            self._disarm()
            return
        if in_headers:  # at most one read past the limit is ever held
            self._received += len(data)
            if self._received > self.max_header_bytes:
                self._refuse_large()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._received = 0
        self._deadline = self.loop.call_later(self.header_seconds, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("connection closed: no complete request headers within %g s (RAG_HEADER_TIMEOUT_SECONDS)",
                     self.header_seconds)
            self.transport.close()

    def _refuse_large(self) -> None:
        self._disarm()
        body = (b'{"detail": "request headers are larger than the limit of %d bytes"}' % self.max_header_bytes)
        log.info("connection closed: request headers over %d bytes", self.max_header_bytes)
        self.transport.write(TOO_LARGE % (len(body), body))
        self.transport.close()


def protocol_class(header_seconds: float, max_header_bytes: int, max_connections: int,
                   implementation: str = "auto") -> type:
    """uvicorn's httptools protocol (h11 when httptools is missing, or asked for) with the guard."""
    base: type = H11Protocol if implementation == "h11" or HttpToolsProtocol is None else HttpToolsProtocol
    return type(f"Guarded{base.__name__}", (Guarded, base), {
        "header_seconds": header_seconds, "max_header_bytes": max_header_bytes, "max_connections": max_connections})
