"""Domain errors. Library code raises these; only the boundaries (CLI, HTTP) translate
them into exit codes and status codes, so the library never knows about either.

Left out: error codes for i18n; every message is plain English meant for the user.
"""


class RagError(Exception):
    """Base class: anything a user can fix by changing input, settings or files."""


class CorpusError(RagError):
    """The corpus folder is missing, empty, or holds a file that cannot be read."""


class ModelError(RagError):
    """The embedding model cannot be found or loaded offline."""


class IndexMissingError(RagError):
    """No index has been built at the configured path."""


class IndexCorruptError(RagError):
    """Index files are unreadable or do not match their recorded checksums."""


class IndexMismatchError(RagError):
    """The index was built with other settings (model, chunker) than the current ones."""


class BadQueryError(RagError):
    """A query that cannot be answered as asked (empty question, k out of range, ...)."""


class SettingsError(RagError):
    """Settings that cannot work together (a chunk size the model cannot hold, ...)."""


class NotFoundError(RagError):
    """A document or chunk id that the index does not hold."""
