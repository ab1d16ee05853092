"""The compose file is safe by default: the API needs a key, and Milvus is reached only on
the compose network (its port is not published)."""

import yaml

from tests.helpers import REPO


def test_compose_sets_a_key_and_publishes_no_milvus_port():
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "ports" not in services["milvus"]
    key = services["api"]["environment"]["RAG_API_KEY"]
    assert key.startswith("${RAG_API_KEY:?")  # compose refuses to start without one
