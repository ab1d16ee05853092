"""Schemathesis over the app's own OpenAPI schema, against a real uvicorn server with the
fake model: every operation, valid and invalid inputs, the one check "no server error".

Bounded and replayable: `FUZZ_EXAMPLES` examples per operation and mode (default 30),
generated deterministically (Hypothesis derandomized, no example database), so a failure
seen in CI is the same failure here. `FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py` digs
deeper.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from api.app import create_app
from rag.ingest.build import build_index
from rag.settings import Settings
from tests.helpers import CORPUS, FakeEmbedder, running_server

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
# an archive to import (POST /collections/{name}/import) is raw bytes: any bytes, mostly not a tar
schemathesis.openapi.media_type("application/x-tar", st.binary(max_size=4096))


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    settings = Settings(corpus_dir=CORPUS, index_dir=root / "index", model="fake", reload_poll_seconds=0)
    fake = FakeEmbedder()
    build_index(settings, fake)
    with running_server(create_app(settings, embedder_factory=lambda name: fake)) as url:
        yield url


def schema_of_our_app() -> schemathesis.schemas.BaseSchema:
    """The schema as the app serves it; the cases are sent to `live_url`'s server."""
    app = create_app(Settings(index_dir=Path("/nonexistent-rag-index"), model="fake", reload_poll_seconds=0),
                     embedder_factory=lambda name: FakeEmbedder())
    loaded = schemathesis.openapi.from_dict(app.openapi())
    loaded.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, deterministic=True,
                                    database="none")
    return loaded


schema = schema_of_our_app()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case: schemathesis.Case, live_url: str) -> None:
    case.call_and_validate(base_url=live_url, checks=[not_a_server_error])
