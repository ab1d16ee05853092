"""Export a sentence-transformers model to ONNX once, into a verified local cache.

    <cache_dir>/onnx/<model>-<key>-onnx/model.onnx            fp32 (torch.onnx.export, opset 17)
    <cache_dir>/onnx/<model>-<key>-onnx-int8/model-int8.onnx  weights dynamically quantised to int8
    each folder's export.json, written last: what was exported, from what, each file's sha256

`key` hashes the model folder's identity (its config files, and size and mtime of its
weight files), the torch and onnx versions, and FORMAT: another model, another copy of
it or another exporter gets another folder. An export is written into a temporary
folder and renamed into place, and `export.json` is checked on every load, so a run
killed mid-export leaves nothing that is ever loaded: the next run exports again. One
process exports at a time (a lock file in `onnx/`); one that waited finds the export done.

Why not sentence-transformers' own ONNX backend: it needs `optimum-onnx`, which pins
transformers < 4.58 and so sentence-transformers 5.x (ours is 6.x); through it, a loaded
model costs about three times the memory, still imports torch, and is slower a question
(measured: docs/benchmarks.md#onnx-export-against-sentence-transformers-onnx-backend). The export
itself does need torch and transformers, which the torch backend installs anyway.

Left out: graph optimisation passes beyond ONNX Runtime's own at load (O2/O3 measured
no faster for this model), fp16, and static (calibrated) quantisation.
"""

import fcntl
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from rag.errors import ModelError
from rag.files import fsync_path, sha256_file

FORMAT = 2  # 2: inputs follow the model (no token_type_ids for DistilBERT, MPNet)
FALLBACK = "or set RAG_EMBED_BACKEND=torch"
FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def exported_model(model_dir: Path, name: str, backend: str, cache_dir: Path) -> Path:
    """The verified ONNX file for `backend` ("onnx" or "onnx-int8"), exporting it first if
    the cache does not hold a complete one."""
    folder = cache_dir / "onnx" / f"{_slug(name)}-{_key(model_dir)}-{backend}"
    if (path := _verified(folder, backend)) is not None:
        return path
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.parent / ".lock", "w")  # noqa: SIM115 - held across the export below
    except OSError as exc:
        raise ModelError(f"cannot write the ONNX export under {folder.parent} ({exc.strerror}): set "
                         f"RAG_CACHE_DIR to a writable folder, {FALLBACK}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process exporting: wait for it
        if (path := _verified(folder, backend)) is not None:
            return path
        for stale in folder.parent.glob(".tmp-*"):  # killed exports; nobody else writes while we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        _export(model_dir, folder, backend)
    if (path := _verified(folder, backend)) is None:
        raise ModelError(f"the ONNX export in {folder} does not verify after writing it; {FALLBACK}")
    return path


def _verified(folder: Path, backend: str) -> Path | None:
    """The file, if export.json lists it and its checksum matches; else None."""
    try:
        record = json.loads((folder / "export.json").read_text())
        expected = record["files"][FILES[backend]]
        path = folder / FILES[backend]
        return path if record.get("format") == FORMAT and sha256_file(path) == expected else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _export(model_dir: Path, folder: Path, backend: str) -> None:
    """Write the export for `backend` into `folder`. Call holding the lock."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError as exc:
        raise ModelError(f"cannot write the ONNX export under {folder.parent} ({exc.strerror}): set "
                         f"RAG_CACHE_DIR to a writable folder, {FALLBACK}") from exc
    try:
        files = {"model.onnx": _export_fp32(model_dir, tmp / "model.onnx")}
        if backend == "onnx-int8":
            files = {"model-int8.onnx": _quantize(tmp / "model.onnx", tmp / "model-int8.onnx")}
            (tmp / "model.onnx").unlink()  # the int8 folder keeps what it serves, not the fp32 step
        record = {"format": FORMAT, "model_dir": str(model_dir), "files": files, **_versions()}
        (tmp / "export.json").write_text(json.dumps(record, indent=2))
        for path in tmp.iterdir():
            fsync_path(path)
        if folder.exists():  # there but not verified (checked under the lock): broken, replace it
            shutil.rmtree(folder)
        os.rename(tmp, folder)
        fsync_path(folder.parent)
    except OSError as exc:
        raise ModelError(f"cannot write the ONNX export to {folder} ({exc.strerror}): set RAG_CACHE_DIR "
                         f"to a writable folder with space, {FALLBACK}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_fp32(model_dir: Path, out: Path) -> str:
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ModelError(f"exporting to ONNX needs torch and transformers ({exc}); {FALLBACK}") from exc
    try:
        model = AutoModel.from_pretrained(str(model_dir)).eval()
    except Exception as exc:  # OSError, ValueError, HF errors: all mean "cannot load"
        raise ModelError(f"cannot load {model_dir} for the ONNX export ({type(exc).__name__}: {exc}); "
                         f"{FALLBACK}") from exc

    # DistilBERT, MPNet take no token_type_ids; RoBERTa takes them but knows only type 0
    inputs = [n for n in INPUTS if n in inspect.signature(model.forward).parameters]

    class LastHiddenState(torch.nn.Module):
        """Positional inputs, one output: what the ONNX graph exposes."""

        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(inputs, tensors))).last_hidden_state

    example = tuple((torch.zeros if n == "token_type_ids" else torch.ones)(1, 8, dtype=torch.long) for n in inputs)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*inputs, "last_hidden_state"]}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about Python bools: shapes are dynamic axes here
            torch.onnx.export(LastHiddenState(model), example, str(out), input_names=inputs,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
    except OSError:
        raise
    except Exception as exc:  # an architecture the exporter cannot trace
        raise ModelError(f"cannot export {model_dir} to ONNX ({type(exc).__name__}: {exc}); {FALLBACK}") from exc
    return sha256_file(out)


def _quantize(fp32: Path, out: Path) -> str:
    """Dynamic int8 quantisation of the weights (activations stay float at run time)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ModelError(f"int8 quantisation needs onnxruntime and onnx ({exc}); use RAG_EMBED_BACKEND=onnx "
                         f"{FALLBACK.removeprefix('or ')}") from exc
    # per channel: min cosine to fp32 0.979 on the seed corpus, against 0.602 per tensor
    root = logging.getLogger()
    quiet = logging.NullHandler()  # the quantiser logs a tip through the root logger, configuring it
    root.addHandler(quiet)
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    except OSError:
        raise
    except Exception as exc:  # an operator the quantiser does not know
        raise ModelError(f"cannot quantise the ONNX export to int8 ({type(exc).__name__}: {exc}); use "
                         f"RAG_EMBED_BACKEND=onnx {FALLBACK.removeprefix('or ')}") from exc
    finally:
        logging.disable(logging.NOTSET)
        root.removeHandler(quiet)
    return sha256_file(out)


def _key(model_dir: Path) -> str:
    """Identity of the model folder (config files by content, weights by size and mtime),
    and of the exporter."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **_versions()}, sort_keys=True).encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = str(path.relative_to(model_dir))
        stat = path.stat()
        if path.suffix == ".json" and stat.st_size < 1 << 20:
            digest.update(relative.encode() + path.read_bytes())
        else:
            digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "onnx", "onnxruntime"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/").split("/")[-1])[:60] or "model"
