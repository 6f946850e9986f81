"""User-facing errors.

Every problem a user can cause (a missing file, a bad flag value, a corrupt checkpoint) is a
`SteadyError` whose message is one line naming the file, line or flag and what is wrong. The CLI
prints it as ``steadylm: error: <message>`` and exits with code 2, without a traceback.
"""

from __future__ import annotations


class SteadyError(Exception):
    """A one-line, user-facing error. The CLI maps it to exit code 2."""

    def __init__(self, message: str):
        # Keep it on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


class DataError(SteadyError):
    """Bad training or evaluation data (missing, empty, binary, malformed)."""


class ModelError(SteadyError):
    """A model folder that cannot be used (missing, not a causal LM, bad preset)."""


class CheckpointError(SteadyError):
    """A run or checkpoint that cannot be resumed (missing, incomplete, corrupt)."""


class ConfigError(SteadyError, ValueError):
    """A configuration value or flag outside its domain."""


class BackendError(SteadyError):
    """A generation backend that failed: an endpoint unreachable, refusing the key, or still
    failing after its retries."""
