"""Shared fixtures: a deterministic fake embedding model and throw-away corpora/indexes.

Every test writes only under pytest's tmp_path.
"""

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.bench.serve import free_port
from rag.ingest.build import build_index
from rag.settings import Settings

# matplotlib (the eval chart) caches fonts under ~/.cache unless told otherwise: keep
# every write of the test run inside a temporary folder
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="rag-tests-mpl-"))

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
WORD = re.compile(r"\w+")


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


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A private copy of the bundled corpus that a test may edit."""
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target)
    return target


@pytest.fixture
def settings(tmp_path: Path, corpus_dir: Path) -> Settings:
    return Settings(corpus_dir=corpus_dir, index_dir=tmp_path / "index", model="fake")


@pytest.fixture
def built(settings: Settings, fake_embedder: FakeEmbedder) -> Settings:
    """Settings whose index has been built with the fake model."""
    build_index(settings, fake_embedder)
    return settings


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
