"""Generation backends: a local Hugging Face folder, or an OpenAI-compatible HTTP endpoint."""

from .base import Backend, DecodingSettings, Generation, GenerationCache, Request, generate_cached, sample_seed

__all__ = ["Backend", "DecodingSettings", "Generation", "GenerationCache", "Request", "generate_cached",
           "sample_seed", "open_backend"]


def open_backend(spec: str, **kw):
    """``openai:URL#NAME`` -> `OpenAIBackend`; ``ensemble:DIR1,DIR2[#prob|#logprob]`` ->
    `steadylm.ensemble.token.EnsembleBackend` (token-level average of local folders); anything
    else is a local HF folder -> `LocalBackend`."""
    if spec.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend.from_spec(spec, **kw)
    if spec.startswith("ensemble:"):
        from ...ensemble.token import EnsembleBackend, parse_spec

        paths, mode = parse_spec(spec)
        return EnsembleBackend(paths, mode=mode, **kw)
    from .local import LocalBackend

    return LocalBackend(spec, **kw)
