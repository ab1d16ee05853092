"""What a vector store keeps beside its collection, shared by api.routes.vector_stores and
api.routes.vector_store_files: the store id <-> collection name, `vector_store.json` (display
name, metadata, creation time, files that failed), OpenAI's limits on metadata and
attributes, and the writes the engine tracks.

Left out: locking of its own; `vector_store.json` is written on the engine's writer
thread only, by temporary file and rename.
"""

import json
import math
import re
import secrets
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from api.engine.lifecycle import Engine
from api.openai.objects import FileCounts, VectorStore
from rag.collections import DEFAULT, NAME, Collections
from rag.errors import BadQueryError, ConflictError, NotFoundError, StorageError
from rag.files import replace_text

SIDECAR = "vector_store.json"
MAX_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512  # OpenAI's limits on metadata and attributes


# ------------------------------------------------------------------ filters over attributes

def check_pairs(pairs: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if not pairs:
        return {}
    if len(pairs) > MAX_PAIRS:
        raise BadQueryError(f"{what}: at most {MAX_PAIRS} keys, got {len(pairs)}")
    for key, value in pairs.items():
        if not key or len(key) > MAX_KEY:
            raise BadQueryError(f"{what}: keys are 1-{MAX_KEY} characters, got {key[:80]!r}")
        if isinstance(value, str) and len(value) > MAX_VALUE:
            raise BadQueryError(f"{what}.{key}: values are at most {MAX_VALUE} characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadQueryError(f"{what}.{key}: numbers must be finite")
    return dict(pairs)


# ------------------------------------------------------------------ vector stores

def collection_of(engine: Engine, store_id: str) -> str:
    """The collection behind `vs_<name>`; an unknown id is a 404."""
    name = store_id[3:] if store_id.startswith("vs_") else ""
    if not NAME.fullmatch(name) or name not in engine.live_collections().names():
        raise NotFoundError(f"no vector store with id '{store_id}'")
    return name


def derive_name(name: str, taken: set[str]) -> str:
    """A collection name from a store's name: 'Field Notes (2024)' -> 'field-notes-2024';
    a short random suffix when it is empty or taken."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    base = re.sub(r"[^a-z0-9_-]+", "-", ascii_name).strip("-_")[:55].strip("-_")
    candidate = base
    while not candidate or candidate in taken or candidate == DEFAULT:
        candidate = f"{base or 'store'}-{secrets.token_hex(3)}"
    return candidate


def read_sidecar(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {SIDECAR} of collection '{folder.name}': {exc}") from exc
    return data if isinstance(data, dict) else {}


def save_sidecar(folder: Path, data: dict[str, Any]) -> None:
    try:
        replace_text(folder / SIDECAR, json.dumps(data, ensure_ascii=False, indent=1))
    except OSError as exc:
        raise StorageError(f"cannot write {SIDECAR} of collection '{folder.name}': {exc}") from exc


def writable(collections: Collections, name: str) -> Path:
    """The collection's folder, on the writer thread: it exists and is not the built corpus."""
    if name == DEFAULT:
        raise ConflictError("vs_default is the built corpus: change the corpus folder and run `rag build`, "
                            "or write to another vector store")
    collections.get(name)  # NotFoundError once deleted
    return collections.root / name


def created_at_of(engine: Engine, name: str, info: dict[str, Any]) -> int:
    if "created_at" in info:
        return int(info["created_at"])
    marker = (engine.settings.index_dir / "CURRENT" if name == DEFAULT
              else engine.live_collections().root / name / "manifest.json")
    try:
        return int(marker.stat().st_mtime)
    except OSError:
        return 0


def vector_bytes(engine: Engine, chunks: int) -> int:
    return chunks * (engine.embedder.dimension if engine.embedder is not None else 0) * 4


def failures(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    return read_sidecar(engine.live_collections().root / name).get("failed", {}) if name != DEFAULT else {}


def writes_of(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    """The collection's writes the engine tracks (engine.pending), by doc_id: in_progress or failed."""
    return {doc_id: state for (collection, doc_id), state in engine.pending.items()
            if collection == name and state["status"] != "completed"}


def store_object(engine: Engine, name: str) -> VectorStore:
    store = engine.retriever_of(name).store
    info = read_sidecar(engine.live_collections().root / name) if name != DEFAULT else {}
    writes = writes_of(engine, name)
    running = {f for f, state in writes.items() if state["status"] == "in_progress"}
    failed_ids = (set(info.get("failed", {})) | {f for f, s in writes.items() if s["status"] == "failed"}) - running
    in_progress = len(running)
    completed = len(store.documents) - sum(1 for f in running if f in store.documents)
    failed = sum(1 for f in failed_ids if f not in store.documents)
    return VectorStore(id=f"vs_{name}", created_at=created_at_of(engine, name, info), name=info.get("name") or name,
                       usage_bytes=vector_bytes(engine, store.count()), metadata=info.get("metadata") or {},
                       file_counts=FileCounts(in_progress=in_progress, completed=completed, failed=failed,
                                              total=in_progress + completed + failed))
