"""Ensembles: token-level averaging of K models (`EnsembleBackend`), voting / MBR over outputs
(`majority_vote`, `mbr_select`), and weight soups (`uniform_soup`, `latest_k` for LAWA).

Submodules import torch lazily where they need it; importing this package is cheap.
"""

from .select import majority_vote, mbr_select, select_file
from .soup import latest_k, soup, uniform_soup

__all__ = ["EnsembleBackend", "latest_k", "majority_vote", "mbr_select", "select_file", "soup", "uniform_soup"]


def __getattr__(name: str):
    if name == "EnsembleBackend":  # pulls in the local backend (transformers) only when asked for
        from .token import EnsembleBackend

        return EnsembleBackend
    raise AttributeError(name)
