"""Per-step cost of each clipper and of the spike guard, against no clipping, in one run.

Every variant trains its own copy of the demo model (preset ``tiny``, vocab 4096, context 128,
batch 16, fused AdamW) on the same random token batches. Variants are interleaved in rounds of a
few steps, so drift in the machine's speed hits all of them alike; the figure per variant is the
median step time over all its timed steps (warm-up steps excluded), and the table gives the ratio
to the ``none`` variant (plain forward, backward, AdamW step, no clipping).

``zclip-ref`` is the reference implementation (``zclip`` 1.0.0 from PyPI, a test-only dependency:
``pip install zclip==1.0.0``), driven the same way, so steadylm's ZClip can be compared with it.
``norm+guard`` adds the spike/NaN guard (skip action) to norm clipping; its cost is read against
``norm``.

    python benchmarks/clip_overhead.py [--rounds 10] [--steps-per-round 4] [--threads N] [--out FILE.json]

On a CPU these costs sit inside the noise of a step; what costs at scale is a host-device sync
per step, which only a GPU can show (see the clippers' docstrings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from steadylm.models import build_model
from steadylm.train.clip import AGC, AutoClip, NoClip, NormClip, ZClip
from steadylm.train.spikes import SpikeGuard

V, T, B = 4096, 128, 16


class RefZClip:
    """zclip 1.0.0 behind steadylm's clipper interface (it clips in place and returns the norm)."""

    def __init__(self, model):
        from zclip import ZClip as Reference

        self.ref = Reference()
        self.model = model

    def clip_(self, params):
        self.ref.step(self.model)
        return None


def make(variant: str):
    model = build_model("tiny", vocab_size=V, context=T, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    guard = None
    if variant == "none":
        clipper = NoClip()
    elif variant in ("norm", "norm+guard"):
        clipper = NormClip(1.0)
        guard = SpikeGuard("skip") if variant == "norm+guard" else None
    elif variant == "autoclip":
        clipper = AutoClip()
    elif variant == "zclip":
        clipper = ZClip()
    elif variant == "zclip-ref":
        clipper = RefZClip(model)
    elif variant == "agc":
        clipper = AGC(exclude=[model.get_output_embeddings().weight])
    else:
        raise ValueError(variant)
    return model, opt, clipper, guard


def step(model, opt, clipper, guard, x, y, n, *, bare: bool):
    logits = model(input_ids=x, use_cache=False).logits
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    loss.backward()
    params = [p for p in model.parameters()]
    stats = None if bare else clipper.clip_(params)
    if guard is not None:
        # the guard reads loss and norm on the host; that read is counted here
        if guard.check(n, float(loss.detach()), float(stats.norm)):
            opt.zero_grad(set_to_none=True)
            return
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps-per-round", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["none", "norm", "autoclip", "zclip", "agc", "norm+guard"]
    try:
        import zclip  # noqa: F401

        variants.append("zclip-ref")
    except ImportError:
        print("zclip not installed: the reference comparison is left out (pip install zclip==1.0.0)")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, V, (B, T + 1), generator=g) for _ in range(8)]
    state = {v: make(v) for v in variants}
    counter = {v: 0 for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}

    def run(v, timed):
        model, opt, clipper, guard = state[v]
        b = batches[counter[v] % len(batches)]
        counter[v] += 1
        t0 = time.perf_counter()
        step(model, opt, clipper, guard, b[:, :-1], b[:, 1:], counter[v], bare=(v == "none"))
        dt = time.perf_counter() - t0
        if timed:
            times[v].append(dt)

    for v in variants:
        for _ in range(args.warmup):
            run(v, False)
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            for _ in range(args.steps_per_round):
                run(v, True)

    base = statistics.median(times["none"])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        ref = statistics.median(times["norm"]) if v == "norm+guard" else base
        rows.append({"variant": v, "median_ms": med * 1e3, "steps": len(times[v]), "ratio": med / ref,
                     "against": "norm" if v == "norm+guard" else "none"})
    print(f"{'variant':12s} {'median ms':>10s} {'steps':>6s} {'ratio':>7s}  against")
    for r in rows:
        print(f"{r['variant']:12s} {r['median_ms']:10.1f} {r['steps']:6d} {r['ratio']:7.3f}  {r['against']}")
    if "zclip-ref" in times:
        ours, theirs = statistics.median(times["zclip"]), statistics.median(times["zclip-ref"])
        print(f"steadylm ZClip / reference zclip step time: {ours / theirs:.3f} (<= 1.0 means no slower)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
