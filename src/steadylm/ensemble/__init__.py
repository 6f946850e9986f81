"""Weight soups (`uniform_soup`, `latest_k` for LAWA), and `EnsembleBackend` under its old name.

The token-level ensemble is a backend (`steadylm.evaluate.backends.ensemble`, ``ensemble:`` specs of
`open_backend`); choosing one output by vote or MBR is evaluation (`steadylm.evaluate.select`).
Submodules import torch lazily where they need it; importing this package is cheap.
"""

from .soup import latest_k, soup, uniform_soup

__all__ = ["EnsembleBackend", "latest_k", "soup", "uniform_soup"]


def __getattr__(name: str):
    if name == "EnsembleBackend":  # pulls in the local backend (transformers) only when asked for
        from ..evaluate.backends.ensemble import EnsembleBackend

        return EnsembleBackend
    raise AttributeError(name)
