"""One small exception hierarchy; each error carries the process exit code the CLI returns.

Exit codes are part of the CLI contract (see README): 0 success, 1 gate failed, 2 bad input,
3 a required backend/runtime is missing on this machine, 4 internal error (a bug), 5 an exported
artifact or engine disagrees numerically with the PyTorch model it came from.
"""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class of every error edgecompress raises on purpose."""

    exit_code = 2


class ConfigError(EdgeCompressError):
    """A recipe, target profile or CLI option is invalid (names the key/file at fault)."""


class DataError(EdgeCompressError):
    """A dataset file is missing, unreadable or has the wrong shape/labels."""


class ModelError(EdgeCompressError):
    """A model or checkpoint cannot be loaded, or does not fit the data."""


class ParityError(EdgeCompressError):
    """An exported artifact disagrees with the PyTorch model it came from.

    Not "bad input" (exit 2): the recipe, data and model were accepted; a backend computed
    something else than the model it was exported from (a kernel's numerics, an exporter bug).
    Its own exit code lets CI tell the two apart.
    """

    exit_code = 5


class RunDirError(EdgeCompressError):
    """The output directory belongs to another run, or is otherwise unusable."""


class BackendUnavailable(EdgeCompressError):
    """A runtime needed by a backend is not installed or not usable on this machine."""

    exit_code = 3


class GateFailure(EdgeCompressError):
    """The accuracy/latency gate rejected the result (the report is still written)."""

    exit_code = 1
