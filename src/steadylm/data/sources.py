"""Read documents from the built-in corpus, ``.txt`` files, folders of them, or JSONL.

A *document* is the unit of splitting and of perplexity evaluation: one ``.txt`` file, one JSONL
line's ``text`` field, or one topic of the built-in corpus.

Built-in sources (no download, present in every Python):

* ``builtin:pydoc`` - CPython's ``pydoc_data.topics``: about 465 KB of English prose, one
  document per help topic, in sorted topic order.
* ``builtin:stdlib-code`` - Python source code: the running interpreter's own standard library
  (``sysconfig.get_paths()["stdlib"]``), one document per ``.py`` file. Test folders (``test``,
  ``tests``, ``idle_test``), ``site-packages``, ``__pycache__`` and the generated codec tables of
  ``encodings`` are skipped; of the remaining files between 1 byte and 40 KB, sorted by their
  ``/``-separated path, ``STDLIB_CODE_FILES`` (150) are taken at evenly spaced positions (about
  1.5 MB, loads in well under a second, and spread over the packages instead of the first few).
  The subset depends on the Python version (``eval robustness`` signatures record it). A
  domain-shift set for models trained on prose (``eval robustness --ood builtin:stdlib-code``).

Every input is checked before any work starts: a missing path, an empty file or folder, NUL bytes,
text that is not UTF-8, a JSONL line that is not a JSON object with a string ``text`` field, a FIFO
or device instead of a file, an over-long line, JSON nested absurdly deep or holding lone surrogates
- each is a `DataError` naming the file (and line); the reading itself is `steadylm.io`'s.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..io import iter_jsonl, read_text

BUILTINS = ("builtin:pydoc", "builtin:stdlib-code")

#: files ``builtin:stdlib-code`` takes, and the largest file size it considers (bytes)
STDLIB_CODE_FILES = 150
STDLIB_CODE_MAX_BYTES = 40_000
_STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"})


@dataclass(frozen=True)
class Corpus:
    """Documents with the name of where they came from."""

    name: str
    documents: list[str]

    def __len__(self) -> int:
        return len(self.documents)


def _builtin(name: str) -> list[str]:
    if name == "builtin:pydoc":
        from pydoc_data.topics import topics

        docs = [topics[k].strip() for k in sorted(topics)]
        return [d for d in docs if d]
    if name == "builtin:stdlib-code":
        return _stdlib_code()
    raise DataError(f"unknown built-in source {name!r}; known: {', '.join(BUILTINS)}")


def stdlib_code_files() -> list[Path]:
    """The standard-library files of ``builtin:stdlib-code``, in document order."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"builtin:stdlib-code: the standard library folder {root} is missing")
    found: list[tuple[str, Path]] = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP_DIRS]
        for f in files:
            if f.endswith(".py"):
                p = Path(here) / f
                try:
                    size = p.stat().st_size
                except OSError:
                    continue
                if 0 < size <= STDLIB_CODE_MAX_BYTES:
                    found.append((p.relative_to(root).as_posix(), p))
    found.sort()
    if not found:
        raise DataError(f"builtin:stdlib-code: no Python source files under {root}")
    n = min(STDLIB_CODE_FILES, len(found))
    step = len(found) / n
    return [found[int(i * step)][1] for i in range(n)]


def _stdlib_code() -> list[str]:
    docs = []
    for p in stdlib_code_files():
        try:
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # an unreadable or non-UTF-8 file: leave it out rather than fail a built-in source
        if text.strip() and "\x00" not in text:
            docs.append(text.removeprefix("\ufeff"))
    return docs


def _read_jsonl(path: Path) -> list[str]:
    docs: list[str] = []
    for i, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object with a 'text' field")
        if "text" not in obj:
            raise DataError(f"{path}:{i}: no 'text' field")
        if not isinstance(obj["text"], str):
            raise DataError(f"{path}:{i}: 'text' must be a string, got {type(obj['text']).__name__}")
        if obj["text"].strip():
            docs.append(obj["text"])
    return docs


def load_documents(source: str) -> Corpus:
    """Load the documents of ``source``; raise `DataError` on anything unusable."""
    if source.startswith("builtin:"):
        return Corpus(source, _builtin(source))
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{source}: folder has no .txt files")
        docs = [t for t in (read_text(p) for p in files) if t.strip()]
    elif path.suffix.lower() in (".jsonl", ".json"):
        docs = _read_jsonl(path)
    else:
        text = read_text(path)
        docs = [text] if text.strip() else []
    if not docs:
        raise DataError(f"{source}: empty (no non-blank text)")
    return Corpus(str(source), docs)


def content_bucket(doc: str) -> float:
    """A stable number in [0, 1) from a document's content (independent of order and seed)."""
    h = hashlib.sha256(doc.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_documents(corpus: Corpus, val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by document content hash: the same document always lands on the
    same side, whatever the order of the files. At least one document goes to each side."""
    if len(corpus) < 2:
        raise DataError(f"{corpus.name}: needs at least 2 documents to split into train and validation, has {len(corpus)}")
    order = sorted(range(len(corpus)), key=lambda i: content_bucket(corpus.documents[i]))
    n_val = min(len(corpus) - 1, max(1, round(len(corpus) * val_fraction)))
    val_idx = set(order[:n_val])
    train = [d for i, d in enumerate(corpus.documents) if i not in val_idx]
    val = [d for i, d in enumerate(corpus.documents) if i in val_idx]
    return train, val


def degrade_documents(docs: list[str], *, corrupt: float = 0.0, duplicate: float = 0.0, seed: int = 0) -> list[str]:
    """A training set made worse on purpose, to measure how a recipe copes with bad data.

    ``corrupt``: that share of the documents (chosen with ``seed``) has its characters shuffled -
    the same characters, no structure left (noise a scraper lets through). ``duplicate``: that
    share is appended once more (near-duplicate pages). Deterministic; the order of the untouched
    documents is kept, so 0 and 0 return ``docs`` unchanged."""
    import random

    if not corrupt and not duplicate:
        return list(docs)
    rng = random.Random(f"degrade:{seed}")
    n = len(docs)
    out = list(docs)
    for i in sorted(rng.sample(range(n), round(n * corrupt))):
        chars = list(out[i])
        rng.shuffle(chars)
        out[i] = "".join(chars)
    out += [out[i] for i in sorted(rng.sample(range(n), round(n * duplicate)))]
    return out
