"""Shared fixtures: throw-away corpora and indexes built with the fake model, and one
TestClient of the service (`client`). Shared helpers are in tests/helpers.py.

Every test writes only under pytest's tmp_path.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import CORPUS, FakeEmbedder, client_for

# matplotlib (the eval chart) caches fonts under ~/.cache unless told otherwise: keep
# every write of the test run inside a temporary folder
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="rag-tests-mpl-"))


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


@pytest.fixture
def served_embedder() -> FakeEmbedder:
    """The fake model that `client`'s service embeds questions with (tests count its calls)."""
    return FakeEmbedder()


@pytest.fixture
def client(built: Settings, served_embedder: FakeEmbedder) -> Iterator[TestClient]:
    """The service over the built index, started and stopped around the test."""
    with client_for(built, served_embedder) as c:
        yield c
