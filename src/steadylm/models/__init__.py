"""Model presets and loading/saving of Hugging Face model folders."""

from .presets import PRESETS, build_model, load_model, model_context, model_hash, save_model

__all__ = ["PRESETS", "build_model", "load_model", "model_context", "model_hash", "save_model"]
