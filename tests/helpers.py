"""What tests share besides fixtures: a deterministic fake embedding model, a real server
on a free loopback port, and a TestClient for the app with the fake model.

Every test writes only under pytest's tmp_path.
"""

import hashlib
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from api.app import create_app
from rag.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
WORD = re.compile(r"\w+")
BASE_URL = "http://127.0.0.1"  # a loopback Host: the service bound to loopback answers only to loopback names


class FakeEmbedder:
    """Bag of hashed lowercase words, L2-normalised: texts that share words are close.

    count_tokens is one token per word plus [CLS] and [SEP], so limits are easy to reason
    about; `encoded` records every text embedded, so tests can count model calls.
    """

    name = "fake"

    def __init__(self, dimension: int = 64, max_tokens: int = 256):
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.encoded: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(WORD.findall(text)) + 2

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimension, dtype=np.float32)
        for word in WORD.findall(text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.encoded += list(texts)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)


def client_for(settings: Settings, embedder: FakeEmbedder | None = None, **kwargs: Any) -> TestClient:
    """A TestClient of the app serving `settings` with the fake model (use it as a context manager)."""
    fake = embedder or FakeEmbedder()
    return TestClient(create_app(settings, embedder_factory=lambda name: fake), base_url=BASE_URL, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(app: Any, config: Any = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread; yields its URL.
    `config`, a uvicorn.Config, serves as given (its app, host and port included)."""
    import uvicorn

    if config is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    port = config.port
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def article(topic: str, version: int = 1, paragraphs: int = 6) -> str:
    return "\n\n".join(f"Paragraph {i} about {topic} (version {version}). The {topic} matters for trade, energy "
                       f"and security in region {i}. Experts discuss {topic} policy number {i * version}."
                       for i in range(paragraphs))


PDF_PAGES = [[f"Sentence {n} on page {page} tells of penguin colony {n} and krill survey number {n * page}."
              for n in range(1, 9)] for page in range(1, 5)]  # ~190 tokens a page: chunks cross pages


def pdf_bytes(pages: list[list[str]], font: str = "Helvetica", encrypt: dict | None = None) -> bytes:
    """A PDF with known text on known pages (fpdf2); `font` a built-in name, or a .ttf of
    matplotlib's that is embedded."""
    import matplotlib
    from fpdf import FPDF

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdf = FPDF()
    pdf.set_auto_page_break(False)
    if font.endswith(".ttf"):
        pdf.add_font("embedded", fname=str(fonts / font))
        font = "embedded"
    pdf.set_font(font, size=11)
    for paragraphs in pages:
        pdf.add_page()
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
    if encrypt:
        pdf.set_encryption(**encrypt)
    return bytes(pdf.output())


def fake_upstream(seen: list[dict[str, Any]], die_after: int | None = None) -> FastAPI:
    """A tiny OpenAI-compatible server that answers from whatever context it was given
    (and, with `die_after`, drops the connection after that many streamed words)."""
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def complete(request: Request) -> Any:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("authorization")})
        words = ["China", "bought", "more", "Russian", "oil", "[1]."]
        if not body.get("stream"):
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                                 "finish_reason": "stop"}]}

        async def events() -> Any:
            for i, w in enumerate(words):
                if die_after is not None and i == die_after:
                    raise RuntimeError("upstream crashed")
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": w + (" " if i < len(words) - 1 else "")},
                                      "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# a service in its own process (to be killed): the fake model, whose batch calls (writes) sleep
# a second each, or 10 ms a text if longer, when asked, so that writes are still queued when the process dies
SERVICE = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.helpers import FakeEmbedder
from api.app import create_app, serve
from rag.settings import Settings

class Paced(FakeEmbedder):
    def encode(self, texts, batch_size=32):
        if len(texts) > 1 and sys.argv[3] == "slow":
            time.sleep(max(1.0, len(texts) / 100))
        return super().encode(texts, batch_size)

settings = Settings.model_validate_json(sys.argv[1]).model_copy(update={{"host": "127.0.0.1", "port": int(sys.argv[2])}})
serve(settings, create_app(settings, lambda name: Paced()))  # as `rag serve` runs, SIGTERM included
"""


def start_service(settings: Settings, slow_writes: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """The service in a subprocess on a free port, once it is ready: the process and its URL."""
    if settings.vector_store == "milvus":  # this process opened the Milvus Lite file (the build): let go of it
        from rag.stores.milvus.client import release_lite

        release_lite(settings.milvus_uri)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVICE.format(repo=str(REPO)), settings.model_dump_json(),
                               str(port), "slow" if slow_writes else "normal"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError("server did not start")


SEED_QUESTIONS = [json.loads(line)["question"] for line in
                  (REPO / "eval" / "questions.jsonl").read_text().splitlines() if line.strip()][:12]


def answers(settings: Settings, collection: str, embedder: FakeEmbedder) -> list[list[dict[str, Any]]]:
    """Every seed question's passages in every mode, whole (texts, offsets, scores, highlights),
    from the collection (`default`: the built corpus) as the settings open it."""
    from rag.collections import Collections
    from rag.service import retriever_for
    from rag.stores.factory import open_store

    with Collections(settings, embedder) as collections:
        store = open_store(settings, None) if collection == "default" else collections.get(collection)
        retriever = retriever_for(settings, store, embedder)
        out = []
        for question in SEED_QUESTIONS:
            for mode in ("dense", "lexical", "hybrid"):
                response = retriever.query(question, k=5, mode=mode)  # type: ignore[arg-type]
                out.append([p.model_dump() for p in response.passages])
        if collection == "default":
            store.close()
    return out


def differs(a: Any, b: Any, where: str = "") -> str | None:
    """Where `a` and `b` first differ, or None; scores to float32 tolerance: responses round
    them to 6 decimals, and a sum in another order (BM25 in a live collection and in a build,
    Milvus's inner product) may land on the other side of a rounding step."""
    if isinstance(a, float) and isinstance(b, float):
        return None if math.isclose(a, b, rel_tol=1e-6, abs_tol=2e-6) else f"{where}: {a} != {b}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys {sorted(a)} != {sorted(b)}"
        return next((d for k in a if (d := differs(a[k], b[k], f"{where}.{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := differs(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where}: {str(a)[:200]!r} != {str(b)[:200]!r}"
