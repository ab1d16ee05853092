"""`rag reembed` with real models (rag.portable.reembed): the bundled all-MiniLM-L6-v2 moves
from `onnx` to `onnx-int8` (another vector family), and to a 64-d sentence-transformers
model the test builds with random weights (nothing downloads); and the acceptance check:
a `rag reembed` killed mid-way under a serving `rag serve`, then run again, completes the
switch while every query is answered. Marked `model` (the kill test also `slow`).

Every test writes only under tmp_path, except the ONNX exports, which go where other model
tests keep them (the user's RAG_CACHE_DIR, ~/.cache/rag by default): exported once.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rag.collections import Collections, text_document
from rag.encoders.base import VECTOR_FAMILY, Embedder
from rag.encoders.load import embedder_from, load_embedder, local_folder, resolve_model_path
from rag.ingest.build import build_index
from rag.ingest.chunk import embed_input
from rag.jobs import Jobs
from rag.portable.reembed import reembed
from rag.service import retriever_for
from rag.settings import Settings
from tests.helpers import REPO, article, differs

pytestmark = pytest.mark.model

TOPICS = ["penguins", "volcanoes", "glaciers", "krill", "ferries", "harbours"]


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    """The default model on the default backend (onnx)."""
    return embedder_from(Settings())


@pytest.fixture(scope="module")
def int8() -> Embedder:
    settings = Settings()
    return load_embedder(settings.model, "onnx-int8", settings.cache_dir, settings.embed_threads)


def settings_in(folder: Path, **update: Any) -> Settings:
    (folder / "corpus").mkdir(parents=True, exist_ok=True)
    return Settings(corpus_dir=folder / "corpus", index_dir=folder / "index").model_copy(update=update)


def fill(collections: Collections, name: str, topics: list[str]) -> None:
    collections.create(name)
    for topic in topics:
        collections.upsert(name, text_document(article(topic), topic, None, None), replace=False)


def passages(collections: Collections, name: str, question: str, mode: str = "hybrid") -> list[dict[str, Any]]:
    kb = collections.get(name)
    response = retriever_for(collections.settings, kb, collections.embedder_of(kb)).query(question, k=4, mode=mode)  # type: ignore[arg-type]
    return [p.model_dump() for p in response.passages]


def cosines(kb: Any, embedder: Embedder, batch_size: int) -> np.ndarray:
    """Each stored chunk and sentence vector against what `embedder` gives for its text,
    embedded as a build embeds a group of documents: the chunks' inputs in one call, the
    sentences in another (int8's activations are quantised per batch: a text's vector
    depends on the texts it is embedded with, to cosine ~0.99)."""
    with kb.snapshot() as snap:
        docs = {d.doc_id: d for d, _ in snap.documents()}
        chunks = [(c, v) for records, vectors in snap.chunks(10_000) for c, v in zip(records, vectors)]
        sentences = [(s, v) for records, vectors in snap.sentences(10_000) for s, v in zip(records, vectors)]
    inputs = [embed_input(str(docs[c.doc_id].metadata["title"]), c.section, c.text) for c, _ in chunks]
    texts = [docs[s.doc_id].text[s.char_start:s.char_end] for s, _ in sentences]
    stored = np.stack([v for _, v in chunks + sentences])
    expected = np.concatenate([embedder.encode(inputs, batch_size), embedder.encode(texts, batch_size)])
    return np.sum(stored * expected, axis=1)


def test_onnx_to_onnx_int8_another_vector_family(tmp_path: Path, fp32: Embedder, int8: Embedder):
    settings = settings_in(tmp_path)
    assert (settings.model, settings.embed_backend) == ("all-MiniLM-L6-v2", "onnx")
    with Collections(settings, fp32) as collections:
        fill(collections, "notes", TOPICS)
        before = passages(collections, "notes", "What matters about krill?", "dense")
        done = reembed(collections, "notes", None, "onnx-int8")
        assert (done.model, done.backend, done.documents, done.embedded) == ("all-MiniLM-L6-v2", "onnx-int8", 6, 6)
        kb = collections.get("notes")
        model = kb.manifest["model"]
        assert (model["name"], model["backend"], model["vectors"]) == ("all-MiniLM-L6-v2", "onnx-int8",
                                                                       VECTOR_FAMILY["onnx-int8"]) != (
            "all-MiniLM-L6-v2", "onnx-int8", VECTOR_FAMILY["onnx"])
        assert "reembed" not in kb.manifest and kb.manifest["reembedded_from"]["model"]["backend"] == "onnx"
        assert [p.name for p in kb.folder.glob("*.sqlite")] == [kb.manifest["store"]["database"]]  # old ones gone
        for topic in TOPICS:
            assert passages(collections, "notes", f"What do experts say about {topic} policy?", "dense")[0][
                "citation"]["doc_id"] == topic
        after = passages(collections, "notes", "What matters about krill?", "dense")
        assert after[0]["citation"]["doc_id"] == "krill" and differs(after, before) is not None  # another model
        found = cosines(kb, int8, settings.embed_batch_size)
        assert len(found) > 6 * 6 and found.min() >= 0.9999, found.min()  # chunks and sentences: the int8 model's
        assert cosines(kb, fp32, settings.embed_batch_size).min() < 0.999  # not the fp32 model's
    with Collections(settings, fp32) as reopened:  # another process: the collection keeps its own model
        kb = reopened.get("notes")
        assert reopened.embedder_of(kb).name == "all-MiniLM-L6-v2"
        assert passages(reopened, "notes", "What matters about krill?", "dense") == after


def tiny_model(folder: Path) -> Path:
    """A 64-d sentence-transformers model with random (seeded) weights and the default
    model's tokenizer, saved to `folder`: built here, nothing downloads."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:  # sentence-transformers 6; 5 has them in `models` only
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    default = local_folder("all-MiniLM-L6-v2", resolve_model_path("all-MiniLM-L6-v2"))
    tokenizer = AutoTokenizer.from_pretrained(str(default))
    torch.manual_seed(25)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=128))
    raw = folder / "bert"
    bert.save_pretrained(str(raw))
    tokenizer.save_pretrained(str(raw))
    transformer = Transformer(str(raw), max_seq_length=256)  # as the default model's: the same chunks
    model = SentenceTransformer(modules=[transformer, Pooling(64)], device="cpu")
    model.save(str(folder / "tiny"))
    return folder / "tiny"


def test_to_a_local_64d_sentence_transformers_model(tmp_path: Path, fp32: Embedder):
    path = tiny_model(tmp_path / "model")
    questions = [f"What do experts say about {topic} policy?" for topic in TOPICS] + ["energy and security"]
    settings = settings_in(tmp_path / "moved")
    with Collections(settings, fp32) as collections:
        fill(collections, "notes", TOPICS)
        before = passages(collections, "notes", questions[0])
        done = reembed(collections, "notes", str(path), "torch")
        assert (done.model, done.backend, done.embedded) == (str(path), "torch", 6)
        kb = collections.get("notes")
        assert (kb.manifest["model"]["name"], kb.manifest["model"]["backend"]) == (str(path), "torch")
        assert kb.manifest["model"]["dimension"] == 64 and collections.embedder_of(kb).dimension == 64
        moved = {(q, mode): passages(collections, "notes", q, mode) for q in questions
                 for mode in ("dense", "lexical", "hybrid")}
        assert all(moved.values()) and moved[(questions[0], "hybrid")] != before
    direct_settings = settings_in(tmp_path / "direct", model=str(path), embed_backend="torch")
    with Collections(direct_settings, load_embedder(str(path), "torch")) as direct:  # made with it from the start
        fill(direct, "notes", TOPICS)
        for (question, mode), got in moved.items():  # scores to 1e-5: the texts were batched otherwise
            assert differs(scaled(got), scaled(passages(direct, "notes", question, mode)), f"{mode} {question!r}") \
                is None


def scaled(found: Any) -> Any:
    """`found` with every float scaled down 5x: `differs` then compares them to ~1e-5 (torch
    pads a batch to its longest text, so a text's vector moves in the 7th digit with the
    texts it was embedded with: a build embeds a group together, an upsert one document)."""
    if isinstance(found, float):
        return found / 5
    if isinstance(found, dict):
        return {k: scaled(v) for k, v in found.items()}
    if isinstance(found, list):
        return [scaled(v) for v in found]
    return found


# ---------------------------------------------------------------- the acceptance check

DOCUMENTS = 200
NAME = "moving"


def topic_of(i: int) -> str:
    return f"subject {i:03d}"


def question_of(i: int) -> str:
    return f"What do experts say about {topic_of(i % DOCUMENTS)} policy number {i % 7}? ({i})"


def rag(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", *args]


class Asker:
    """Sends /query for the collection without pause, each question new; records failures."""

    def __init__(self, url: str):
        self.url, self.sent, self.failures = url, 0, list[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                question = question_of(self.sent)
                self.sent += 1
                try:
                    r = http.get("/query", params={"q": question, "collection": NAME, "k": 3})
                    if r.status_code != 200 or not r.json()["passages"]:
                        self.failures.append(f"{question!r}: {r.status_code} {r.text[:300]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{question!r}: {exc!r}")

    def __enter__(self) -> "Asker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def served(http: httpx.Client, questions: list[str]) -> list[list[tuple[str, float]]]:
    """The service's dense passages (chunk, score) for each question."""
    out = []
    for question in questions:
        r = http.get("/query", params={"q": question, "collection": NAME, "k": 5, "mode": "dense"})
        assert r.status_code == 200, r.text
        out.append([(p["chunk_id"], p["score"]) for p in r.json()["passages"]])
    return out


def in_process(settings: Settings, embedder: Embedder, questions: list[str]) -> list[list[tuple[str, float]]]:
    """The same from a retriever in this process, over the collection, encoding with `embedder`."""
    with Collections(settings, embedder) as collections:
        retriever = retriever_for(settings, collections.get(NAME), embedder)
        return [[(p.chunk_id, p.score) for p in retriever.query(q, k=5, mode="dense").passages] for q in questions]


def same(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> bool:
    """The same passages, scores within 1e-4 (another process's ONNX Runtime threads may sum in
    another order; fp32 and int8 scores differ by ~1e-2)."""
    return [[c for c, _ in one] for one in a] == [[c for c, _ in one] for one in b] and all(
        abs(x - y) <= 1e-4 for one, other in zip(a, b) for (_, x), (_, y) in zip(one, other))


@pytest.mark.slow
def test_a_killed_reembed_resumes_and_no_query_fails(tmp_path: Path, fp32: Embedder, int8: Embedder):
    from rag.bench.server import start_server, wait_ready

    settings = settings_in(tmp_path)
    build_index(settings, fp32, documents=[text_document(article(t), t, None, None) for t in TOPICS[:2]])
    with Collections(settings, fp32) as collections:  # enough documents that the re-embed takes seconds
        collections.create(NAME)
        for i in range(DOCUMENTS):
            doc = text_document(article(topic_of(i), paragraphs=6 + i % 5), f"doc-{i:03d}", None, None)
            collections.upsert(NAME, doc, replace=False)
    probes = [question_of(i) for i in (3, 77, 151)]
    old_answers = in_process(settings, fp32, probes)
    env = {**os.environ, "RAG_INDEX_DIR": str(settings.index_dir), "RAG_CORPUS_DIR": str(settings.corpus_dir),
           "PYTHONPATH": str(REPO)}
    command = rag("reembed", "--collection", NAME, "--backend", "onnx-int8")

    launched = time.perf_counter()
    server, url = start_server(settings.index_dir, 60.0, {"RAG_CORPUS_DIR": str(settings.corpus_dir)},
                               log=tmp_path / "serve.log")
    try:
        wait_ready(url, server, launched)
        with httpx.Client(base_url=url, timeout=30) as http, Asker(url) as asker:
            assert same(served(http, probes), old_answers)

            # the first run, killed once its job shows progress, short of the end
            first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            seen: dict[str, Any] = {}
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and first.poll() is None:
                ready = http.get("/ready").json()
                mine = [r for r in ready["reembeds"] if r["collection"] == NAME]
                if mine and 0 < mine[0]["done"] < (mine[0]["total"] or 0):
                    seen = {**mine[0], "models": ready["models"], "rss_mb": ready["rss_mb"]}
                    break
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            out, err = first.communicate(timeout=30)  # reaped: its pid is gone, its job orphaned
            assert seen, f"no progress seen before the run ended ({first.returncode}): {err.decode()[-2000:]}"
            assert (seen["model"], seen["backend"], seen["state"]) == ("all-MiniLM-L6-v2", "onnx-int8", "running")
            assert seen["total"] == DOCUMENTS and seen["rate"] > 0 and seen["seconds_left"] is not None, seen
            assert seen["rss_mb"] > 0 and seen["models"][0] == {"model": "all-MiniLM-L6-v2", "backend": "onnx",
                                                                "loaded_mb": None}

            # meanwhile: the old model serves, the re-embed is listed as stalled
            manifest = json.loads((settings.index_dir / "collections" / NAME / "manifest.json").read_text())
            assert manifest["model"]["backend"] == "onnx" and manifest["reembed"]["manifest"]["model"][
                "backend"] == "onnx-int8"
            time.sleep(1.0)  # past RECHECK_S: the service has seen the manifest as it is now
            assert same(served(http, probes), old_answers)
            listing = subprocess.run(rag("collections"), env=env, capture_output=True, text=True, timeout=120)
            assert listing.returncode == 0, listing.stderr
            assert "re-embedding to all-MiniLM-L6-v2 (onnx-int8): stalled, " in listing.stdout, listing.stdout
            stalled = [r for r in http.get("/ready").json()["reembeds"] if r["collection"] == NAME]
            assert [r["state"] for r in stalled] == ["stalled"]

            # the same command again: it resumes and completes the switch
            second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            progress = []  # what /ready says of it meanwhile
            deadline = time.monotonic() + 300
            while second.poll() is None and time.monotonic() < deadline:
                progress += [r for r in http.get("/ready").json()["reembeds"] if r["collection"] == NAME]
                time.sleep(0.1)
            out, err = second.communicate(timeout=300)
            assert second.returncode == 0, err[-3000:]
            assert "resuming the re-embed" in err, err
            summary = out.strip().splitlines()[-1]  # "moving: model (backend), N documents, E embedded ..."
            embedded = int(summary.split(" documents, ")[1].split()[0])
            assert f"{DOCUMENTS} documents" in summary and 0 < embedded <= DOCUMENTS - seen["done"], summary
            assert all(r["rate"] is None or r["rate"] >= 0 for r in progress), progress
            manifest = json.loads((settings.index_dir / "collections" / NAME / "manifest.json").read_text())
            assert (manifest["model"]["backend"], manifest["model"]["vectors"]) == ("onnx-int8", "int8")
            assert "reembed" not in manifest
            assert sorted(p.name for p in (settings.index_dir / "collections" / NAME).glob("*.sqlite")) == [
                manifest["store"]["database"]]  # the old vectors are gone
            assert not [r for r in http.get("/ready").json()["reembeds"] if r["collection"] == NAME]
            assert [j.state for j in Jobs(settings.index_dir).list() if j.kind == "reembed"] == ["succeeded"]
            time.sleep(2.0)  # queries on the new model too
            asker.stop()
            assert asker.sent > 100 and not asker.failures, (
                f"{asker.sent} queries sent, {len(asker.failures)} failed: {asker.failures[:5]}")
            print(f"{asker.sent} queries sent during the switch, none failed")

            # after the cutover the service answers with the new model: as an in-process retriever with it
            # (compared alone: int8 quantises a batch's activations together, so a question's vector
            # moves, to cosine ~0.99, with the questions the service batches it with)
            new_answers = in_process(settings, int8, probes)
            assert not same(new_answers, old_answers)
            assert same(served(http, probes), new_answers)
            models = http.get("/ready").json()["models"]
            assert [(m["model"], m["backend"]) for m in models] == [("all-MiniLM-L6-v2", "onnx"),
                                                                    ("all-MiniLM-L6-v2", "onnx-int8")]
            assert models[1]["loaded_mb"] is not None, models
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
