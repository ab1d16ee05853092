"""What every index records about itself, whatever the backend: a JSON manifest with the
format version, the model and the chunker's parameters, checked on open against what the
settings ask for (`IndexSpec`); an index of another format or model is refused, never
read.

A manifest's build id (and a Milvus collection's tag) tells a collection from another
made under its name: `Sightings` tells whether what a process holds open is still what
the manifest on disk describes (another process may have deleted it, or deleted it and
made another), re-reading it at most every RECHECK_S.

Left out: the local store's build folders (rag.stores.local.builds), which keep the
manifest beside their files.
"""

import json
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag import __version__
from rag.errors import IndexCorruptError, IndexMismatchError, StorageError

FORMAT = "rag-index"
# how often a collection held open has its manifest re-read: a delete or re-create elsewhere is seen within it.
# rag.collections' get() costs ~0.2 us more between re-reads (1.1-1.4 us -> 1.4-1.5 us a call: timeit, best of
# 7 x 100k, 2 cores, local disk), ~23 us at one (open, read, parse a 650-byte manifest): every 0.5 s a name
RECHECK_S = 0.5


FORMAT_VERSION = 2  # 2: SQLite chunks, raw vectors, own BM25 arrays, IVF above a size


@dataclass(frozen=True)
class IndexSpec:
    """What an index must agree with to be used under the current settings."""

    model: str
    chunk_tokens: int
    chunk_overlap_tokens: int
    vectors: str = "fp32"  # the embedding backend's vector family (rag.encoders.base.VECTOR_FAMILY)

    def differences(self, manifest: dict[str, Any]) -> list[str]:
        built = {"model": manifest["model"]["name"], "vectors": manifest["model"].get("vectors", "fp32"),
                 **manifest["chunker"]}
        return [
            f"{key}: index has {built.get(key)!r}, settings ask for {value!r}"
            + (f" (the index was embedded with backend {manifest['model'].get('backend', 'torch')!r}, whose "
               "vectors differ beyond tolerance from RAG_EMBED_BACKEND's)" if key == "vectors" else "")
            for key, value in asdict(self).items() if built.get(key) != value
        ]


def new_manifest(**fields: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_id": datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
        **fields,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of one build folder (take the folder from current_build, once)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"cannot read {path}: it is missing") from exc
    except OSError as exc:
        raise storage_error("read", folder, exc) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"cannot read {path}: it holds {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path} is format {manifest.get('format')!r} v{manifest.get('format_version')}; "
            f"this version reads {FORMAT!r} v{FORMAT_VERSION}: run `rag build --force`"
        )
    return manifest


def size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def storage_error(doing: str, where: Path, exc: OSError) -> StorageError:
    """One line, e.g. `cannot write index at /srv/index: No space left on device`."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        reason += f" ({exc.filename})"
    return StorageError(f"cannot {doing} index at {where}: {reason}")


def manifest_at(folder: Path) -> dict[str, Any] | None:
    """A collection's manifest; None if it has none (deleted, or never made)."""
    try:
        return dict(json.loads((folder / "manifest.json").read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def identity(manifest: dict[str, Any]) -> str:
    """What tells a collection from another made under its name: its build id (and Milvus tag)."""
    return f"{manifest.get('build_id')}/{manifest.get('store', {}).get('tag', '')}"


class Sightings:
    """The identities of the collections (folders under `root`) a process holds open, by
    name, and when each is due to be checked against its manifest again (not thread-safe:
    its owner's lock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, tuple[str, float]] = {}

    def opened(self, name: str, manifest: dict[str, Any]) -> None:
        self._seen[name] = (identity(manifest), time.monotonic() + RECHECK_S)

    def forget(self, name: str | None = None) -> None:
        """Stop tracking `name` (None: every one)."""
        if name is None:
            self._seen.clear()
        else:
            self._seen.pop(name, None)

    def still_there(self, name: str, now: bool = False) -> bool:
        """Whether `name`'s manifest still describes what was opened: re-read when due, or
        `now` (an open revalidates a network mount's cached attributes; a stat may not)."""
        seen, due = self._seen.get(name, ("", 0.0))
        moment = time.monotonic()
        if moment < due and not now:
            return True
        manifest = manifest_at(self.root / name)
        if manifest is None or identity(manifest) != seen:
            return False
        self._seen[name] = (seen, moment + RECHECK_S)
        return True
