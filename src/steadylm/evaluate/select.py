"""Output-level ensembles: pick one of several outputs for a prompt.

* ``majority_vote`` - self-consistency (Wang et al. 2023, "Self-Consistency Improves Chain of
  Thought Reasoning in Language Models"): sample several outputs, extract each one's short answer
  and return the most frequent. Answers are extracted and normalised exactly as the consistency
  metrics do (``consistency.extract_answer``: first line up to its first sentence end, SQuAD-style
  ``normalize_answer`` with NFKC and Unicode punctuation, so Chinese works too). An output with no
  answer votes for nothing; ties go to the answer seen first (as ``answer_stats``). The paper
  marginalises over reasoning paths and takes the final answer after "The answer is"; we take
  the first sentence, since steadylm's prompt sets ask for short answers.
* ``mbr_select`` - minimum Bayes risk decoding over a candidate list (Kumar & Byrne 2004,
  "Minimum Bayes-Risk Decoding for Statistical Machine Translation"; with sampled candidates as
  pseudo-references, Freitag et al. 2022, "High Quality Rather than High Model Probability: MBR
  Decoding with Neural Metrics"): pick the candidate with the highest mean utility against all
  *other* candidates, the utility being sacrebleu's sentence chrF or sentence BLEU
  (``effective_order=True``; the ``zh`` tokenizer when the candidates are Chinese - both as in
  the self-BLEU/self-chrF metrics). Freitag et al. use the same list as hypotheses and references
  and include a candidate's own score; leaving it out changes no ranking when every candidate
  scores 100 against itself, and keeps the reported expected utilities comparable across list
  sizes. Ties go to the earliest candidate.

``select_file`` applies either method to a JSONL file of candidate lists, or to the
``generations.jsonl`` of ``steadylm eval generation`` (texts grouped by ``prompt_id``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from .consistency import extract_answer
from .reference import is_chinese, sacrebleu_metrics
from ..io import iter_jsonl

UTILITIES = ("chrf", "bleu")
METHODS = ("vote", "mbr")


def _check(candidates: Sequence[str], what: str) -> list[str]:
    candidates = list(candidates)
    if not candidates:
        raise ConfigError(f"{what}: the candidate set is empty")
    bad = [i for i, c in enumerate(candidates) if not isinstance(c, str)]
    if bad:
        raise ConfigError(f"{what}: candidate {bad[0]} is {type(candidates[bad[0]]).__name__}, not a string")
    return candidates


def majority_vote(outputs: Sequence[str]) -> dict[str, Any]:
    """The most frequent short answer among ``outputs``.

    Returns ``{"answer": the normalised answer (None when no output has one), "share": its count /
    len(outputs), "index": the first output giving it (None when no answer)}``."""
    outputs = _check(outputs, "majority vote")
    answers = [extract_answer(o) for o in outputs]
    counts = Counter(a for a in answers if a)
    if not counts:
        return {"answer": None, "share": 0.0, "index": None}
    answer, top = counts.most_common(1)[0]  # Counter keeps first-seen order among ties
    return {"answer": answer, "share": top / len(outputs), "index": answers.index(answer)}


def _utility(name: str, candidates: list[str]) -> Any:
    m = sacrebleu_metrics()
    if name == "chrf":
        return m.CHRF()
    if name == "bleu":
        kw: dict[str, Any] = {"tokenize": "zh"} if is_chinese(candidates) else {}
        return m.BLEU(effective_order=True, **kw)
    raise ConfigError(f"--utility must be one of {', '.join(UTILITIES)}, got {name!r}")


def mbr_select(candidates: Sequence[str], utility: str = "chrf") -> dict[str, Any]:
    """Minimum-Bayes-risk choice among ``candidates``.

    Returns ``{"index", "text", "expected_utility": [mean sentence utility of candidate i against
    each other candidate, for every i]}``; one candidate is chosen as it is (expected utility None)."""
    candidates = _check(candidates, "MBR")
    metric = _utility(utility, candidates)
    n = len(candidates)
    if n == 1:
        return {"index": 0, "text": candidates[0], "expected_utility": [None]}
    # utility(hyp=i, ref=j) is not symmetric (BLEU's brevity penalty, chrF's beta): score all pairs
    eu = [sum(metric.sentence_score(candidates[i], [candidates[j]]).score for j in range(n) if j != i) / (n - 1)
          for i in range(n)]
    best = max(range(n), key=lambda i: (eu[i], -i))
    return {"index": best, "text": candidates[best], "expected_utility": eu}


def read_candidates(path: str | os.PathLike) -> list[tuple[Any, list[str]]]:
    """``(id, candidates)`` per item of a JSONL file: lines ``{"id": ..., "candidates": [...]}``, or
    the lines ``{"prompt_id": ..., "text": ...}`` of a ``generations.jsonl`` (grouped by
    ``prompt_id``, in first-seen order)."""
    p = Path(path)
    items: dict[Any, list[str]] = {}
    order: list[Any] = []
    for n, obj in iter_jsonl(p):
        if not isinstance(obj, dict):
            raise DataError(f"{p}:{n}: expected a JSON object")
        if "candidates" in obj:
            key, cands = obj.get("id", n), obj["candidates"]
            if not isinstance(cands, list) or not cands:
                raise ConfigError(f"{p}:{n}: item {key!r} has an empty candidate set")
            if not all(isinstance(c, str) for c in cands):
                raise DataError(f"{p}:{n}: item {key!r}: candidates must be strings")
            hk = json.dumps(key, sort_keys=True)
            if hk in items:
                raise DataError(f"{p}:{n}: id {key!r} appears twice")
            items[hk] = list(cands)
            order.append(key)
        elif "prompt_id" in obj and isinstance(obj.get("text"), str):
            key = obj["prompt_id"]
            hk = json.dumps(key, sort_keys=True)
            if hk not in items:
                items[hk] = []
                order.append(key)
            items[hk].append(obj["text"])
        else:
            raise DataError(f"{p}:{n}: expected {{\"id\", \"candidates\": [...]}} or a generations.jsonl line "
                            f"with \"prompt_id\" and \"text\"")
    if not order:
        raise ConfigError(f"{p}: no candidate sets (the file is empty)")
    return [(k, items[json.dumps(k, sort_keys=True)]) for k in order]


def select_file(path: str | os.PathLike, method: str = "vote", utility: str = "chrf") -> list[dict[str, Any]]:
    """One chosen output per item of ``path`` (see `read_candidates`), as JSON-ready dicts."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if utility not in UTILITIES:
        raise ConfigError(f"--utility must be one of {', '.join(UTILITIES)}, got {utility!r}")
    rows = []
    for key, cands in read_candidates(path):
        if method == "vote":
            v = majority_vote(cands)
            rows.append({"id": key, "method": "vote", "answer": v["answer"], "share": v["share"], "index": v["index"],
                         "text": cands[v["index"]] if v["index"] is not None else None, "n": len(cands)})
        else:
            r = mbr_select(cands, utility)
            rows.append({"id": key, "method": "mbr", "utility": utility, "index": r["index"], "text": r["text"],
                         "expected_utility": r["expected_utility"], "n": len(cands)})
    return rows
