"""Parsers of untrusted files run in a worker process with limits, so that a parser that
crashes (PDFium is C), exhausts memory, or runs for ever fails that document alone.

`run_limited(fn, *args, limits=...)` runs `fn(*args)` in a child of a fork server (a clean
process started once, with the parsers imported: no threads, no model, no open index of
the service are inherited) under:
- an address-space limit (RLIMIT_AS, `memory_mb`) and a CPU-time limit (RLIMIT_CPU,
  `cpu_seconds`), set in the child before it reads a byte;
- a wall timeout (`wall_seconds`), after which the parent kills it;
- a lower scheduling priority (nice 10), so that parsing yields the CPU to queries.
The caps on what a parser may give back (pages of a PDF, characters of text) are the
parser's own, passed in `limits` too. A `RagError` raised in the child is raised again in
the parent as it was; a crash, a memory or CPU overrun or a timeout is a
`ParserLimitError` naming the limit. Any future format gets the same protection by being
parsed through `run_limited` (`rag.ingest.uploads.uploaded_document` and
`rag.ingest.corpus.load_corpus` are the two ways files come in).

Example:
    run_limited(extract_pdf, data, limits=ParseLimits(memory_mb=512))  # a PdfText, or an error

Left out: seccomp or namespaces (a parser that is exploited, not only crashed, still runs
as the service's user; run the service in a container for that), and pooling of workers
(a fork of the warm server costs a few ms a document, and a fresh child per document
means no state leaks from one document to the next).
"""

import io
import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import forkserver, popen_forkserver, spawn, util
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerProcess, reduction, set_spawning_popen  # type: ignore[attr-defined]
from typing import Any, TypeVar

from rag.errors import ParserLimitError, RagError, TooLargeError
from rag.settings import Settings

T = TypeVar("T")
log = logging.getLogger("rag.ingest")
# imported once, in the server, so that no worker pays for it (a missing one is skipped)
PRELOAD = ["rag.ingest.uploads", "trafilatura", "frontmatter", "yaml", "pypdfium2"]
NICE = 10  # parsing yields the CPU to queries, which a person waits for


_DEFAULT = {name: field.default for name, field in Settings.model_fields.items()}  # one place for the numbers


@dataclass(frozen=True)
class ParseLimits:
    memory_mb: int = _DEFAULT["parse_memory_mb"]  # address space of the parser process
    cpu_seconds: int = _DEFAULT["parse_cpu_seconds"]
    wall_seconds: float = _DEFAULT["parse_wall_seconds"]
    max_pages: int = _DEFAULT["max_pdf_pages"]  # of a PDF
    max_chars: int = _DEFAULT["max_document_chars"]  # of extracted text


_started = False
_start_lock = threading.Lock()


class _Popen(popen_forkserver.Popen):
    """The fork server's Popen, without the parent's `__main__`: a worker runs a parser of
    rag.ingest and never needs the script that started the service, which multiprocessing
    would otherwise run again (as `__mp_main__`) in every worker."""

    def _launch(self, process_obj: Any) -> None:  # popen_forkserver.Popen._launch (3.11-3.13), less init_main_*
        prep_data = {key: value for key, value in spawn.get_preparation_data(process_obj._name).items()
                     if not key.startswith("init_main")}
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _Worker(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _Popen(process_obj)


def _fork_server() -> None:
    global _started
    with _start_lock:
        if not _started:
            forkserver.set_forkserver_preload(PRELOAD)
            _started = True


def run_limited(fn: Callable[..., T], *args: Any, limits: ParseLimits, what: str = "the parser") -> T:
    """`fn(*args)` in a limited worker process (the module docstring); `fn` must be a
    module-level function and its arguments and result picklable."""
    _fork_server()
    receive, send = multiprocessing.Pipe(duplex=False)
    child = _Worker(target=_child, args=(send, limits, fn, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(limits.wall_seconds):
            child.kill()
            raise ParserLimitError(f"{what} did not finish within {limits.wall_seconds:g} s (RAG_PARSE_WALL_SECONDS)")
        try:
            kind, payload = receive.recv()
        except (EOFError, OSError):  # it died before it could answer
            child.join(5)
            raise ParserLimitError(_death(what, child.exitcode, limits)) from None
    finally:
        receive.close()
        child.join(1)
        if child.is_alive():
            child.kill()
            child.join()
    if kind == "ok":
        return payload
    if kind == "error":
        raise _rebuilt(*payload)
    if kind == "memory":
        raise ParserLimitError(f"{what} ran out of memory (limit {limits.memory_mb} MB, RAG_PARSE_MEMORY_MB)")
    log.error("%s failed: %s", what, payload)
    raise ParserLimitError(f"{what} failed ({payload})")


def check_chars(text: str, limits: ParseLimits) -> None:
    """A parser's cap on the text it gives back (413)."""
    if len(text) > limits.max_chars:
        raise TooLargeError(f"the document holds {len(text)} characters of text; the limit is {limits.max_chars} "
                            "(RAG_MAX_DOCUMENT_CHARS)")


def _rebuilt(kind: type[RagError], text: str) -> RagError:
    """The child's error again, of its own class (the HTTP status follows the class)."""
    exc = kind.__new__(kind)
    Exception.__init__(exc, text)
    return exc


def parse_limits(settings: Settings) -> ParseLimits:
    return ParseLimits(memory_mb=settings.parse_memory_mb, cpu_seconds=settings.parse_cpu_seconds,
                       wall_seconds=settings.parse_wall_seconds, max_pages=settings.max_pdf_pages,
                       max_chars=settings.max_document_chars)


def _death(what: str, exitcode: int | None, limits: ParseLimits) -> str:
    if exitcode == -signal.SIGXCPU:
        return f"{what} used more than {limits.cpu_seconds} s of CPU (RAG_PARSE_CPU_SECONDS)"
    if exitcode == -signal.SIGKILL:  # past the hard CPU limit, or killed for memory by the kernel
        return (f"{what} was killed: past {limits.cpu_seconds} s of CPU or out of memory "
                f"(limits: RAG_PARSE_CPU_SECONDS, RAG_PARSE_MEMORY_MB)")
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return f"{what} crashed ({name}; memory limit {limits.memory_mb} MB, RAG_PARSE_MEMORY_MB)"
    return f"{what} stopped without an answer (exit status {exitcode})"


def _child(send: Connection, limits: ParseLimits, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    memory = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 2))  # soft: SIGXCPU
    os.nice(NICE)
    try:
        message: tuple[str, Any] = ("ok", fn(*args))
    except MemoryError:
        message = ("memory", None)
    except RagError as exc:  # sent as class and text: a subclass's __init__ may take other arguments
        message = ("error", (type(exc), str(exc)))
    except Exception as exc:  # a parser's bug fails its document, named, not the service
        message = ("bug", f"{type(exc).__name__}: {exc}")
    try:
        send.send(message)
    except MemoryError:  # the answer itself did not fit
        send.send(("memory", None))
    send.close()
