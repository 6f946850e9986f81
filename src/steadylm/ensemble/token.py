"""The token-level ensemble is a generation backend: it lives in `steadylm.evaluate.backends.ensemble`
(beside the local and OpenAI backends, behind `open_backend`). This module keeps the old import path."""

from ..evaluate.backends.ensemble import MODES, EnsembleBackend, EnsembleLM, check_same_vocabulary, parse_spec

__all__ = ["MODES", "EnsembleBackend", "EnsembleLM", "check_same_vocabulary", "parse_spec"]
