"""Degeneration (repetition) metrics over generated text.

References:

* Welleck, Kulikov, Roller, Dinan, Cho, Weston (2020), "Neural Text Generation with Unlikelihood
  Training", ICLR, and its code (``facebookresearch/unlikelihood_training``, ``custom/metrics.py``):

  - ``seq-rep-n`` of one continuation = 1 - |unique n-grams| / |n-grams| (``ngram_metrics``,
    ``pct_repeat_{n}grams``), averaged over continuations;
  - next-token ``rep/l`` = share of positions t whose top-1 prediction occurs among the previous
    ``l`` gold tokens x_{t-l} .. x_{t-1}; ``wrep/l`` = share of positions where that holds *and* the
    prediction is wrong (differs from x_t) (``TrainingMetrics.repeat_at_1``, context lengths
    16/32/128/512). The denominator is every position, the first one included (it can never
    repeat), as the reference code normalises by the token count.

* Li, Galley, Brockett, Gao, Dolan (2016), "A Diversity-Promoting Objective Function for Neural
  Conversation Models": distinct-n = number of distinct n-grams over all outputs, scaled.

Where we differ, and why:

* Units. The papers count model (BPE) tokens; evaluations here compare models with different
  tokenizers, and API back ends expose no tokens, so text is cut into tokenizer-free *units*:
  whitespace-separated words, except that every CJK character (Han ideographs, kana, CJK
  punctuation and full-width forms) is a unit of its own, as Chinese and Japanese are written
  without spaces. Hangul is left to whitespace (Korean separates words by spaces).
  ``next_token_repetition`` is the exception: it works on the model's token ids, as in the paper.
* seq-rep-n of an output with no n-gram (fewer than n units) is 0; averages over many outputs
  (``degeneration_stats``) leave such outputs out instead of counting them as "not repetitive".
* distinct-n's denominator here is the number of n-grams over all outputs (so the value is in
  [0, 1] for every n); Li et al. scaled by the number of generated *tokens*. A per-output mean of
  distinct-n (each output's |unique| / |n-grams|) is given as well.
* ``in_loop`` is a check of our own (no paper fixes one): an output counts as stuck in a loop when
  it *ends* in at least ``min_repeats`` consecutive copies of one span of 1..``max_period`` units.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from .result import Result

# CJK characters that are one unit each: CJK radicals .. Kangxi, CJK symbols and punctuation,
# Hiragana, Katakana, Bopomofo, CJK strokes, Katakana extensions, CJK Extension A, CJK Unified
# Ideographs, Compatibility Ideographs, CJK compatibility forms, half/full-width forms,
# Supplementary Ideographic Planes (Extensions B..G).
CJK_CLASS = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f"
)
_UNIT_RE = re.compile(f"[{CJK_CLASS}]|[^\\s{CJK_CLASS}]+")

UNITS_NOTE = "whitespace words; CJK characters one unit each"


def units(text: str) -> list[str]:
    """Cut ``text`` into units: whitespace-separated words, each CJK character its own unit.

    ``"GPT模型 很好"`` -> ``["GPT", "模", "型", "很", "好"]``.
    """
    return _UNIT_RE.findall(text)


def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n-gram order must be an integer >= 1, got {n!r}")


def seq_rep_n(seq: Sequence[str], n: int) -> float:
    """Welleck et al.'s seq-rep-n of one output: 1 - |unique n-grams| / |n-grams|; 0.0 when the
    output has no n-gram. ``"a b a b a b"``, n=2: 5 bigrams, 2 unique -> 1 - 2/5 = 0.6."""
    _check_n(n)
    grams = _ngrams(seq, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(outputs: Sequence[Sequence[str]], n: int) -> dict[str, float | None]:
    """distinct-n over many outputs (each a list of units).

    Returns ``{"corpus": |unique n-grams over all outputs| / |n-grams over all outputs|,
    "per_output_mean": mean over outputs with at least one n-gram of |unique| / |n-grams|}``;
    either is None when there is no n-gram at all. The corpus denominator is the n-gram count
    (Li et al. 2016 divided by the token count).
    """
    _check_n(n)
    seen: set[tuple[str, ...]] = set()
    total = 0
    per: list[float] = []
    for seq in outputs:
        grams = _ngrams(seq, n)
        if not grams:
            continue
        uniq = set(grams)
        seen |= uniq
        total += len(grams)
        per.append(len(uniq) / len(grams))
    return {"corpus": len(seen) / total if total else None,
            "per_output_mean": sum(per) / len(per) if per else None}


def loop_period(seq: Sequence[str], *, max_period: int = 16, min_repeats: int = 3) -> int | None:
    """The shortest period p (1..max_period) such that ``seq`` ends in a p-periodic stretch of at
    least ``(min_repeats - 1) * p + 1`` units, else None.

    A p-periodic stretch (``seq[i] == seq[i - p]`` throughout) of L units holds ``ceil(L / p)``
    consecutive copies of one span of p units, the last of which may be cut short (generation
    stopped at the length limit mid-copy): ``"a b c a b c a"`` is 3 copies of ``"a b c"``.
    """
    if max_period < 1 or min_repeats < 2:
        raise ConfigError(f"in_loop needs max_period >= 1 and min_repeats >= 2, got {max_period}, {min_repeats}")
    n = len(seq)
    for p in range(1, max_period + 1):
        need = (min_repeats - 1) * p + 1
        if n < need:
            break
        # Length of the p-periodic suffix: walk back while seq[i] == seq[i - p].
        i = n - 1
        while i - p >= 0 and seq[i] == seq[i - p]:
            i -= 1
        periodic_len = n - 1 - i + p  # the first copy (p units) plus every unit matched
        if periodic_len >= need:
            return p
    return None


def in_loop(seq: Sequence[str], *, max_period: int = 16, min_repeats: int = 3) -> bool:
    """True when ``seq`` (a list of units) ends in at least ``min_repeats`` consecutive copies of one
    span of 1..``max_period`` units; the last copy may be cut short by the length limit
    (see ``loop_period``). ``"x y x y x y"`` and ``"x y z x y z x"`` are loops; ``"x y x y"`` is not."""
    return loop_period(seq, max_period=max_period, min_repeats=min_repeats) is not None


def degeneration_stats(outputs: Sequence[str], *, max_period: int = 16, min_repeats: int = 3) -> dict[str, Any]:
    """Repetition statistics of many generated texts.

    Returns ``{"seq_rep_1".."seq_rep_4": mean over outputs having n-grams (None if none),
    "distinct_1".."distinct_4": corpus distinct-n, "distinct_1_per_output".."distinct_4_per_output":
    mean per-output distinct-n, "loop_share": share of outputs ``in_loop`` (None for no outputs),
    "n": number of outputs, "units": how text was cut}``.
    """
    seqs = [units(t) for t in outputs]
    res: dict[str, Any] = {}
    for n in range(1, 5):
        reps = [seq_rep_n(s, n) for s in seqs if len(s) >= n]
        res[f"seq_rep_{n}"] = sum(reps) / len(reps) if reps else None
    for n in range(1, 5):
        d = distinct_n(seqs, n)
        res[f"distinct_{n}"] = d["corpus"]
        res[f"distinct_{n}_per_output"] = d["per_output_mean"]
    loops = [in_loop(s, max_period=max_period, min_repeats=min_repeats) for s in seqs]
    res["loop_share"] = sum(loops) / len(loops) if loops else None
    res["n"] = len(seqs)
    res["units"] = UNITS_NOTE
    return res


class Degeneration:
    """`degeneration_stats` over every output (corpus-level, no CI), with each item's share of
    outputs caught in a loop as its per-item value."""

    def score(self, outputs: Mapping[str, Sequence[str]]) -> Result:
        """``outputs``: item id -> that item's outputs."""
        per_item = {}
        for i, texts in outputs.items():
            loops = [in_loop(units(t)) for t in texts]
            per_item[i] = sum(loops) / len(loops) if loops else None
        stats = degeneration_stats([t for texts in outputs.values() for t in texts])
        return Result(stats, None, per_item, {"units": UNITS_NOTE})


def _as_sequences(x: Any) -> list[list[Any]]:
    """One sequence or a list of sequences (lists, tuples, arrays, tensors) -> list of lists."""
    if hasattr(x, "tolist"):  # a numpy array or torch tensor, 1-D or 2-D
        x = x.tolist()
    x = list(x)
    if x and (isinstance(x[0], (list, tuple)) or getattr(x[0], "ndim", 0) > 0):
        return [list(s.tolist() if hasattr(s, "tolist") else s) for s in x]
    return [x]


def next_token_repetition(targets: Any, predictions: Any, context: int = 128) -> dict[str, Any]:
    """Welleck et al.'s next-token ``rep/l`` and ``wrep/l`` with ``l = context``.

    ``targets`` are the gold token ids x_1..x_T and ``predictions`` the model's top-1 prediction
    at each position (argmax p(. | x_<t)); either one sequence or a list of sequences (documents:
    the context does not cross them). rep = share of positions t whose prediction is among
    x_{t-context}..x_{t-1}; wrep = share of positions where that holds and the prediction differs
    from x_t. Returns ``{"rep", "wrep", "n": positions, "context"}`` (rep/wrep None for no positions).
    """
    if not isinstance(context, int) or context < 1:
        raise ConfigError(f"next_token_repetition context must be an integer >= 1, got {context!r}")
    tgs, prs = _as_sequences(targets), _as_sequences(predictions)
    if len(tgs) != len(prs) or any(len(t) != len(p) for t, p in zip(tgs, prs)):
        raise ConfigError("next_token_repetition: targets and predictions differ in length")
    rep = wrep = total = 0
    for tg, pr in zip(tgs, prs):
        last: dict[Any, int] = {}  # token -> its latest position among the gold tokens seen so far
        for t, (gold, pred) in enumerate(zip(tg, pr)):
            k = last.get(pred)
            if k is not None and t - k <= context:
                rep += 1
                wrep += pred != gold
            last[gold] = t
        total += len(tg)
    return {"rep": rep / total if total else None, "wrep": wrep / total if total else None,
            "n": total, "context": context}
