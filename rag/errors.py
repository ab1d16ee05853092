"""Domain errors. Library code raises these; only the boundaries (CLI, HTTP) translate
them into exit codes and status codes, so the library never knows about either.

Left out: error codes for i18n; every message is plain English meant for the user.
"""


class RagError(Exception):
    """Base class: anything a user can fix by changing input, settings or files."""


class CorpusError(RagError):
    """The corpus folder is missing, empty, or holds a file that cannot be read."""


class TooLargeError(CorpusError):
    """A document past a size limit: pages of a PDF, characters of extracted text (HTTP 413)."""


class ParserLimitError(CorpusError):
    """A file's parser crashed or ran past its memory, CPU or time limit; the document alone fails."""


class ModelError(RagError):
    """The embedding model cannot be found or loaded offline."""


class IndexMissingError(RagError):
    """No index has been built at the configured path."""


class IndexCorruptError(RagError):
    """Index files are unreadable or do not match their recorded checksums."""


class IndexMismatchError(RagError):
    """The index was built with other settings (model, chunker) than the current ones."""


class IndexBusyError(RagError):
    """The index changed while it was being read (a newer build went live); retry."""


class ArchiveError(RagError):
    """An archive that cannot be imported: damaged, truncated, of a newer format, or made with
    another model (the member, or the difference, is named)."""


class StorageError(RagError):
    """The index folder cannot be written or read: disk full, no permission, read-only, I/O error."""


class BadQueryError(RagError):
    """A query that cannot be answered as asked (empty question, k out of range, ...)."""


class SettingsError(RagError):
    """Settings that cannot work together (a chunk size the model cannot hold, ...)."""


class NotFoundError(RagError):
    """A document, chunk or collection that the index does not hold."""


class ConflictError(RagError):
    """A write that clashes with what is there: an existing collection, another document under the same id."""


class ReadOnlyError(RagError):
    """A write to a service that is read-only (RAG_READ_ONLY)."""


# ---- the service's own conditions (the HTTP boundary maps them to status codes)


class UnsupportedError(RagError):
    """A parameter or tool whose meaning this service cannot honour (400, naming it)."""


class QuotaError(RagError):
    """A write would take a collection past a quota (documents, bytes of text)."""


class ForbiddenError(RagError):
    """The caller's key may read this but not do what it asked (a reader that writes)."""


class NotReadyError(RagError):
    """The service has no index (or model) to answer with yet."""


class OverloadedError(RagError):
    """More questions are queued than the service will hold; the client should retry later."""


class DeadlineError(RagError):
    """A request did not finish within its deadline."""


class ReloadError(RagError):
    """A new build exists but could not be loaded; the previous one keeps serving."""


class UpstreamError(RagError):
    """The configured upstream language model failed or could not be reached."""
