"""Generation backends: a local Hugging Face folder, or an OpenAI-compatible HTTP endpoint."""

from .base import Backend, DecodingSettings, Generation, GenerationCache, Request, generate_cached, sample_seed

__all__ = ["Backend", "DecodingSettings", "Generation", "GenerationCache", "Request", "generate_cached",
           "sample_seed", "open_backend"]


def open_backend(spec: str, **kw):
    """``openai:URL#NAME`` -> `OpenAIBackend`; anything else is a local HF folder -> `LocalBackend`."""
    if spec.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend.from_spec(spec, **kw)
    from .local import LocalBackend

    return LocalBackend(spec, **kw)
