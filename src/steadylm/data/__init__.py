"""Text sources, tokenizer training and packing into training blocks."""

from .sources import Corpus, load_documents, split_documents

__all__ = ["Corpus", "load_documents", "split_documents"]
