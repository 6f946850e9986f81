"""The path every generating evaluation shares (``eval generation``, ``eval robustness``): the
``--out`` folder and its lock, the resumable generation cache, the sentence embedder, the
text scorer for perplexities, bootstrap summaries and the common part of the signature.

One place, so that resuming, the message after a failure and the summaries behave the same in
every evaluation.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..errors import SteadyError
from ..fsutil import OutDir, write_json_atomic
from .backends.base import Backend, Generation, GenerationCache, Request, generate_cached
from .prompts import PromptItem
from .result import Result, summarize_items

__all__ = ["EvalRun", "prompts_sha"]


def prompts_sha(items: Sequence[PromptItem]) -> str:
    """The first 12 hex digits of SHA-256 over the items, as the signatures name a prompt set."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it.to_json(), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:12]


class EvalRun:
    """One evaluation's folder, cache and shared tools; subclasses measure."""

    def __init__(self, backend: Backend, out: str | Path, *, bootstrap: int, cache_name: str = "cache.jsonl",
                 lock: bool = True):
        self.backend = backend
        self.bootstrap = bootstrap
        self._dir = OutDir(out, lock=lock)  # checked, created and locked only once the settings are known good
        self.out = self._dir.path
        try:
            self.cache = GenerationCache(self.out / cache_name)
        except BaseException:
            self._dir.close()
            raise
        self._embedder = None
        self._scorer = None
        self.generated = 0
        """generations asked for through `generate` (each distinct request once)"""
        self.from_cache = 0
        """of those, served from the cache"""

    def generate(self, requests: list[Request], label: str) -> list[Generation]:
        """Generate (each distinct request once), through the cache; keep what finished on failure."""
        from ..progress import make_progress

        keys = [r.key(self.backend.identity) for r in requests]
        first: dict[str, int] = {}
        uniq: list[Request] = []
        for r, k in zip(requests, keys):
            if k not in first:
                first[k] = len(uniq)
                uniq.append(r)
        n_cached = len(self.cache)
        try:
            with make_progress(transient=True) as bar:
                task = bar.add_task(label, total=len(uniq), info="")
                gens = generate_cached(self.backend, uniq, self.cache, progress=lambda n: bar.advance(task, n))
        except SteadyError as e:
            kept = len(self.cache)
            if not kept:
                raise  # nothing finished: no cache to point at (a failed start removes --out)
            raise SteadyError(f"{e} ({kept} finished generations are kept in {self.out / 'cache.jsonl'}"
                              f"{'' if kept == n_cached else f', {kept - n_cached} of them new'}; "
                              f"run the same command again to resume)") from None
        self.generated += len(gens)
        self.from_cache += sum(g.cached for g in gens)
        return [gens[first[k]] for k in keys]

    @property
    def embedder(self):
        """all-MiniLM-L6-v2, loaded on first use."""
        if self._embedder is None:
            from .consistency import Embedder

            self._embedder = Embedder()
        return self._embedder

    @property
    def scorer(self):
        """The backend's `perplexity.TextScorer` (backends that declare ``logprobs``), made on first use."""
        if self._scorer is None:
            from .perplexity import TextScorer

            b = self.backend
            self._scorer = TextScorer(b.scoring_model(), b.tokenizer, window=self.ppl_window)  # type: ignore[attr-defined]
        return self._scorer

    @property
    def ppl_window(self) -> int:
        """The window texts are scored in: the model's context, else 1024 tokens."""
        return getattr(self.backend, "context", None) or 1024

    def summarize(self, per_item: Mapping[str, Any] | Sequence[Any], signature: Mapping[str, Any] | None = None) -> Result:
        """Mean and bootstrap CI of per-item values (a mapping item id -> value, or a plain list)."""
        if not isinstance(per_item, Mapping):
            per_item = {str(i): v for i, v in enumerate(per_item)}
        return summarize_items(per_item, n_resamples=self.bootstrap, signature=signature)

    def summary(self, per_item: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
        """`summarize` as ``results.json`` writes it: ``{"mean", "ci_low", "ci_high", "n"}``."""
        return self.summarize(per_item).to_json()

    def base_signature(self, decoding: Any, samples: int) -> dict[str, Any]:
        """The signature's fields every evaluation has, in the order ``results.json`` shows them."""
        return {"steadylm": __version__, "backend": self.backend.signature(), "decoding": decoding.as_dict(),
                "samples": samples}

    @staticmethod
    def host() -> dict[str, str]:
        return {"python": platform.python_version(), "machine": platform.machine()}

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.out / "results.json", results)

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            self._dir.close()
