#!/usr/bin/env python3
"""Do ensembles make a steadylm model steadier? Members beside ensembles, measured, good or bad.

Trains three members on the built-in corpus, 200 steps each with the demo's optimiser settings
and no injected faults: ``tiny`` seed 0 (with an EMA of its weights), ``tiny`` seed 1 and
``tiny-qknorm`` seed 0 (another architecture; all three share the tokenizer, which steadylm
trains deterministically from the same split). Then evaluates, each on the same held-out data:

* members: ``tiny-s0``, ``tiny-s1``, ``qknorm-s0``;
* token level: ``ens-3`` (all three, probability averaging) and ``ens-seeds`` (the two tiny seeds);
* weight space: ``soup-seeds`` (uniform soup of the two tiny seeds - different seeds are not
  expected to average well; measured anyway), ``lawa-s0`` (latest-3 checkpoints of tiny-s0) and
  ``ema-s0`` (its EMA weights).

For each: validation perplexity (the held-out documents of the training split, as
``steadylm eval perplexity``), consistency over K = 4 sampled answers to 16 builtin prompts
(self-chrF, semantic similarity), reference chrF of sample 0, and robustness (chrF of the
perturbed output to the clean output and prompt perplexity shift over typo, ocr, filler; greedy;
members and ens-3 only, as it is the slow part). Writes ``OUT/study.json``, one results folder per
evaluation and ``OUT/report.html`` with members and ensembles side by side.

    python benchmarks/ensemble_study.py --out runs/ensemble-study      # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/ensemble-study")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from steadylm.config import TrainConfig
    from steadylm.data.sources import load_documents, split_documents
    from steadylm.ensemble.soup import latest_k, uniform_soup
    from steadylm.evaluate.backends import DecodingSettings, open_backend
    from steadylm.evaluate.generation import GenerationEval, GenerationEvalConfig
    from steadylm.evaluate.perplexity import evaluate_perplexity
    from steadylm.evaluate.prompts import builtin_prompts
    from steadylm.evaluate.robustness import RobustnessConfig, RobustnessEval
    from steadylm.train.loop import TrainingRun

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    members = {"tiny-s0": ("tiny", 0, 0.99), "tiny-s1": ("tiny", 1, 0.0), "qknorm-s0": ("tiny-qknorm", 0, 0.0)}
    runs = {}
    for name, (preset, seed, ema) in members.items():
        run = out / "runs" / name
        runs[name] = run
        if (run / "summary.json").is_file():
            continue
        cfg = TrainConfig.from_dict({"out": str(run), "steps": args.steps, "seed": seed, "ema": ema,
                                     "model": {"preset": preset}, "checkpoint": {"every": 25, "keep": 3},
                                     "optim": {"lr": 3e-3}})
        print(f"training {name} ...", file=sys.stderr)
        TrainingRun(cfg, overwrite=True).run()

    systems = {name: str(runs[name] / "model") for name in members}
    systems["ens-3"] = "ensemble:" + ",".join(systems[n] for n in members)
    systems["ens-seeds"] = f"ensemble:{systems['tiny-s0']},{systems['tiny-s1']}"
    systems["soup-seeds"] = str(uniform_soup([systems["tiny-s0"], systems["tiny-s1"]], out / "soup-seeds", method="uniform"))
    systems["lawa-s0"] = str(uniform_soup(latest_k(runs["tiny-s0"], 3), out / "lawa-s0", method="lawa"))
    systems["ema-s0"] = str(runs["tiny-s0"] / "model-ema")

    _, val = split_documents(load_documents("builtin:pydoc"), 0.1)
    val_file = out / "val.jsonl"
    val_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in val), encoding="utf-8")
    items = builtin_prompts(args.prompts)
    table: dict[str, dict] = {}
    for name, spec in systems.items():
        print(f"evaluating {name} ...", file=sys.stderr)
        row: dict = {"spec": spec}
        ppl = evaluate_perplexity(spec, str(val_file), progress=False)
        row["val_perplexity"] = ppl.token_perplexity
        row["val_bits_per_byte"] = ppl.bits_per_byte
        backend = open_backend(spec)
        gcfg = GenerationEvalConfig(prompts="builtin", samples=args.samples, seeds=(0,), n_builtin=args.prompts,
                                    decoding=DecodingSettings(temperature=1.0, max_new_tokens=args.max_new_tokens),
                                    determinism=False, bootstrap=500)
        ev = GenerationEval(backend, items, gcfg, out / "eval" / name, progress=False, prompts_label="builtin")
        try:
            res = ev.run()
        finally:
            ev.close()
        c = res["consistency"]["across_samples"]
        row.update(self_chrf=c["self_chrf"]["mean"], semantic=c["semantic"]["mean"],
                   reference_chrf=res["reference"]["chrf"]["score"], distinct_2=res["degeneration"]["distinct_2"])
        if name in ("tiny-s0", "tiny-s1", "qknorm-s0", "ens-3"):
            rcfg = RobustnessConfig(prompts="builtin", kinds=("typo", "ocr", "filler"), n_builtin=args.prompts,
                                    decoding=DecodingSettings(temperature=0.0, max_new_tokens=args.max_new_tokens),
                                    adv_items=0, bootstrap=500)
            rev = RobustnessEval(backend, items, rcfg, out / "robust" / name, progress=False, prompts_label="builtin")
            try:
                rr = rev.run()
            finally:
                if hasattr(rev, "close"):
                    rev.close()
            agg = rr["aggregate"]
            row["robust_chrf_to_clean"] = (agg.get("chrf") or {}).get("mean")
            row["robust_bpb_shift"] = (agg.get("perplexity_shift_bpb") or {}).get("mean")  # not measured for ensembles
        table[name] = row

    from steadylm.report.html import build_report

    inputs = [out / "runs" / n for n in members] + [out / "eval" / n for n in systems] + \
             [out / "robust" / n for n in ("tiny-s0", "tiny-s1", "qknorm-s0", "ens-3")]
    rep = build_report(inputs, out / "report.html", md=out / "summary.md", title="steadylm ensemble study")
    study = {"systems": table, "settings": vars(args), "seconds": time.time() - t0, "report": str(rep["html"])}
    (out / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n", encoding="utf-8")
    cols = ["val_perplexity", "self_chrf", "semantic", "reference_chrf", "distinct_2", "robust_chrf_to_clean", "robust_bpb_shift"]
    print(f"{'system':12s} " + " ".join(f"{c:>20s}" for c in cols))
    for name, row in table.items():
        print(f"{name:12s} " + " ".join(f"{row.get(c):>20.4g}" if isinstance(row.get(c), float) else f"{'-':>20s}" for c in cols))
    print(f"{time.time() - t0:.0f} s; report: {rep['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
