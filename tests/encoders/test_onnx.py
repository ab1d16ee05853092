"""The ONNX backend: same vectors as torch, a verified export cache that survives a
crash mid-export, clear one-line errors naming the fix, and indexes that refuse a
backend whose vectors differ. The export tests load the real model (marked `model`)."""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rag.encoders import onnx_export
from rag.encoders.load import load_embedder, local_folder, resolve_model_path
from rag.errors import IndexMismatchError, ModelError
from rag.ingest.build import build_index, spec_of
from rag.settings import DEFAULT_MODEL, Settings
from rag.stores.local.store import open_local
from tests.helpers import FakeEmbedder

TEXTS = ["What was the value of trade between China and Russia in 2024?", "x", "Arctic " * 400,
         "Xi Jinping and Vladimir Putin have met more than 40 times.", "🇨🇳 \x00 é"]


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.mark.model
def test_fp32_onnx_matches_torch(export_cache: Path):
    torch_model = load_embedder(DEFAULT_MODEL, "torch")
    onnx_model = load_embedder(DEFAULT_MODEL, "onnx", export_cache, threads=1)
    assert (onnx_model.dimension, onnx_model.max_tokens) == (torch_model.dimension, torch_model.max_tokens)
    cosines = (torch_model.encode(TEXTS) * onnx_model.encode(TEXTS)).sum(axis=1)
    assert cosines.min() >= 0.9999
    assert [onnx_model.count_tokens(t) for t in TEXTS] == [torch_model.count_tokens(t) for t in TEXTS]
    batch = onnx_model.encode(TEXTS * 3, batch_size=4)  # sorted by length, padded per batch: same vectors
    assert np.allclose(batch[: len(TEXTS)], onnx_model.encode(TEXTS), atol=1e-5)


@pytest.mark.model
def test_a_half_written_export_is_redone_never_loaded(export_cache: Path):
    load_embedder(DEFAULT_MODEL, "onnx", export_cache, threads=1)
    [folder] = [p for p in (export_cache / "onnx").iterdir() if not p.name.startswith(".")]
    record = json.loads((folder / "export.json").read_text())
    with open(folder / "model.onnx", "r+b") as handle:  # a crash mid-write: the tail is garbage
        handle.seek(-100, 2)
        handle.write(b"\0" * 100)
    assert onnx_export._verified(folder, "onnx") is None
    load_embedder(DEFAULT_MODEL, "onnx", export_cache, threads=1)  # exported again
    assert json.loads((folder / "export.json").read_text())["files"] == record["files"]
    (folder / "export.json").unlink()  # killed before the record was written
    assert onnx_export._verified(folder, "onnx") is None
    load_embedder(DEFAULT_MODEL, "onnx", export_cache, threads=1)
    assert onnx_export._verified(folder, "onnx") is not None


def test_an_unwritable_cache_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(onnx_export.tempfile, "mkdtemp", refuse)
    folder = local_folder(DEFAULT_MODEL, resolve_model_path(DEFAULT_MODEL))
    with pytest.raises(ModelError) as caught:
        onnx_export.exported_model(folder, DEFAULT_MODEL, "onnx", tmp_path / "ro")
    message = str(caught.value)
    assert "Permission denied" in message and "RAG_EMBED_BACKEND=torch" in message and "\n" not in message


def test_missing_onnxruntime_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rag.encoders.onnx import OnnxEmbedder

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, as when not installed
    folder = local_folder(DEFAULT_MODEL, resolve_model_path(DEFAULT_MODEL))
    with pytest.raises(ModelError, match="needs onnxruntime.*RAG_EMBED_BACKEND=torch"):
        OnnxEmbedder(DEFAULT_MODEL, folder, tmp_path / "model.onnx")


def test_a_model_the_onnx_backend_cannot_run_is_refused(tmp_path: Path):
    from rag.encoders.onnx import _pipeline

    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    with pytest.raises(ModelError, match="also has Dense: set RAG_EMBED_BACKEND=torch"):
        _pipeline(tmp_path)


def test_unknown_backend_is_refused_by_settings():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="embed_backend"):
        Settings(embed_backend="tensorrt")  # type: ignore[arg-type]


def test_an_index_refuses_a_backend_whose_vectors_differ(settings: Settings, fake_embedder: FakeEmbedder):
    built = settings.model_copy(update={"embed_backend": "onnx-int8"})
    build_index(built, fake_embedder)
    for same_family in ("onnx-int8",):
        open_local(built.index_dir, spec_of(built.model_copy(update={"embed_backend": same_family})))
    for other in ("torch", "onnx"):
        with pytest.raises(IndexMismatchError, match="vectors: index has 'int8', settings ask for 'fp32' "
                                                     r"\(the index was embedded with backend 'onnx-int8'"):
            open_local(built.index_dir, spec_of(built.model_copy(update={"embed_backend": other})))


def test_torch_and_onnx_share_an_index(settings: Settings, fake_embedder: FakeEmbedder):
    build_index(settings.model_copy(update={"embed_backend": "torch"}), fake_embedder)
    open_local(settings.index_dir, spec_of(settings.model_copy(update={"embed_backend": "onnx"})))


def test_a_failed_export_shows_in_ready_in_one_line(built: Settings):
    def failing(name: str) -> Any:
        raise ModelError("cannot export x to ONNX (RuntimeError: unsupported op); set RAG_EMBED_BACKEND=torch")

    with TestClient(create_app(built, embedder_factory=failing), base_url="http://127.0.0.1") as c:
        r = c.get("/ready")
    assert r.status_code == 503
    assert r.json() == {"detail": "model not loaded: cannot export x to ONNX (RuntimeError: unsupported op); "
                                  "set RAG_EMBED_BACKEND=torch"}


def test_pooling_must_be_mean_or_cls_alone_and_lowercasing_is_read(tmp_path: Path):
    from rag.encoders.onnx import _pipeline

    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": true}')
    (tmp_path / "1_Pooling").mkdir()
    pooling = tmp_path / "1_Pooling" / "config.json"
    pooling.write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    assert _pipeline(tmp_path) == (128, "cls", True)
    pooling.write_text('{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}')
    with pytest.raises(ModelError, match="pools by mean_tokens \\+ max_tokens: set RAG_EMBED_BACKEND=torch"):
        _pipeline(tmp_path)
