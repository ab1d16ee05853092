"""The ONNX backend: the same model run by ONNX Runtime, without torch.

Reads what sentence-transformers would from the model folder: `tokenizer.json` (the fast
tokenizer, run by `tokenizers`), `sentence_bert_config.json` (max_seq_length) and the
Pooling module's config (mean or CLS). Then:
- texts are tokenised once, truncated to the model's limit, and sorted by length, so a
  batch is padded only to its own longest member (no padding waste in a build);
- the ONNX graph gives the last hidden state; pooling and L2 normalisation are numpy.

fp32 vectors match the torch backend's to cosine >= 0.9999 (checked by `rag bench
backends`), so an index built with one serves queries encoded by the other.

Threads: `threads` intra-op threads and one inter-op thread, with spinning off: on a
2-core machine an idle thread that spins takes the core from the event loop and from
search (measured: docs/benchmarks.md#threads-spinning-and-the-load-generator). An encode
of more than one batch (a build, an upload, a re-embed) runs its batches instead on
`threads` worker threads over a second session of one intra-op thread each: the batches
need no step in lock-step, so a core taken by another process (queries being served)
stalls one worker, not all of them (docs/benchmarks.md#switching-the-model-rag-bench-reembed).
That second session is loaded on the first such encode: the model's weights twice in memory.

Left out: models whose sentence-transformers pipeline has more than Transformer ->
Pooling -> Normalize (Dense layers, prompts): they are refused with a message that
names the torch backend.
"""

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rag.encoders.base import shows_progress
from rag.errors import ModelError

FALLBACK = "set RAG_EMBED_BACKEND=torch"
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class OnnxEmbedder:
    def __init__(self, name: str, model_dir: Path, onnx_file: Path, threads: int = 1):
        try:
            import onnxruntime  # noqa: F401 (loaded by _session; here: a missing package says so first)
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelError(f"the onnx backend needs onnxruntime and tokenizers ({exc}); pip install "
                             f"onnxruntime, or {FALLBACK}") from exc
        self.name = name
        self.max_tokens, self._pooling, self._lowercase = _pipeline(model_dir)
        try:
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # missing file, or a slow-only tokenizer
            raise ModelError(f"model '{name}' has no readable tokenizer.json for the onnx backend ({exc}); "
                             f"{FALLBACK}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)
        self._counter.no_padding()
        self._counter.no_truncation()
        self._onnx_file, self.threads = onnx_file, threads
        self._session = _session(onnx_file, threads)
        self._bulk: Any = None  # the one-thread session that batches run on in parallel, loaded when first needed
        self._bulk_lock = threading.Lock()
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dimension = int(self._run([self._tokenizer.encode("dimension")]).shape[1])

    def count_tokens(self, text: str) -> int:
        """Model tokens including [CLS]/[SEP], untruncated."""
        return len(self._counter.encode(self._prepare(text)).ids)

    def _prepare(self, text: str) -> str:
        """What sentence-transformers does before its tokenizer: strip, and lowercase when
        the model's sentence_bert_config says so."""
        text = text.strip()
        return text.lower() if self._lowercase else text

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        encodings = self._tokenizer.encode_batch([self._prepare(t) for t in texts])
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))  # shortest first
        out = np.empty((len(encodings), self.dimension), dtype=np.float32)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if len(batches) < 2 or self.threads < 2:
            for rows in _progress(batches, len(texts)):
                out[rows] = self._run([encodings[i] for i in rows])
            return out
        bulk = self._bulk_session()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="onnx-batch") as workers:
            done = workers.map(lambda rows: self._run([encodings[i] for i in rows], bulk), batches)
            for rows, vectors in zip(_progress(batches, len(texts)), done):
                out[rows] = vectors
        return out

    def _bulk_session(self) -> Any:
        with self._bulk_lock:  # one load, however many threads encode at once
            if self._bulk is None:
                self._bulk = _session(self._onnx_file, 1)
            return self._bulk

    def _run(self, encodings: list[Any], session: Any = None) -> np.ndarray:
        """One model call over encodings of similar length, padded to the longest."""
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = (session or self._session).run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def model_only(self, texts: Sequence[str], batch_size: int) -> Callable[[], object]:
        """The model's own work on `texts`, tokenised and sorted by length outside it, to
        time against the build's path (`rag bench serve`)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        encodings.sort(key=lambda e: len(e.ids))
        return lambda: [self._run(encodings[i:i + batch_size]) for i in range(0, len(encodings), batch_size)]


def _session(onnx_file: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a damaged file is caught by the export's checksum first
        raise ModelError(f"ONNX Runtime cannot load {onnx_file} ({exc}); {FALLBACK}") from exc


def _pipeline(model_dir: Path) -> tuple[int, str, bool]:
    """(max_seq_length, pooling, lowercase) from the sentence-transformers files of the folder."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((model_dir / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise ModelError(f"{model_dir} is not a sentence-transformers folder the onnx backend can read ({exc}); "
                         f"{FALLBACK}") from exc
    if unsupported := [k for k in kinds if k not in SUPPORTED_MODULES]:
        raise ModelError(f"the onnx backend runs Transformer, Pooling and Normalize only; this model also has "
                         f"{', '.join(unsupported)}: {FALLBACK}")
    modes = [k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if modes not in (["mean_tokens"], ["cls_token"]):
        raise ModelError(f"the onnx backend pools by mean or by CLS token alone; this model pools by "
                         f"{' + '.join(modes) or 'nothing it names'}: {FALLBACK}")
    mode = "mean" if modes == ["mean_tokens"] else "cls"
    return int(config.get("max_seq_length") or 512), mode, bool(config.get("do_lower_case"))


def _progress(batches: list[list[int]], total: int) -> Any:
    if not shows_progress(total):
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc="Batches", unit="batch")
