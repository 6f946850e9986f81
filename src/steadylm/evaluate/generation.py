"""``steadylm eval generation``: how steady a model's answers are, for a local folder or an endpoint.

For every prompt the model writes ``K`` samples under each seed (``--samples K --seeds 0,1,2``).
The sample with index ``k`` under seed ``s`` draws from a random stream seeded by
``(s, prompt id, k)`` (`backends.base.sample_seed`), so any sample can be regenerated alone.

Measured (every number per prompt and aggregated with a bootstrap confidence interval over prompts):

* **consistency** among the K samples of one seed (needs K >= 2), and among the first samples of
  the seeds (needs >= 2 seeds): pairwise self-BLEU and chrF (sacrebleu), semantic similarity
  (all-MiniLM-L6-v2), answer agreement / majority share / accuracy for items with a short ``answer``;
* **contradiction** (SelfCheckGPT-NLI) with ``--nli-model``; otherwise recorded as not measured;
* **degeneration**: seq-rep-n, distinct-n, share of outputs caught in a loop, and (local models)
  Welleck et al.'s next-token rep / wrep on the reference text;
* **relevance**: semantic similarity of prompt (or dialogue so far) and response; for chat items
  that ask a question again at a later turn, whether both turns get the same answer;
* **reference** metrics on sample 0 of the first seed: corpus BLEU, chrF, TER (sacrebleu defaults,
  with sacrebleu's signature; ``tok:zh`` for Chinese references);
* **determinism** on the first ``--determinism-prompts`` prompts: the same request again gives the
  same text (greedy and sampled); unique completions over ``--determinism-runs`` greedy runs; batch
  invariance (a prompt alone versus inside a batch: max logit difference and the first position
  where greedy outputs diverge); for local models also float32 versus bfloat16 and 1 thread versus
  the default. ``steadylm compare`` lines up two runs made on different machines.

Outputs in ``--out``: ``results.json`` (every number with its signature), ``generations.jsonl``
(every output: ``prompt_id``, ``seed``, ``sample``, ``text``, ...) and ``cache.jsonl`` (finished
requests; running the same command again resumes from it).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..errors import ConfigError, SteadyError
from ..fsutil import to_json, write_text_atomic
from .backends.base import Backend, DecodingSettings, Generation, Request
from .prompts import PromptItem
from .result import NotMeasured, as_json
from .run import EvalRun, prompts_sha


@dataclass
class GenerationEvalConfig:
    """Settings of one ``eval generation`` run."""

    prompts: str = "builtin"
    samples: int = 4
    seeds: tuple[int, ...] = (0,)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    n_builtin: int = 32
    nli_model: str | None = None
    determinism: bool = True
    determinism_prompts: int = 8
    determinism_runs: int = 5
    environments: bool = True
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds has a repeated seed: {','.join(map(str, self.seeds))}")
        if self.determinism_prompts < 1 or self.determinism_runs < 2:
            raise ConfigError("--determinism-prompts must be >= 1 and --determinism-runs >= 2")
        if self.bootstrap < 100:
            raise ConfigError(f"--bootstrap must be >= 100 resamples, got {self.bootstrap}")


def _request(item: PromptItem, sample: int, seed: int, settings: DecodingSettings, repeat: int = 0,
             messages: tuple | None = None, pid: str | None = None) -> Request:
    if messages is not None:
        return Request(pid or item.id, sample, seed, settings, messages=messages, repeat=repeat)
    if item.is_chat:
        return Request(pid or item.id, sample, seed, settings, messages=item.messages, repeat=repeat)
    return Request(pid or item.id, sample, seed, settings, prompt=item.prompt, repeat=repeat)


def _norm_q(text: str) -> str:
    return " ".join(text.lower().split()).strip(" ?？!！.。")


def repeated_questions(item: PromptItem) -> list[int]:
    """Indices of earlier user turns that ask the same question as the last user turn."""
    if not item.is_chat:
        return []
    msgs = item.messages or ()
    last = _norm_q(msgs[-1][1])
    return [j for j, (r, c) in enumerate(msgs[:-1]) if r == "user" and _norm_q(c) == last]


def first_divergence(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """Index of the first position where two sequences differ (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _text_agreement(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    from .degeneration import units

    div = [first_divergence(units(a), units(b)) for a, b in pairs]
    diverged = [d for d in div if d is not None]
    return {"n": len(pairs), "identical_share": (len(pairs) - len(diverged)) / len(pairs) if pairs else None,
            "first_divergence_mean": sum(diverged) / len(diverged) if diverged else None,
            "first_divergence_min": min(diverged) if diverged else None,
            "position_unit": "whitespace word / CJK character"}


class GenerationEval(EvalRun):
    """One evaluation: set up, generate (with the cache), measure, write."""

    def __init__(self, backend: Backend, items: list[PromptItem], cfg: GenerationEvalConfig, out: str | Path,
                 *, progress: bool = True, prompts_label: str | None = None, rank: int = 0, world_size: int = 1,
                 shard_timeout: float = 24 * 3600.0):
        if not items:
            raise SteadyError("no prompts to evaluate")
        self.items, self.cfg = items, cfg
        self.progress = progress
        self.prompts_label = prompts_label or cfg.prompts
        self.rank, self.world = rank, world_size
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside a world of {world_size} processes")
        self.shard_timeout = shard_timeout
        self._nli = None
        if cfg.nli_model is not None:  # fail before generating anything, and before --out is created
            from .contradiction import NLIScorer

            self._nli = NLIScorer(cfg.nli_model)
        # data-parallel: rank 0 holds the folder for all ranks and keeps the run's cache.jsonl; other
        # ranks write their own file (no two writers)
        super().__init__(backend, out, bootstrap=cfg.bootstrap, lock=rank == 0,
                         cache_name="cache.jsonl" if rank == 0 else f"cache.rank-{rank}.jsonl")

    # ------------------------------------------------------------------ generation
    def main_requests(self) -> list[Request]:
        reqs = []
        for it in self.items:
            for seed in self.cfg.seeds:
                for k in range(self.cfg.samples):
                    reqs.append(_request(it, k, seed, self.cfg.decoding))
        return reqs

    def turn_requests(self) -> list[tuple[PromptItem, int, Request]]:
        """For chat items asking a question again: the dialogue cut at the earlier asking."""
        out = []
        for it in self.items:
            for j in repeated_questions(it):
                msgs = tuple((it.messages or ())[:j + 1])
                out.append((it, j, _request(it, 0, self.cfg.seeds[0], self.cfg.decoding, messages=msgs,
                                            pid=f"{it.id}@turn{j}")))
        return out

    # ------------------------------------------------------------------ data parallel
    def _shard_token(self, requests: list[Request], rank: int) -> str:
        h = hashlib.sha256()
        for r in requests[rank::self.world]:
            h.update(r.key(self.backend.identity).encode())
        return h.hexdigest()

    def _run_shard(self, requests: list[Request]) -> None:
        """Data-parallel generation: rank ``r`` of ``w`` generates requests ``r, r+w, ...`` into
        its own ``cache.rank-r.jsonl`` and leaves a marker naming exactly which requests it did;
        rank 0 waits for every marker, reads every shard's cache, and measures as usual (every
        generation is then a cache hit). Outputs equal a one-process run, since each request
        is seeded on its own. No collective communication: it works under ``accelerate launch``
        or ``torchrun`` (which set RANK and WORLD_SIZE) on one machine or a shared file system."""
        shard = requests[self.rank::self.world]
        self.generate(shard, f"generating (rank {self.rank}/{self.world})")
        marker = self.out / f"shard-{self.rank}-of-{self.world}.done"
        write_text_atomic(marker, self._shard_token(requests, self.rank) + "\n")
        if self.rank != 0:
            return
        deadline = time.time() + self.shard_timeout
        for r in range(1, self.world):
            m = self.out / f"shard-{r}-of-{self.world}.done"
            want = self._shard_token(requests, r)
            while not (m.is_file() and m.read_text().strip() == want):
                if time.time() > deadline:
                    raise SteadyError(f"rank {r} of {self.world} did not finish its shard within {self.shard_timeout:.0f} s "
                                      f"(no {m.name} for this run); its finished generations are kept in "
                                      f"{self.out / f'cache.rank-{r}.jsonl'}")
                time.sleep(0.5)
            self.cache.absorb(self.out / f"cache.rank-{r}.jsonl")

    # ------------------------------------------------------------------ metrics
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        cfg = self.cfg
        main = self.main_requests()
        turns = self.turn_requests()
        everything = main + [r for _, _, r in turns]
        if self.world > 1:
            self._run_shard(everything)
            if self.rank != 0:
                return {"rank": self.rank, "world_size": self.world, "generated": len(everything[self.rank::self.world])}
        gens = self.generate(everything, "generating")
        turn_gens = gens[len(main):]
        gens = gens[:len(main)]
        by_prompt: dict[str, dict[int, list[str]]] = {}
        for g in gens:
            by_prompt.setdefault(g.request.prompt_id, {}).setdefault(g.request.seed, []).append(g.text)
        self._write_generations(gens, turn_gens)

        results: dict[str, Any] = {"signature": self.signature()}
        per_item: dict[str, Mapping[str, Any]] = {}  # per-prompt field -> item id -> value, in results.json's order
        results["consistency"] = self._consistency(by_prompt, per_item)
        results["contradiction"] = self._contradiction(by_prompt, per_item)
        results["degeneration"] = self._degeneration(by_prompt, per_item)
        results["relevance"] = self._relevance(by_prompt, per_item, turns, turn_gens)
        results["reference"] = self._reference(by_prompt, per_item)
        if cfg.determinism:
            results["determinism"] = self._determinism(gens)
        else:
            results["determinism"] = NotMeasured("turned off (--no-determinism)").to_json()
        results["warnings"] = self._warnings(by_prompt)
        results["per_prompt"] = [{"prompt_id": it.id, **{k: v[it.id] for k, v in per_item.items() if it.id in v}}
                                 for it in self.items]
        results["counts"] = {"prompts": len(self.items), "generations": len(gens) + len(turn_gens),
                             "from_cache": sum(g.cached for g in gens + turn_gens)}
        results["elapsed_s"] = round(time.time() - t0, 2)
        self.write_results(results)
        return results

    def _warnings(self, by_prompt) -> list[str]:
        """What the numbers cannot say for themselves. Every sample identical at T > 0, across
        samples and seeds, means the sampler is not sampling: a server that decodes greedily
        whatever it is sent (``transformers serve`` does unless the model's generation config
        asks for sampling) makes every consistency score perfect."""
        cfg, st = self.cfg, self.cfg.decoding
        out: list[str] = []
        if st.greedy or cfg.samples * len(cfg.seeds) < 2 or not self.items:
            return out
        if all(len(set(self._outputs(by_prompt, it))) == 1 for it in self.items):
            n = cfg.samples * len(cfg.seeds)
            out.append(f"every prompt's {n} samples at temperature {st.temperature:g} are identical (across samples "
                       "and seeds): the backend may be ignoring the sampling settings (a server decoding greedily), "
                       "so the consistency scores say nothing about sampling")
        return out

    def _outputs(self, by_prompt, item: PromptItem) -> list[str]:
        """Every output of one item: seed by seed, sample by sample."""
        return [t for s in self.cfg.seeds for t in by_prompt[item.id][s]]

    def _consistency(self, by_prompt, per_item) -> dict[str, Any]:
        from .consistency import AnswerAgreement, SelfSimilarity

        cfg = self.cfg
        res: dict[str, Any] = {}
        K, S = cfg.samples, len(cfg.seeds)
        if not (K >= 2 or S >= 2):
            note = NotMeasured("consistency needs --samples >= 2 or two or more --seeds; K = 1 gives reference "
                               "metrics only").to_json()
            res["across_samples"], res["across_seeds"] = note, dict(note)
        else:
            sim = SelfSimilarity(self.embedder, n_resamples=self.bootstrap)
            for scope, ok, reason in (("across_samples", K >= 2, "needs --samples >= 2"),
                                      ("across_seeds", S >= 2, "needs two or more --seeds")):
                if not ok:
                    res[scope] = NotMeasured(reason).to_json()
                    continue
                records = {}
                for it in self.items:
                    seeds = by_prompt[it.id]
                    records[it.id] = sim.item([seeds[s] for s in cfg.seeds] if scope == "across_samples"
                                              else [[seeds[s][0] for s in cfg.seeds]])
                per_item[scope] = records
                res[scope] = {"measured": True, **as_json(sim.score(records))}
        answered = [it for it in self.items if it.answer is not None]
        if answered:
            agree = AnswerAgreement(n_resamples=self.bootstrap)
            records = {it.id: agree.item(self._outputs(by_prompt, it), it.answer) for it in answered}
            per_item["answers"] = records
            res["answers"] = {"measured": True, "items": len(records), **as_json(agree.score(records))}
        else:
            res["answers"] = NotMeasured("no item has a short 'answer'").to_json()
        return res

    def _contradiction(self, by_prompt, per_item) -> dict[str, Any]:
        from .contradiction import SelfContradiction

        cfg = self.cfg
        if self._nli is None:
            return NotMeasured("no --nli-model given (SelfCheckGPT-NLI needs a local NLI model folder)").to_json()
        if cfg.samples * len(cfg.seeds) < 2:
            return NotMeasured("needs at least two samples per prompt").to_json()
        metric = SelfContradiction(self._nli, n_resamples=self.bootstrap, name=cfg.nli_model)
        r = metric.score({it.id: metric.item(self._outputs(by_prompt, it)) for it in self.items})
        per_item["contradiction"] = r.per_item
        return {"measured": True, **r.signature, "score": r.to_json()}

    def _degeneration(self, by_prompt, per_item) -> dict[str, Any]:
        from .degeneration import Degeneration, next_token_repetition

        r = Degeneration().score({it.id: self._outputs(by_prompt, it) for it in self.items})
        per_item["loop_share"] = r.per_item
        res: dict[str, Any] = r.to_json()
        refs = [ref for it in self.items for ref in it.references]
        if not self.backend.capabilities.next_token:
            res["next_token"] = NotMeasured("needs token log-probabilities of a local model").to_json()
        elif not refs:
            res["next_token"] = NotMeasured("no reference text in the prompt set").to_json()
        else:
            targets, preds = [], []
            for ref in refs:
                t, p = self.backend.next_token_predictions(ref)  # type: ignore[attr-defined]
                targets.append(t)
                preds.append(p)
            rr = next_token_repetition(targets, preds)  # pooled over documents; context never crosses them
            res["next_token"] = {"measured": True, "context": rr["context"], "tokens": rr["n"],
                                 "rep": rr["rep"], "wrep": rr["wrep"], "on": "the prompt set's references"}
        return res

    def _relevance(self, by_prompt, per_item, turns, turn_gens) -> dict[str, Any]:
        from .consistency import answer_stats

        cfg = self.cfg
        prompts, responses, owner = [], [], []
        for it in self.items:
            for t in self._outputs(by_prompt, it):
                prompts.append(it.text())
                responses.append(t)
                owner.append(it.id)
        P = self.embedder.encode(prompts)
        R = self.embedder.encode(responses)
        sims = (P * R).sum(axis=1).tolist()
        per: dict[str, list[float]] = {}
        for i, v in zip(owner, sims):
            per.setdefault(i, []).append(v)
        r = self.summarize({it.id: sum(per[it.id]) / len(per[it.id]) if it.id in per else None for it in self.items})
        per_item["relevance"] = r.per_item
        res: dict[str, Any] = {"prompt_response": r.to_json(), "embedding": "all-MiniLM-L6-v2 cosine"}
        if turns:
            rows = []
            for (it, j, _), g in zip(turns, turn_gens):
                later = by_prompt[it.id][cfg.seeds[0]][0]
                e = self.embedder.encode([g.text, later])
                same = answer_stats([g.text, later]).get("agreement")
                rows.append({"prompt_id": it.id, "earlier_turn": j, "semantic": float((e[0] * e[1]).sum()),
                             "same_answer": same, "earlier": g.text, "later": later})
            res["repeated_question"] = {"measured": True, "pairs": len(rows),
                                        "semantic": self.summarize([r["semantic"] for r in rows]).to_json(),
                                        "same_answer": self.summarize([r["same_answer"] for r in rows]).to_json(),
                                        "examples": rows[:20]}
        else:
            res["repeated_question"] = NotMeasured("no chat item asks its last question at an earlier turn too").to_json()
        return res

    def _reference(self, by_prompt, per_item) -> dict[str, Any]:
        from .reference import CorpusReference

        first = self.cfg.seeds[0]
        refd = [it for it in self.items if it.references]
        if not refd:
            return NotMeasured("no item has a reference").to_json()
        r = CorpusReference().score({it.id: by_prompt[it.id][first][0] for it in refd},
                                    {it.id: it.references for it in refd})
        per_item["reference"] = r.per_item
        return {**r.to_json(), "measured": True, "on": "sample 0 of the first seed", "items": len(refd)}

    # ------------------------------------------------------------------ determinism
    def _determinism(self, gens: list[Generation]) -> dict[str, Any]:
        cfg = self.cfg
        items = self.items[:cfg.determinism_prompts]
        greedy = replace(cfg.decoding, temperature=0.0)
        sampled = cfg.decoding if not cfg.decoding.greedy else replace(cfg.decoding, temperature=1.0)
        seed = cfg.seeds[0]
        R = cfg.determinism_runs
        reqs: list[Request] = []
        for it in items:
            reqs += [_request(it, 0, seed, greedy, repeat=r) for r in range(1, R + 1)]
            reqs += [_request(it, 0, seed, sampled, repeat=r) for r in (1, 2)]
        got = self.generate(reqs, "determinism")
        per = 2 + R
        res: dict[str, Any] = {"prompts": len(items), "runs": R}
        uniq, same_g, same_s = [], [], []
        for n in range(len(items)):
            g = [x.text for x in got[n * per:n * per + R]]
            s = [x.text for x in got[n * per + R:n * per + R + 2]]
            uniq.append(len(set(g)))
            same_g.append(g[0] == g[1])
            same_s.append(s[0] == s[1])
        res["greedy_repeat"] = {"unique_completions_mean": sum(uniq) / len(uniq), "unique_completions_max": max(uniq),
                                "same_output_share": sum(same_g) / len(same_g)}
        res["same_seed_sampled"] = {"same_output_share": sum(same_s) / len(same_s), "decoding": sampled.as_dict()}
        caps = self.backend.capabilities
        if caps.next_token:  # the logits of each step, so batch invariance is measured on logits
            res["batch_invariance"] = self._batch_invariance_local(items, greedy)
            if not caps.environments:  # the ensemble: its members would all have to be reopened
                res["environments"] = NotMeasured("not implemented for ensembles; evaluate the members, or compare "
                                                   "two runs").to_json()
            elif cfg.environments:
                res["environments"] = self._environments_local(items, greedy, [x.text for x in got[0::per]])
            else:
                res["environments"] = NotMeasured("turned off (--no-environments)").to_json()
        else:
            res["batch_invariance"] = self._batch_invariance_http(items, greedy, [x.text for x in got[0::per]])
            res["environments"] = NotMeasured("a served model's dtype and threads are the server's; "
                                               "compare two runs with `steadylm compare`").to_json()
        return res

    def _batch_invariance_local(self, items: list[PromptItem], greedy: DecodingSettings) -> dict[str, Any]:
        """Each prompt alone (batch of 1) versus inside one left-padded batch of all of them."""
        import torch

        b = self.backend
        eos = getattr(b, "eos_id", None)

        def output(toks: list[int]) -> list[int]:
            # up to and including EOS: a row that stopped early is padded (often with EOS) while the
            # rest of its batch goes on, and those tokens are no output of it
            return toks[:toks.index(eos) + 1] if eos is not None and eos in toks else toks

        texts = [b.render(_request(it, 0, 0, greedy)) for it in items]  # type: ignore[attr-defined]
        batch_toks, batch_logits = b.greedy_logits(texts, greedy)  # type: ignore[attr-defined]
        max_diff, divs, rows = 0.0, [], []
        for n, t in enumerate(texts):
            toks, logits = b.greedy_logits([t], greedy)  # type: ignore[attr-defined]
            a, c = output(toks[0]), output(batch_toks[n])
            d = first_divergence(a, c)
            # logits up to and including the first divergent step, over the steps both rows produced
            common = min(len(a) if d is None else d + 1, len(a), len(c))
            diff = float((logits[0, :common] - batch_logits[n, :common]).abs().max()) if common else 0.0
            max_diff = max(max_diff, diff)
            divs.append(d)
            rows.append({"prompt_id": items[n].id, "max_logit_diff": diff, "first_divergence": d})
        diverged = [d for d in divs if d is not None]
        return {"measured": True, "batch": len(texts), "max_logit_diff": max_diff,
                "identical_share": (len(divs) - len(diverged)) / len(divs),
                "first_divergence_min": min(diverged) if diverged else None, "position_unit": "generated token",
                "per_prompt": rows, "dtype": getattr(b, "dtype", None), "torch": torch.__version__}

    def _batch_invariance_http(self, items, greedy, concurrent_texts: list[str]) -> dict[str, Any]:
        """Each prompt sent alone (one request in flight) versus the concurrent greedy run."""
        b = self.backend
        old = getattr(b, "concurrency", None)
        try:
            if old is not None:
                b.concurrency = 1  # type: ignore[attr-defined]
            alone = self.generate([_request(it, 0, self.cfg.seeds[0], greedy, repeat=self.cfg.determinism_runs + 1)
                                   for it in items], "alone")
        finally:
            if old is not None:
                b.concurrency = old  # type: ignore[attr-defined]
        out = _text_agreement([(a.text, c) for a, c in zip(alone, concurrent_texts)])
        out.update(measured=True, how="one request in flight versus the concurrent run; text only (no logits over HTTP)")
        return out

    def _environments_local(self, items, greedy, ref_texts: list[str]) -> dict[str, Any]:
        """float32 versus bfloat16, and one thread versus the default, on greedy outputs."""
        import torch

        from .backends.local import LocalBackend

        b = self.backend
        reqs = [_request(it, 0, self.cfg.seeds[0], greedy, repeat=9999) for it in items]
        res: dict[str, Any] = {"measured": True}
        other = "bfloat16" if b.dtype != "bfloat16" else "float32"  # type: ignore[attr-defined]
        alt = LocalBackend(b.path, dtype=other, batch_size=b.batch_size, device=b.device.type,  # type: ignore[attr-defined]
                           truncate_left=b.truncate_left)  # type: ignore[attr-defined]
        texts = [g.text for g in alt.generate(reqs)]
        res[f"{b.dtype}_vs_{other}"] = _text_agreement(list(zip(ref_texts, texts)))  # type: ignore[attr-defined]
        if b.device.type == "cpu" and torch.get_num_threads() > 1:  # type: ignore[attr-defined]
            n = torch.get_num_threads()
            old = b.threads  # type: ignore[attr-defined]
            b.threads = 1  # type: ignore[attr-defined]
            try:
                t1 = [g.text for g in b.generate(reqs)]
            finally:
                b.threads = old  # type: ignore[attr-defined]
            res[f"threads_{n}_vs_1"] = _text_agreement(list(zip(ref_texts, t1)))
        else:
            res["threads"] = NotMeasured("one CPU thread (or a GPU): nothing to vary").to_json()
        return res

    # ------------------------------------------------------------------ outputs
    def signature(self) -> dict[str, Any]:
        import sacrebleu

        cfg = self.cfg
        sig = {
            **self.base_signature(cfg.decoding, cfg.samples),
            "seeds": list(cfg.seeds),
            "prompts": {"source": self.prompts_label, "items": len(self.items), "sha256": prompts_sha(self.items)},
            "metrics": {"semantic_model": "all-MiniLM-L6-v2", "bootstrap_resamples": cfg.bootstrap, "ci": 0.95,
                        "sacrebleu": sacrebleu.__version__, "nli_model": cfg.nli_model,
                        "units": "whitespace words; CJK characters one unit each"},
            **self.host(),
        }
        b = sig["backend"]
        sig["string"] = "|".join([f"steadylm:{__version__}", f"backend:{b['backend']}",
                                  f"model:{b.get('model_hash') or b.get('model')}",
                                  f"T:{cfg.decoding.temperature:g}", f"top_p:{cfg.decoding.as_dict()['top_p']:g}",
                                  f"top_k:{cfg.decoding.as_dict()['top_k']}", f"max_new:{cfg.decoding.max_new_tokens}",
                                  f"K:{cfg.samples}", f"seeds:{','.join(map(str, cfg.seeds))}",
                                  f"prompts:{sig['prompts']['sha256']}"])
        return sig

    def _write_generations(self, gens: list[Generation], turn_gens: list[Generation]) -> None:
        lines = []
        for g in list(gens) + list(turn_gens):
            r = g.request
            lines.append(to_json({"prompt_id": r.prompt_id, "seed": r.seed, "sample": r.sample, "text": g.text,
                                  "finish_reason": g.finish_reason, "completion_tokens": g.completion_tokens,
                                  "stream_seed": None if r.settings.greedy else r.stream_seed}))
        write_text_atomic(self.out / "generations.jsonl", "\n".join(lines) + "\n")
        write_text_atomic(self.out / "prompts.jsonl",
                          "\n".join(to_json(it.to_json()) for it in self.items) + "\n")
