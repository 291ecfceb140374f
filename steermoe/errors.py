"""Errors a user can fix. The CLI prints them as one line (no traceback); each message names the file, row or key
and says what to do. Kept free of heavy imports so the CLI can catch them without loading torch."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which key and what to do."""


class ModelFolderError(FileNotFoundError):
    """A model folder is missing or holds the wrong kind of model; the message says what to do."""


class EmbeddedModelError(RuntimeError):
    """An embedded model package is missing or does not match its pinned hash."""


class DataError(ValueError):
    """A corpus or split that cannot be prepared or read; the message names the file and what to do."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says what was kept and what to do."""


class StorageError(RuntimeError):
    """A result cannot be written (a full disk, a read-only folder); the message names the folder and what was kept."""


USER_ERRORS = (ConfigError, ModelFolderError, EmbeddedModelError, DataError, TrainingError, StorageError)
