"""User-facing errors. Each message says what was wrong, where (file / key), and what to do."""


class PolymodalError(Exception):
    """Base class of every error polymodal raises on purpose."""


class ConfigError(PolymodalError, ValueError):
    """A config, recipe or override is malformed: unknown key, wrong type, unknown type name."""


class CheckpointError(PolymodalError, OSError):
    """A checkpoint directory is missing files or holds unreadable / mismatched weights."""


class DataError(PolymodalError, ValueError):
    """A dataset spec, record or file cannot be read."""


class UnsupportedTaskError(PolymodalError, NotImplementedError):
    """The loaded model cannot do the asked task (e.g. a captioner asked to answer questions)."""
