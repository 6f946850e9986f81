"""Reference-based metrics: corpus BLEU, chrF and TER through sacrebleu.

Reference implementation: sacrebleu (Post 2018, "A Call for Clarity in Reporting BLEU Scores";
``sacrebleu/metrics/{bleu,chrf,ter}.py``). Scores and signatures are sacrebleu's own, computed with
its default settings (BLEU: 13a tokenizer, exp smoothing, no effective order; chrF: chrF2 with
character order 6, no word n-grams; TER: case-insensitive, no normalisation), so for references that
are not Chinese a number here equals ``sacrebleu -m bleu chrf ter`` on the same files.

Where we differ, and why:

* Chinese. sacrebleu picks its ``zh`` tokenizer only when told the target language; steadylm
  prompt sets carry no language code, so ``is_chinese`` looks at the references instead: when Han
  characters make up at least ``CHINESE_THRESHOLD`` (20 %) of their non-space characters, and kana
  less than 5 % (Japanese mixes Han and kana and wants ``ja-mecab``, which we do not pick), BLEU
  uses ``tokenize="zh"`` (each Han character a word) and TER runs with ``normalized=True,
  asian_support=True``. sacrebleu's ``asian_support`` alone changes nothing but the signature: it
  only acts together with ``normalized`` (or ``no_punct``), which is what splits CJK text into
  characters; without it an unspaced Chinese sentence is one TER "word". Both choices show in the
  signatures (``tok:zh``; ``norm:yes|asian:yes``) and in the result's ``tokenize`` and ``chinese``.
  chrF works on characters and needs no change.
* Variable numbers of references. sacrebleu takes references as *streams* (stream k holds the k-th
  reference of every segment) and drops ``None`` entries, so items with fewer references are padded
  with ``None``; the signature then says ``nrefs:var``.
* ``sentence_scores`` (per-item tables) uses BLEU with ``effective_order=True``, as sacrebleu
  recommends for sentence-level BLEU; corpus BLEU keeps the default ``eff:no``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, SteadyError
from .result import Result

#: share of Han characters among non-space characters from which a text set counts as Chinese.
CHINESE_THRESHOLD = 0.2
#: share of kana (Hiragana, Katakana) from which a text set counts as Japanese, not Chinese.
KANA_THRESHOLD = 0.05

_HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_SPACE_RE = re.compile(r"\s+")


def is_chinese(texts: str | Sequence[str | None], threshold: float = CHINESE_THRESHOLD) -> bool:
    """True when Han characters are at least ``threshold`` of the non-space characters of
    ``texts`` (pooled; ``None`` entries skipped) and kana less than ``KANA_THRESHOLD``."""
    if isinstance(texts, str):
        texts = [texts]
    joined = _SPACE_RE.sub("", "".join(t for t in texts if t))
    if not joined:
        return False
    han = len(_HAN_RE.findall(joined))
    kana = len(_KANA_RE.findall(joined))
    return han / len(joined) >= threshold and kana / len(joined) < KANA_THRESHOLD


def sacrebleu_metrics() -> Any:
    """The ``sacrebleu.metrics`` module, or a SteadyError saying how to install it."""
    try:
        import sacrebleu.metrics
    except ImportError:
        raise SteadyError("BLEU, chrF and TER need sacrebleu: pip install sacrebleu") from None
    return sacrebleu.metrics


def _metrics(tokenize: str | None, refs: Sequence[str | None], *, sentence: bool) -> tuple[Any, Any, Any, str]:
    m = sacrebleu_metrics()
    BLEU, CHRF, TER = m.BLEU, m.CHRF, m.TER

    if tokenize is None:
        tokenize = "zh" if is_chinese(refs) else BLEU.TOKENIZER_DEFAULT
    if tokenize not in BLEU.TOKENIZERS:
        raise ConfigError(f"unknown BLEU tokenizer {tokenize!r}; sacrebleu has {', '.join(BLEU.TOKENIZERS)}")
    bleu_kw: dict[str, Any] = {} if tokenize == BLEU.TOKENIZER_DEFAULT else {"tokenize": tokenize}
    if sentence:
        bleu_kw["effective_order"] = True
    ter_kw = {"normalized": True, "asian_support": True} if tokenize == "zh" else {}
    return BLEU(**bleu_kw), CHRF(), TER(**ter_kw), tokenize


def _check_refs(refs: Sequence[str | None], where: str) -> list[str | None]:
    if isinstance(refs, str) or not isinstance(refs, Sequence):
        raise ConfigError(f"{where}: references must be a list of strings, got {type(refs).__name__}")
    refs = list(refs)
    if any(r is not None and not isinstance(r, str) for r in refs):
        raise ConfigError(f"{where}: every reference must be a string")
    if all(r is None for r in refs):
        raise ConfigError(f"{where}: no reference")
    return refs


def reference_metrics(hyps: Sequence[str], refs: Sequence[Sequence[str]], *, tokenize: str | None = None) -> dict[str, Any]:
    """Corpus BLEU, chrF and TER of ``hyps`` (one string per item) against ``refs`` (one list of
    reference strings per item; items may have different numbers of references).

    ``tokenize``: BLEU tokenizer; None picks ``"zh"`` for Chinese references (``is_chinese``), else
    sacrebleu's default ``"13a"``. Returns ``{"bleu": {"score", "signature"}, "chrf": {...},
    "ter": {...}, "n": len(hyps), "tokenize": "13a" | "zh" | ..., "chinese": bool}``.
    """
    if isinstance(hyps, str) or not isinstance(hyps, Sequence):
        raise ConfigError(f"hypotheses must be a list of strings, got {type(hyps).__name__}")
    if len(hyps) == 0:
        raise ConfigError("reference metrics need at least one hypothesis, got none")
    if len(refs) != len(hyps):
        raise ConfigError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    for i, h in enumerate(hyps):
        if not isinstance(h, str):
            raise ConfigError(f"hypothesis {i}: must be a string, got {type(h).__name__}")
    per_item = [_check_refs(r, f"item {i}") for i, r in enumerate(refs)]
    width = max(len(r) for r in per_item)
    # sacrebleu wants reference *streams*: stream k = the k-th reference of every item, None if absent.
    streams = [[r[k] if k < len(r) else None for r in per_item] for k in range(width)]
    bleu, chrf, ter, tok = _metrics(tokenize, [x for r in per_item for x in r], sentence=False)
    out: dict[str, Any] = {}
    for name, metric in (("bleu", bleu), ("chrf", chrf), ("ter", ter)):
        score = metric.corpus_score(list(hyps), streams)
        out[name] = {"score": float(score.score), "signature": str(metric.get_signature())}
    out.update(n=len(hyps), tokenize=tok, chinese=tok == "zh")
    return out


def sentence_scores(hyp: str, refs: Sequence[str], *, tokenize: str | None = None) -> dict[str, float]:
    """Sentence-level BLEU (``effective_order=True``), chrF and TER of one hypothesis against its
    references, for per-item tables: ``{"bleu", "chrf", "ter"}``. ``tokenize`` as in
    ``reference_metrics``; pass the corpus result's ``tokenize`` to keep rows and corpus alike."""
    if not isinstance(hyp, str):
        raise ConfigError(f"hypothesis must be a string, got {type(hyp).__name__}")
    refs = [r for r in _check_refs(refs, "sentence_scores") if r is not None]
    bleu, chrf, ter, _ = _metrics(tokenize, refs, sentence=True)
    return {"bleu": float(bleu.sentence_score(hyp, refs).score),
            "chrf": float(chrf.sentence_score(hyp, refs).score),
            "ter": float(ter.sentence_score(hyp, refs).score)}


class CorpusReference:
    """Corpus BLEU, chrF and TER (`reference_metrics`, no CI: sacrebleu's corpus scores), with each
    item's sentence scores (`sentence_scores`, the corpus's tokenizer) as its per-item value."""

    def score(self, hyps: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> Result:
        """``hyps``: item id -> one output; ``refs``: item id -> its references (the same ids)."""
        r = reference_metrics(list(hyps.values()), [list(refs[i]) for i in hyps])
        per_item = {i: sentence_scores(h, list(refs[i]), tokenize=r["tokenize"]) for i, h in hyps.items()}
        return Result(r, None, per_item, {"tokenize": r["tokenize"], "chinese": r["chinese"]})
