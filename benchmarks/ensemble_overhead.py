#!/usr/bin/env python3
"""Token-level ensemble overhead: K members cost at most ~K times one model (target ratio/K <= 1.1).

Workload: ``--prompts`` prompts from ``builtin`` (held-out pydoc paragraphs) x ``--samples``
continuations each, ``--max-new-tokens`` tokens, ``--batch-size`` rows per batch, greedy and sampled
(temperature 1). Members: K models of preset ``--preset`` (default ``tiny``, Llama-style) with
different random seeds and one byte-level BPE (``--vocab`` tokens) trained on the built-in corpus;
weights are random - speed does not depend on them, and EOS is disabled on every side so each
generates exactly ``max_new_tokens`` tokens per row.

* **single**: ``LocalBackend.generate`` of member 1 (HF ``generate`` with the KV cache);
* **ensemble K**: ``EnsembleBackend.generate`` over members 1..K (K = 2, 3), the same requests;
* **ensemble-1**: ``EnsembleBackend`` of member 1 alone - the ensemble's own decoding loop (it
  replaces HF ``generate``) without any averaging, to separate the loop's cost from the averaging's.

Each side runs ``--repeats`` times, interleaved (forward then reversed order), after one warm-up
call each; the median wall time is reported, and ``ratio / K`` = t(ensemble K) / t(single) / K
(the issue's target: <= 1.1), and beside it t(ensemble K) / t(ensemble-1) / K. Below 1 means the
ensemble costs less per member than one model does - for a small model, HF ``generate``'s per-step
overhead is paid once per step, not once per member.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from steadylm.data.sources import load_documents, split_documents
    from steadylm.data.tokenizer import train_bpe
    from steadylm.ensemble.token import EnsembleBackend
    from steadylm.evaluate.backends import DecodingSettings, Request
    from steadylm.evaluate.backends.local import LocalBackend
    from steadylm.evaluate.prompts import builtin_prompts
    from steadylm.models import build_model, save_model

    train, _ = split_documents(load_documents("builtin:pydoc"), 0.1)
    tok = train_bpe(train, args.vocab)
    tmp = Path(tempfile.mkdtemp(prefix="steadylm-ensbench-"))
    paths = []
    for k in range(3):
        m = build_model(args.preset, vocab_size=len(tok), context=256, seed=k,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        paths.append(str(save_model(m, tok, tmp / f"m{k}")))
    n_params = sum(p.numel() for p in m.parameters())

    single = LocalBackend(paths[0], batch_size=args.batch_size)
    single.eos_id = None  # max_new_tokens on every side
    ens = {K: EnsembleBackend(paths[:K], batch_size=args.batch_size) for K in (1, 2, 3)}
    for e in ens.values():
        e.eos_id = e.lead.eos_id = None
    items = builtin_prompts(args.prompts)
    T = args.max_new_tokens
    decodings = {"greedy": DecodingSettings(temperature=0.0, max_new_tokens=T),
                 "sampled": DecodingSettings(temperature=1.0, max_new_tokens=T)}

    res: dict = {"model": {"preset": args.preset, "parameters": n_params, "vocab": len(tok)},
                 "workload": {"prompts": len(items), "samples": args.samples, "max_new_tokens": T,
                              "batch_size": args.batch_size, "repeats": args.repeats,
                              "threads": torch.get_num_threads(), "torch": torch.__version__},
                 "decodings": {}}
    print(f"model {args.preset}: {n_params / 1e6:.2f} M parameters, vocab {len(tok)}; {len(items)} prompts x "
          f"{args.samples} samples, {T} new tokens, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"{'decoding':9s} {'side':12s} {'median s':>9s} {'ratio':>6s} {'ratio/K':>8s} {'vs ens-1 /K':>12s}")
    for dname, st in decodings.items():
        reqs = [Request(it.id, s, 0, st, prompt=it.prompt) for it in items for s in range(args.samples)]
        sides = {"single": single.generate, "ensemble-1": ens[1].generate, "ensemble-2": ens[2].generate,
                 "ensemble-3": ens[3].generate}
        for f in sides.values():  # warm-up
            f(reqs[:4])
        times: dict[str, list[float]] = {k: [] for k in sides}
        order = list(sides)
        for r in range(args.repeats):
            for name in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                gens = sides[name](reqs)
                times[name].append(time.perf_counter() - t0)
                assert all(g.completion_tokens == T for g in gens), name
                print(f"  {dname} round {r + 1} {name:10s} {times[name][-1]:7.2f} s", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in times.items()}
        d = {"median_s": med, "times": times}
        for K in (2, 3):
            d[f"ratio_{K}"] = med[f"ensemble-{K}"] / med["single"]
            d[f"ratio_per_member_{K}"] = d[f"ratio_{K}"] / K
            d[f"ratio_per_member_vs_ensemble1_{K}"] = med[f"ensemble-{K}"] / med["ensemble-1"] / K
        res["decodings"][dname] = d
        print(f"{dname:9s} {'single':12s} {med['single']:9.2f}")
        print(f"{dname:9s} {'ensemble-1':12s} {med['ensemble-1']:9.2f} {med['ensemble-1'] / med['single']:6.2f}")
        for K in (2, 3):
            print(f"{dname:9s} {f'ensemble-{K}':12s} {med[f'ensemble-{K}']:9.2f} {d[f'ratio_{K}']:6.2f} "
                  f"{d[f'ratio_per_member_{K}']:8.2f} {d[f'ratio_per_member_vs_ensemble1_{K}']:12.2f}")
    worst = max(d[f"ratio_per_member_{K}"] for d in res["decodings"].values() for K in (2, 3))
    res["worst_ratio_per_member"] = worst
    print(f"worst ratio/K: {worst:.2f} (target <= 1.1: an ensemble of K costs at most 1.1 K x one model)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
