"""Slow and greedy clients against the server as `rag serve` configures it
(api.app.server_config), with each HTTP implementation uvicorn may use: connections that
trickle their headers are closed and never crowd out good requests, oversized headers are
refused, and an unauthenticated upload is refused from its headers, its body never read."""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app, server_config
from rag.settings import Settings
from tests.helpers import FakeEmbedder, free_port, running_server

IMPLEMENTATIONS = ["httptools", "h11"]


@contextmanager
def serving(settings: Settings, implementation: str) -> Iterator[str]:
    """The app as `rag serve` configures it, with the HTTP implementation asked for."""
    from api.protocols import protocol_class

    config = server_config(settings.model_copy(update={"host": "127.0.0.1", "port": free_port()}),
                           create_app(settings, embedder_factory=lambda name: FakeEmbedder()))
    config.http = protocol_class(settings.header_timeout_seconds, settings.max_header_bytes + settings.max_url_bytes,
                                 settings.max_connections, implementation)
    with running_server(None, config) as url:
        yield url


def trickler(port: int) -> socket.socket:
    """A connection that starts its headers and then waits, as a slowloris does."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /query?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
    return s


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_trickling_connections_never_crowd_out_a_good_request(built: Settings, implementation: str):
    # limit_concurrency below the attackers' count: in uvicorn's own count they would fill it
    settings = built.model_copy(update={"limit_concurrency": 64, "header_timeout_seconds": 2.0})
    with serving(settings, implementation) as url:
        port = int(url.rsplit(":", 1)[1])
        attackers = [trickler(port) for _ in range(300)]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            r = httpx.post(f"{url}/query", json={"question": "China Russia trade", "k": 2}, timeout=5)
            assert r.status_code == 200 and time.monotonic() - started < 1.0, r.text
            for s in attackers[:5]:  # each is closed once its headers are late
                s.settimeout(5)
                assert s.recv(1024) == b""
        finally:
            for s in attackers:
                s.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_oversized_headers_are_refused_and_the_connection_closed(built: Settings, implementation: str):
    with serving(built, implementation) as url:
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.settimeout(5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for _ in range(64):  # 64 x 1 KiB, over the 24 KiB limit, never finished
                s.sendall(b"X-Pad: " + b"a" * 1017 + b"\r\n")
        except OSError:
            pass  # closed under us: what is asked
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # closed while we were still sending: the answer may be lost, the connection is gone
        # ours is a 431; h11 may refuse first, at its own limit on an incomplete event, with a 400
        assert answer[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400", b""), answer[:100]
        with pytest.raises(OSError):  # closed: nothing more is taken
            for _ in range(50):
                s.sendall(b"X-More: " + b"b" * 1000 + b"\r\n")
                time.sleep(0.01)
        s.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(built: Settings, implementation: str):
    settings = built.model_copy(update={"api_key": SecretStr("k")})
    with serving(settings, implementation) as url:
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.settimeout(5)
        size = 32 << 20
        s.sendall(b"POST /collections/notes/documents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n" % size)
        s.sendall(b"x" * 65536)  # a first piece; the rest is never sent
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):  # the 401's headers and JSON body
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert time.monotonic() - started < 2  # answered from the headers, the body never awaited
        s.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_client_that_sends_its_whole_refused_upload_reads_the_401(built: Settings, implementation: str):
    settings = built.model_copy(update={"api_key": SecretStr("k")})
    with serving(settings, implementation) as url:
        r = httpx.post(f"{url}/collections/notes/documents", files={"file": ("big.txt", b"x" * (8 << 20))}, timeout=30)
        assert r.status_code == 401  # the body dropped as it came, the answer intact
        assert httpx.get(f"{url}/health").status_code == 200
