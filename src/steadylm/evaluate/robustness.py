"""``steadylm eval robustness``: how far a model's answers move when its prompts are perturbed, a
greedy adversarial search within an edit budget, and the drop on an out-of-domain prompt set.

For every perturbation kind (`perturb.PERTURBATIONS`; ``--kinds typo,swap,...``) each prompt is
perturbed with `perturb.perturb_item` (a translation item's ``source``, a chat's last user turn,
else the prompt; generator ``rng_for(seed, kind, item id)``), and the model answers the clean and
the perturbed prompt. A perturbed request has the same prompt id, seed and sample index as its
clean one, so under sampling both draw from the same random stream (common random numbers): the
difference in output comes from the input, not from the draw. Measured, per kind and over all
kinds, every per-item number with a percentile-bootstrap CI over items (`stats.summarize`):

* **perplexity shift** (backends that score text: local models and ensembles, see
  `Capabilities.logprobs`): Δ bits per byte of the *prompt text itself* (clean → perturbed),
  lm-eval-harness's definition through `perplexity.compute_perplexity`; corpus-level (sums over
  prompts, then divide) and per item. Endpoints give no log-probabilities: not measured;
* **output similarity** of the perturbed-input output to the clean-input output (sample k against
  sample k): sentence BLEU (``effective_order``; ``zh`` tokenizer for Chinese), chrF (sacrebleu)
  and MiniLM cosine (`consistency.Embedder`). Two identical outputs score 100 (1.0) - sacrebleu
  gives two empty strings 0;
* **answers** (items with ``answer``): accuracy on clean and perturbed input
  (`consistency.answer_stats`) and the answer flip rate (the extracted answer differs from the
  clean one); **references**: corpus BLEU / chrF / TER on clean and perturbed input
  (`reference.reference_metrics`, sample 0) and per item (`reference.sentence_scores`);
* **Performance Drop Rate** (PromptBench, Zhu et al. 2023, eq. 1):
  ``PDR = 1 - Σ_i M(f(A(x_i)), y_i) / Σ_i M(f(x_i), y_i)`` - a ratio of sums over the items, per
  kind and over all kinds (every kind's items in the numerator, the clean sum once per kind in the
  denominator), for each metric M available: ``accuracy``, ``reference_chrf``, ``reference_bleu``
  and ``similarity_chrf`` (chrF to the clean output, whose clean value is 100). Its CI resamples
  items (paired), since a ratio of sums is not a mean of per-item values;
* **worst case** (HELM, Liang et al. 2022, §4.5 "robustness"): per item the minimum of M over the
  original and its perturbed versions, then the mean over items. HELM counts the original among an
  instance's versions, and so do we (it changes a number only when every kind helps an item).

**Adversarial search** (first ``--adv-items`` items): within an edit budget of ``B`` edits, where
an edit is one application of one character-level kind of ``--kinds`` (typo, swap, insert, delete,
ocr, zh-char, zh-punct; all ``--kinds`` when none is character-level) at its rate with a fresh
generator index, greedy search asks at each of ``B`` steps ``m = Q // B`` candidate single edits
of the current prompt and keeps the one that lowers the objective most, if any lowers it - the
black-box greedy search of TextAttack's ``GreedySearch`` (Morris et al. 2020) over our
perturbations instead of word swaps. The objective is sentence chrF of the output (sample 0)
against the item's references when it has some, else against the clean output. Beside it, random
search with the same budget and the same ``B·m`` model queries (each query a random sequence of
``B`` edits of the clean prompt; the worst one seen is kept), the baseline Yoo et al. (2020,
"Searching for a Search Method") ask every search to beat at an equal query count. Both may keep
the clean prompt (an attack that finds nothing scores the clean score), so neither is worse than
its own first step. A candidate text asked twice still counts as a query (the cache serves it).

**Domain shift** (``--ood SRC``, e.g. ``builtin:stdlib-code``): the clean metrics - bits per byte
of the prompts' text (local models), self-BLEU over the ``K >= 2`` samples, reference metrics,
accuracy - on the OOD set beside the in-domain set, and the drop: the byte-perplexity ratio
``2 ** (bpb_ood - bpb_in)`` (tokenizer-free; the token-perplexity ratio too) and OOD − in deltas.

Outputs in ``--out``: ``results.json`` (every number with its signature), ``generations.jsonl``
(every output: ``set`` in/ood, ``prompt_id``, ``variant`` clean / kind / adv-greedy / adv-random,
``sample``, ``prompt`` (the text the model was given, dialogue joined by newlines), ``text``, and
for the searches ``step`` / ``query``, ``edits``, ``score``) and ``cache.jsonl`` (running the same
command again serves every generation from it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import ConfigError, SteadyError
from ..fsutil import to_json, write_text_atomic
from .backends.base import Backend, DecodingSettings, Generation, Request
from .perturb import Composition, check_rate, compose, parse_kinds, perturb_item, rng_for
from .prompts import PromptItem
from .result import NotMeasured, mean
from .run import EvalRun, prompts_sha

#: kinds ``eval robustness`` applies when no ``--kinds`` is given (no model-backed kind: synonym loads MiniLM)
DEFAULT_KINDS = ("typo", "swap", "delete", "ocr", "upper", "whitespace", "punctuation", "filler", "word-order",
                 "distractor")
#: added to `DEFAULT_KINDS` when a prompt holds Chinese: the Latin-script kinds leave Han text as it is
ZH_KINDS = ("zh-char", "zh-punct")


def default_kinds(items: Sequence[PromptItem]) -> tuple[str, ...]:
    """The kinds ``eval robustness`` applies without ``--kinds``: `DEFAULT_KINDS`, and `ZH_KINDS`
    when any prompt holds a Han character (Chinese is a first-class input: without them a Chinese
    prompt would go through every default kind unchanged, and count as robust)."""
    from .perturb import has_han

    return DEFAULT_KINDS + (ZH_KINDS if any(has_han(it.text()) for it in items) else ())


#: kinds the adversarial search edits with (those of ``--kinds`` that act on characters)
CHAR_KINDS = ("typo", "swap", "insert", "delete", "ocr", "zh-char", "zh-punct")
#: metrics PDR and worst case are given for, in order of preference for the headline
PDR_METRICS = ("accuracy", "reference_chrf", "reference_bleu", "similarity_chrf")


@dataclass
class RobustnessConfig:
    """Settings of one ``eval robustness`` run."""

    prompts: str = "builtin"
    """Prompt set: a JSONL file, ``builtin`` or ``builtin:SOURCE``."""
    kinds: tuple[str, ...] = DEFAULT_KINDS
    """Perturbation kinds, each evaluated on its own."""
    rate: float | None = None
    """One rate for every kind, in [0, 1]; None = each kind's default."""
    seed: int = 0
    """Seed of the perturbations and of the sampled decoding."""
    samples: int = 1
    """K outputs per prompt and variant."""
    decoding: DecodingSettings = field(default_factory=lambda: DecodingSettings(temperature=0.0))
    """How to decode (greedy by default)."""
    n_builtin: int = 32
    """Prompts a built-in source gives (in-domain and OOD)."""
    budget: int = 3
    """B: edits the adversarial search may make to one prompt."""
    queries: int = 12
    """Q: model queries per item for each search (B steps of Q // B candidates)."""
    adv_items: int = 4
    """How many of the first items the adversarial search attacks (0 = none)."""
    ood: str | None = None
    """An out-of-domain prompt source to compare clean metrics with."""
    bootstrap: int = 1000
    """Bootstrap resamples for confidence intervals."""

    def __post_init__(self) -> None:
        self.kinds = parse_kinds(self.kinds)
        if len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(f"--kinds has a repeated kind: {','.join(self.kinds)}")
        if self.rate is not None:
            self.rate = check_rate(self.rate, "--rate")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"--seed must be an integer, got {self.seed!r}")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.budget < 1:
            raise ConfigError(f"--budget must be >= 1 edit, got {self.budget}")
        if self.queries < self.budget:
            raise ConfigError(f"--queries must be >= --budget ({self.budget}): each step asks at least one candidate, "
                              f"got {self.queries}")
        if self.adv_items < 0:
            raise ConfigError(f"--adv-items must be >= 0, got {self.adv_items}")
        if self.n_builtin < 1:
            raise ConfigError(f"--builtin-prompts must be >= 1, got {self.n_builtin}")
        if self.bootstrap < 100:
            raise ConfigError(f"--bootstrap must be >= 100 resamples, got {self.bootstrap}")

    @property
    def rates(self) -> dict[str, float]:
        return dict(zip(self.kinds, compose(self.kinds, self.rate, self.seed).rates))

    @property
    def search_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.kinds if k in CHAR_KINDS) or self.kinds

    @property
    def candidates_per_step(self) -> int:
        return self.queries // self.budget


# ----------------------------------------------------------------------------- formulas

def performance_drop_rate(clean: Sequence[float | None], perturbed: Sequence[float | None]) -> float | None:
    """PromptBench's PDR ``1 - Σ perturbed / Σ clean`` over the items where both are known
    (the lists are paired item by item; repeat ``clean`` once per kind for several kinds).
    None when no pair is left or the clean sum is 0."""
    if len(clean) != len(perturbed):
        raise ConfigError(f"PDR: {len(clean)} clean values but {len(perturbed)} perturbed")
    pairs = [(c, p) for c, p in zip(clean, perturbed) if c is not None and p is not None]
    total = sum(c for c, _ in pairs)
    if not pairs or total == 0:
        return None
    return 1.0 - sum(p for _, p in pairs) / total


def worst_case(clean: Sequence[float | None], per_kind: Sequence[Sequence[float | None]]) -> list[float | None]:
    """HELM's worst case per item: the minimum over the original and every perturbed version
    (None values skipped; None when an item has no value at all)."""
    out: list[float | None] = []
    for i, c in enumerate(clean):
        vals = [v for v in [c, *(k[i] for k in per_kind)] if v is not None]
        out.append(min(vals) if vals else None)
    return out


def _pdr_ci(clean: Sequence[float | None], per_kind: Sequence[Sequence[float | None]], n_resamples: int,
            level: float = 0.95, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap of PDR over items: resample items (with all their kinds), recompute."""
    import numpy as np

    keep = [i for i, c in enumerate(clean) if c is not None and all(k[i] is not None for k in per_kind)]
    if not keep:
        return None, None
    c = np.array([clean[i] for i in keep], dtype=np.float64)  # (n,)
    p = np.array([[k[i] for k in per_kind] for i in keep], dtype=np.float64).mean(axis=1)  # (n,) mean over kinds
    if len(keep) == 1:
        v = performance_drop_rate(list(c), list(p))
        return v, v
    idx = np.random.default_rng(seed).integers(0, len(keep), size=(n_resamples, len(keep)))  # (R, n)
    cs, ps = c[idx].sum(axis=1), p[idx].sum(axis=1)
    ok = cs != 0
    if not ok.any():
        return None, None
    vals = 1.0 - ps[ok] / cs[ok]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [a, 1.0 - a])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- the evaluation

class RobustnessEval(EvalRun):
    """One evaluation: perturb, generate (with the cache), measure, search, write."""

    def __init__(self, backend: Backend, items: list[PromptItem], cfg: RobustnessConfig, out: str | Path, *,
                 ood_items: list[PromptItem] | None = None, progress: bool = True, prompts_label: str | None = None):
        if not items:
            raise SteadyError("no prompts to evaluate")
        if cfg.ood is not None and not ood_items:
            raise SteadyError(f"--ood {cfg.ood}: no prompts")
        self.items, self.cfg = items, cfg
        self.ood_items = ood_items or []
        self.progress = progress
        self.prompts_label = prompts_label or cfg.prompts
        self.comps: dict[str, Composition] = {k: compose([k], r, cfg.seed) for k, r in cfg.rates.items()}
        super().__init__(backend, out, bootstrap=cfg.bootstrap)
        self._lines: list[dict[str, Any]] = []
        self._sentence_metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------ generation
    def _request(self, item: PromptItem, sample: int) -> Request:
        # one prompt id for an item's every variant: the same random stream under sampling
        if item.is_chat:
            return Request(item.id, sample, self.cfg.seed, self.cfg.decoding, messages=item.messages)
        return Request(item.id, sample, self.cfg.seed, self.cfg.decoding, prompt=item.prompt)

    def _log(self, set_: str, item: PromptItem, variant: str, sample: int, g: Generation, **extra: Any) -> None:
        self._lines.append({"set": set_, "prompt_id": item.id, "variant": variant, "sample": sample,
                            "prompt": item.text(), "text": g.text, "finish_reason": g.finish_reason,
                            "completion_tokens": g.completion_tokens, **extra})

    # ------------------------------------------------------------------ scoring helpers
    def _metric(self, name: str):
        if name not in self._sentence_metrics:
            from .reference import sacrebleu_metrics

            m = sacrebleu_metrics()
            self._sentence_metrics.update(bleu=m.BLEU(effective_order=True),
                                          bleu_zh=m.BLEU(effective_order=True, tokenize="zh"), chrf=m.CHRF())
        return self._sentence_metrics[name]

    def similarity(self, hyp: str, ref: str) -> tuple[float, float]:
        """Sentence BLEU and chrF of ``hyp`` against ``ref`` (one output against another); 100 when equal."""
        from .reference import is_chinese

        if hyp == ref:
            return 100.0, 100.0
        bleu = self._metric("bleu_zh" if is_chinese([ref]) else "bleu")
        return float(bleu.sentence_score(hyp, [ref]).score), float(self._metric("chrf").sentence_score(hyp, [ref]).score)

    def _objective(self, item: PromptItem, clean_out: str):
        """The adversarial search's score of one output: lower = the attack did better."""
        if item.references:
            refs = list(item.references)
            return "reference chrF", lambda out: float(self._metric("chrf").sentence_score(out, refs).score)
        return "chrF to the clean output", lambda out: self.similarity(out, clean_out)[1]

    @property
    def logprobs(self) -> bool:
        """Whether the backend scores text, so the perplexity shift can be measured."""
        return self.backend.capabilities.logprobs

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        cfg, K = self.cfg, self.cfg.samples
        variants: dict[str, list[PromptItem]] = {"clean": self.items}
        for kind, comp in self.comps.items():
            variants[kind] = [perturb_item(it, comp) for it in self.items]
        plan: list[tuple[str, str, int, PromptItem]] = []  # (set, variant, item index, item)
        for v, its in variants.items():
            plan += [("in", v, i, it) for i, it in enumerate(its)]
        plan += [("ood", "clean", i, it) for i, it in enumerate(self.ood_items)]
        reqs = [self._request(it, k) for _, _, _, it in plan for k in range(K)]
        gens = self.generate(reqs, "generating")
        outs: dict[tuple[str, str], list[list[str]]] = {}
        for n, (set_, v, i, it) in enumerate(plan):
            mine = gens[n * K:(n + 1) * K]
            outs.setdefault((set_, v), []).append([g.text for g in mine])
            for k, g in enumerate(mine):
                self._log(set_, it, v, k, g)

        clean = outs[("in", "clean")]
        per_prompt: list[dict[str, Any]] = [{"prompt_id": it.id, "kinds": {}} for it in self.items]
        results: dict[str, Any] = {"signature": self.signature()}
        results["clean"] = self._set_metrics(self.items, clean)
        results["kinds"], item_metrics = self._kinds(variants, outs, per_prompt)
        results["aggregate"] = self._aggregate(item_metrics, per_prompt)
        results["adversarial"] = self._adversarial(clean)
        results["ood"] = self._ood(results["clean"], outs.get(("ood", "clean"), []))
        results["per_prompt"] = per_prompt
        results["counts"] = {"prompts": len(self.items), "ood_prompts": len(self.ood_items), "kinds": len(cfg.kinds),
                             "generations": self.generated, "from_cache": self.from_cache}
        results["elapsed_s"] = round(time.time() - t0, 2)
        write_text_atomic(self.out / "generations.jsonl",
                          "".join(to_json(x) + "\n" for x in self._lines))
        self.write_results(results)
        return results

    # ------------------------------------------------------------------ clean metrics of one set
    def _set_metrics(self, items: list[PromptItem], outs: list[list[str]]) -> dict[str, Any]:
        from .consistency import answer_stats, pairwise_bleu
        from .reference import reference_metrics

        res: dict[str, Any] = {"items": len(items)}
        if self.logprobs:
            res["perplexity"] = {"measured": True, "on": "the prompt text", **self.scorer.corpus([it.text() for it in items])}
        else:
            res["perplexity"] = NotMeasured("not measured: needs token log-probabilities of a local model").to_json()
        if self.cfg.samples >= 2:
            res["self_bleu"] = {"measured": True, **self.summary([pairwise_bleu(o) for o in outs])}
        else:
            res["self_bleu"] = NotMeasured("needs --samples >= 2").to_json()
        refd = [(it, o) for it, o in zip(items, outs) if it.references]
        if refd:
            r = reference_metrics([o[0] for _, o in refd], [list(it.references) for it, _ in refd])
            res["reference"] = {"measured": True, "items": len(refd), "on": "sample 0", "tokenize": r["tokenize"],
                                **{m: r[m] for m in ("bleu", "chrf", "ter")}}
        else:
            res["reference"] = NotMeasured("no item has a reference").to_json()
        ans = [(it, o) for it, o in zip(items, outs) if it.answer is not None]
        if ans:
            res["accuracy"] = {"measured": True, **self.summary([answer_stats(o, it.answer)["accuracy"] for it, o in ans])}
        else:
            res["accuracy"] = NotMeasured("no item has a short 'answer'").to_json()
        return res

    # ------------------------------------------------------------------ per kind
    def _kinds(self, variants, outs, per_prompt) -> tuple[dict[str, Any], dict[str, Any]]:
        from .consistency import answer_stats, extract_answer
        from .reference import reference_metrics, sentence_scores

        items, K = self.items, self.cfg.samples
        clean = outs[("in", "clean")]
        every = sorted({t for v in variants for o in outs[("in", v)] for t in o})
        emb = dict(zip(every, self.embedder.encode(every)))
        refd = [i for i, it in enumerate(items) if it.references]
        tok = None
        clean_ref_corpus = None
        if refd:
            clean_ref_corpus = reference_metrics([clean[i][0] for i in refd], [list(items[i].references) for i in refd])
            tok = clean_ref_corpus["tokenize"]

        def ref_item(i: int, out: str) -> dict[str, float] | None:
            return sentence_scores(out, list(items[i].references), tokenize=tok) if items[i].references else None

        # per-item metric values: metric -> variant -> [value per item]
        m: dict[str, dict[str, list[float | None]]] = {k: {} for k in PDR_METRICS}
        clean_ref = [ref_item(i, clean[i][0]) for i in range(len(items))]
        m["accuracy"]["clean"] = [answer_stats(clean[i], it.answer)["accuracy"] if it.answer is not None else None
                                  for i, it in enumerate(items)]
        m["reference_chrf"]["clean"] = [r["chrf"] if r else None for r in clean_ref]
        m["reference_bleu"]["clean"] = [r["bleu"] if r else None for r in clean_ref]
        m["similarity_chrf"]["clean"] = [100.0] * len(items)
        clean_bpb = [self.scorer.bits_per_byte(it.text()) for it in items] if self.logprobs else [None] * len(items)
        for pp, b, acc, r in zip(per_prompt, clean_bpb, m["accuracy"]["clean"], clean_ref):
            pp["clean"] = {"bits_per_byte": b, "accuracy": acc, "reference": r}

        res: dict[str, Any] = {}
        for kind in self.cfg.kinds:
            pert_items, pert = variants[kind], outs[("in", kind)]
            rows = []
            for i, it in enumerate(items):
                sims = [self.similarity(pert[i][k], clean[i][k]) for k in range(K)]
                sem = [1.0 if pert[i][k] == clean[i][k] else float(emb[pert[i][k]] @ emb[clean[i][k]]) for k in range(K)]
                row: dict[str, Any] = {"changed": pert_items[i].text() != it.text(),
                                       "bleu": mean([s[0] for s in sims]), "chrf": mean([s[1] for s in sims]),
                                       "semantic": mean(sem)}
                if self.logprobs:
                    pb = self.scorer.bits_per_byte(pert_items[i].text())
                    row["bits_per_byte"] = pb
                    row["bpb_delta"] = None if pb is None or clean_bpb[i] is None else pb - clean_bpb[i]
                if it.answer is not None:
                    row["accuracy"] = answer_stats(pert[i], it.answer)["accuracy"]
                    row["flip"] = mean([float(extract_answer(pert[i][k]) != extract_answer(clean[i][k])) for k in range(K)])
                ri = ref_item(i, pert[i][0])
                if ri is not None:
                    row["reference"] = ri
                rows.append(row)
                per_prompt[i]["kinds"][kind] = row
            m["accuracy"][kind] = [r.get("accuracy") for r in rows]
            m["reference_chrf"][kind] = [r["reference"]["chrf"] if "reference" in r else None for r in rows]
            m["reference_bleu"][kind] = [r["reference"]["bleu"] if "reference" in r else None for r in rows]
            m["similarity_chrf"][kind] = [r["chrf"] for r in rows]

            d: dict[str, Any] = {"rate": self.cfg.rates[kind], "changed_share": sum(r["changed"] for r in rows) / len(rows)}
            if self.logprobs:
                c_ppl = self.scorer.corpus([it.text() for it in items])
                p_ppl = self.scorer.corpus([it.text() for it in pert_items])
                d["perplexity_shift"] = {"measured": True, "clean_bits_per_byte": c_ppl["bits_per_byte"],
                                         "bits_per_byte": p_ppl["bits_per_byte"],
                                         "delta_bits_per_byte": p_ppl["bits_per_byte"] - c_ppl["bits_per_byte"],
                                         "per_item_delta": self.summary([r["bpb_delta"] for r in rows])}
            else:
                d["perplexity_shift"] = NotMeasured("not measured: an endpoint gives no token "
                                                    "log-probabilities").to_json()
            d["similarity"] = {k: self.summary([r[k] for r in rows]) for k in ("bleu", "chrf", "semantic")}
            ans = [r for r in rows if "accuracy" in r]
            if ans:
                d["answers"] = {"measured": True, "items": len(ans),
                                "accuracy_clean": self.summary([a for a in m["accuracy"]["clean"] if a is not None]),
                                "accuracy": self.summary([r["accuracy"] for r in ans]),
                                "flip_rate": self.summary([r["flip"] for r in ans])}
            else:
                d["answers"] = NotMeasured("no item has a short 'answer'").to_json()
            if refd and clean_ref_corpus is not None:
                pr = reference_metrics([pert[i][0] for i in refd], [list(items[i].references) for i in refd], tokenize=tok)
                d["reference"] = {"measured": True, "items": len(refd), "on": "sample 0",
                                  **{k: {"clean": clean_ref_corpus[k]["score"], "perturbed": pr[k]["score"],
                                         "delta": pr[k]["score"] - clean_ref_corpus[k]["score"],
                                         "signature": pr[k]["signature"]} for k in ("bleu", "chrf", "ter")}}
            else:
                d["reference"] = NotMeasured("no item has a reference").to_json()
            d["pdr"] = self._pdr_block(m, [kind])
            res[kind] = d
        return res, m

    def _pdr_block(self, m: dict[str, dict[str, list[float | None]]], kinds: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in PDR_METRICS:
            clean = m[name]["clean"]
            if all(c is None for c in clean):
                continue
            v = performance_drop_rate(clean * len(kinds), [x for k in kinds for x in m[name][k]])
            lo, hi = _pdr_ci(clean, [m[name][k] for k in kinds], self.cfg.bootstrap)
            out[name] = {"pdr": v, "ci_low": lo, "ci_high": hi}
        return out

    def _aggregate(self, m, per_prompt) -> dict[str, Any]:
        kinds = list(self.cfg.kinds)
        res: dict[str, Any] = {"kinds": kinds}
        for key in ("bleu", "chrf", "semantic", "bpb_delta", "flip"):
            vals = [mean([pp["kinds"][k].get(key) for k in kinds]) for pp in per_prompt]
            if any(v is not None for v in vals):
                res[key if key != "bpb_delta" else "perplexity_shift_bpb"] = self.summary(vals)
        res["pdr"] = self._pdr_block(m, kinds)
        present = [n for n in PDR_METRICS if n in res["pdr"]]
        # the headline: the first metric whose PDR is defined (a clean score of 0 everywhere leaves it undefined)
        defined = [n for n in present if res["pdr"][n]["pdr"] is not None]
        res["primary_metric"] = defined[0] if defined else (present[0] if present else None)
        wc: dict[str, Any] = {}
        for name in present:
            per_item = worst_case(m[name]["clean"], [m[name][k] for k in kinds])
            for pp, v in zip(per_prompt, per_item):
                pp.setdefault("worst_case", {})[name] = v
            wc[name] = {"clean": self.summary(m[name]["clean"]), "worst_case": self.summary(per_item),
                        "worst_kind_counts": self._worst_kinds(m[name], kinds)}
        res["worst_case"] = {"definition": "per item the minimum over the original and every perturbed version "
                                           "(HELM), then the mean over items", **wc}
        return res

    @staticmethod
    def _worst_kinds(mv: dict[str, list[float | None]], kinds: list[str]) -> dict[str, int]:
        """How often each kind gives an item its worst value (ties go to the first kind listed)."""
        counts: dict[str, int] = {}
        for i in range(len(mv["clean"])):
            vals = [(mv[k][i], k) for k in kinds if mv[k][i] is not None]
            if vals:
                k = min(vals, key=lambda x: x[0])[1]
                counts[k] = counts.get(k, 0) + 1
        return counts

    # ------------------------------------------------------------------ adversarial search
    def _edit(self, item: PromptItem, kind: str, index: str) -> PromptItem:
        """One edit: ``kind`` once, with a fresh generator; a few more indices if nothing changed."""
        new = item
        for attempt in range(4):
            new = perturb_item(item, self.comps[kind], index=index if attempt == 0 else f"{index}/{attempt}")
            if new.text() != item.text():
                break
        return new

    def _adversarial(self, clean: list[list[str]]) -> dict[str, Any]:
        cfg = self.cfg
        items = self.items[:cfg.adv_items]
        if not items:
            return NotMeasured("--adv-items 0").to_json()
        B, mc, kinds = cfg.budget, cfg.candidates_per_step, cfg.search_kinds
        objs = [self._objective(it, clean[i][0]) for i, it in enumerate(items)]
        clean_scores = [f(clean[i][0]) for i, (_, f) in enumerate(objs)]

        # greedy: B steps, mc single-edit candidates of the current prompt each; accept the lowest if it lowers
        cur = list(items)
        cur_score = list(clean_scores)
        cur_out = [clean[i][0] for i in range(len(items))]
        edits: list[list[str]] = [[] for _ in items]
        curve: list[list[float]] = [[] for _ in items]
        g_queries = [0] * len(items)
        for step in range(B):
            cands = []
            for i, it in enumerate(items):
                for j in range(mc):
                    kind = kinds[(step * mc + j) % len(kinds)]
                    cands.append((i, j, kind, self._edit(cur[i], kind, f"adv:{it.id}:{step}:{j}")))
            gens = self.generate([self._request(c, 0) for *_, c in cands], f"greedy search {step + 1}/{B}")
            best: dict[int, tuple[float, PromptItem, str, str]] = {}
            for (i, j, kind, c), g in zip(cands, gens):
                s = objs[i][1](g.text)
                g_queries[i] += 1
                self._log("in", c, "adv-greedy", 0, g, step=step, candidate=j, edits=edits[i] + [kind], score=s)
                if i not in best or s < best[i][0]:
                    best[i] = (s, c, kind, g.text)
            for i in range(len(items)):
                s, c, kind, text = best[i]
                if s < cur_score[i]:
                    cur[i], cur_score[i], cur_out[i] = c, s, text
                    edits[i] = edits[i] + [kind]
                curve[i].append(cur_score[i])

        # random: B * mc queries, each B random edits of the clean prompt; keep the worst seen
        n_q = B * mc
        rcands = []
        for i, it in enumerate(items):
            for q in range(n_q):
                rng = rng_for(cfg.seed, "adv-random", f"{it.id}:{q}")
                c, ks = it, []
                for e in range(B):
                    kind = rng.choice(kinds)
                    c = self._edit(c, kind, f"rand:{it.id}:{q}:{e}")
                    ks.append(kind)
                rcands.append((i, q, ks, c))
        rgens = self.generate([self._request(c, 0) for *_, c in rcands], "random search")
        r_best: list[tuple[float, PromptItem, list[str], str]] = [(clean_scores[i], it, [], clean[i][0])
                                                                  for i, it in enumerate(items)]
        r_curve: list[list[float]] = [[] for _ in items]
        r_queries = [0] * len(items)
        for (i, q, ks, c), g in zip(rcands, rgens):
            s = objs[i][1](g.text)
            r_queries[i] += 1
            self._log("in", c, "adv-random", 0, g, query=q, edits=ks, score=s)
            if s < r_best[i][0]:
                r_best[i] = (s, c, ks, g.text)
            if (q + 1) % mc == 0:
                r_curve[i].append(r_best[i][0])

        examples = []
        for i, it in enumerate(items):
            rs, rc, rks, rtext = r_best[i]
            examples.append({
                "prompt_id": it.id, "objective": objs[i][0], "clean_score": clean_scores[i],
                "clean_prompt": it.text(), "clean_output": clean[i][0],
                "greedy": {"score": cur_score[i], "edits": edits[i], "prompt": cur[i].text(), "output": cur_out[i],
                           "queries": g_queries[i], "curve": curve[i]},
                "random": {"score": rs, "edits": rks, "prompt": rc.text(), "output": rtext,
                           "queries": r_queries[i], "curve": r_curve[i]}})
        examples.sort(key=lambda e: (e["greedy"]["score"], e["prompt_id"]))
        n = len(items)

        def mean_curve(cv: list[list[float]]) -> list[float]:
            return [sum(c[s] for c in cv) / n for s in range(B)]

        return {"measured": True, "items": n, "budget": B, "candidates_per_step": mc, "queries_per_search": n_q,
                "kinds": list(kinds), "objective": sorted({o[0] for o in objs}),
                "clean": self.summary(clean_scores),
                "greedy": {"final": self.summary(cur_score), "curve": mean_curve(curve),
                           "queries": g_queries, "edits_used_mean": sum(len(e) for e in edits) / n},
                "random": {"final": self.summary([b[0] for b in r_best]), "curve": mean_curve(r_curve),
                           "queries": r_queries},
                "greedy_better_share": sum(cur_score[i] < r_best[i][0] for i in range(n)) / n,
                "random_better_share": sum(r_best[i][0] < cur_score[i] for i in range(n)) / n,
                "examples": examples}

    # ------------------------------------------------------------------ domain shift
    def _ood(self, clean_in: dict[str, Any], ood_outs: list[list[str]]) -> dict[str, Any]:
        if self.cfg.ood is None:
            return NotMeasured("no --ood source given").to_json()
        o = self._set_metrics(self.ood_items, ood_outs)
        drop: dict[str, Any] = {}
        pi, po = clean_in["perplexity"], o["perplexity"]
        if pi.get("measured") and po.get("measured"):
            drop["perplexity_ratio"] = po["byte_perplexity"] / pi["byte_perplexity"]
            drop["token_perplexity_ratio"] = po["token_perplexity"] / pi["token_perplexity"]
            drop["bits_per_byte_delta"] = po["bits_per_byte"] - pi["bits_per_byte"]
        else:
            drop["perplexity_ratio"] = None
        if clean_in["self_bleu"].get("measured") and o["self_bleu"].get("mean") is not None \
                and clean_in["self_bleu"].get("mean") is not None:
            drop["self_bleu_delta"] = o["self_bleu"]["mean"] - clean_in["self_bleu"]["mean"]
        if clean_in["reference"].get("measured") and o["reference"].get("measured"):
            for k in ("bleu", "chrf", "ter"):
                drop[f"reference_{k}_delta"] = o["reference"][k]["score"] - clean_in["reference"][k]["score"]
        if clean_in["accuracy"].get("measured") and o["accuracy"].get("measured"):
            drop["accuracy_delta"] = o["accuracy"]["mean"] - clean_in["accuracy"]["mean"]
        return {"measured": True, "source": self.cfg.ood, "in_domain": clean_in, "ood": o,
                "drop": drop, "deltas": "OOD minus in-domain"}

    # ------------------------------------------------------------------ signature
    def signature(self) -> dict[str, Any]:
        import sacrebleu

        cfg = self.cfg
        rates = cfg.rates
        sig: dict[str, Any] = {
            **self.base_signature(cfg.decoding, cfg.samples),
            "seed": cfg.seed,
            "perturbation": {"kinds": list(cfg.kinds), "rates": rates, "rate_given": cfg.rate, "seed": cfg.seed,
                             "index": "the item's id", "target": "prompt; a chat's last user turn; a translation's source"},
            "search": {"items": min(cfg.adv_items, len(self.items)), "kinds": list(cfg.search_kinds),
                       "budget": cfg.budget, "queries_given": cfg.queries, "candidates_per_step": cfg.candidates_per_step,
                       "queries_per_search": cfg.budget * cfg.candidates_per_step,
                       "objective": "sentence chrF of sample 0 to the references, else to the clean output; lower = worse",
                       "random_baseline": "each query: budget random edits of the clean prompt; the worst seen kept"},
            "prompts": {"source": self.prompts_label, "items": len(self.items), "sha256": prompts_sha(self.items)},
            "ood": ({"source": cfg.ood, "items": len(self.ood_items), "sha256": prompts_sha(self.ood_items)}
                    if cfg.ood is not None else None),
            "perplexity": None,
            "metrics": {"semantic_model": "all-MiniLM-L6-v2", "bootstrap_resamples": cfg.bootstrap, "ci": 0.95,
                        "sacrebleu": sacrebleu.__version__,
                        "sentence_bleu": "effective_order=True; tokenize zh for Chinese; identical outputs = 100",
                        "pdr": "PromptBench: 1 - sum M(perturbed) / sum M(clean) over items",
                        "worst_case": "HELM: per-item min over original and perturbed, mean over items"},
            **self.host(),
        }
        if self.logprobs:
            from ..data.tokenizer import tokenizer_signature

            sig["perplexity"] = {"window": self.ppl_window, "stride": self.ppl_window, "special": "no",
                                 "tok": tokenizer_signature(self.backend.tokenizer),  # type: ignore[attr-defined]
                                 "on": "the prompt text (a chat's turns joined by newlines)"}
        b = sig["backend"]
        rate = "default" if cfg.rate is None else f"{cfg.rate:g}"
        sig["string"] = "|".join([f"steadylm:{__version__}", f"backend:{b['backend']}",
                                  f"model:{b.get('model_hash') or b.get('model')}",
                                  f"T:{cfg.decoding.temperature:g}", f"max_new:{cfg.decoding.max_new_tokens}",
                                  f"K:{cfg.samples}", f"seed:{cfg.seed}", f"kinds:{','.join(cfg.kinds)}",
                                  f"rate:{rate}", f"B:{cfg.budget}", f"Q:{cfg.budget * cfg.candidates_per_step}",
                                  f"prompts:{sig['prompts']['sha256']}"]
                                 + ([f"ood:{sig['ood']['sha256']}"] if sig["ood"] else []))
        return sig


__all__ = ["RobustnessConfig", "RobustnessEval", "performance_drop_rate", "worst_case", "DEFAULT_KINDS", "ZH_KINDS",
           "default_kinds", "CHAR_KINDS",
           "PDR_METRICS"]
