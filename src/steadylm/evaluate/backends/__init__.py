"""Generation backends: a local Hugging Face folder, an OpenAI-compatible HTTP endpoint, or a
token-level ensemble of local folders, each declaring its `Capabilities`.

The backends sit below the metrics: they import data, models and the ground floor, never an
evaluation module (``tests/test_layering.py``)."""

from .base import (Backend, Capabilities, DecodingSettings, Generation, GenerationCache, Request, generate_cached,
                   sample_seed)

__all__ = ["Backend", "Capabilities", "DecodingSettings", "Generation", "GenerationCache", "Request",
           "generate_cached", "sample_seed", "open_backend"]


def open_backend(spec: str, **kw):
    """``openai:URL#NAME`` -> `OpenAIBackend`; ``ensemble:DIR1,DIR2[#prob|#logprob]`` ->
    `EnsembleBackend` (token-level average of local folders); anything else is a local HF folder
    -> `LocalBackend`. Each is imported only when asked for."""
    if spec.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend.from_spec(spec, **kw)
    if spec.startswith("ensemble:"):
        from .ensemble import EnsembleBackend

        return EnsembleBackend.from_spec(spec, **kw)
    from .local import LocalBackend

    return LocalBackend(spec, **kw)
