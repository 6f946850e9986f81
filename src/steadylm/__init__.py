"""steadylm: keep large language models steady, and prove it with numbers.

The package imports lazily: ``import steadylm`` costs almost nothing, so the CLI starts fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
