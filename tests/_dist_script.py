"""Worker for tests/test_distributed.py: train the nano model with `Stabilizer` for a few steps.

Run as one process (``--mode single``, the reference on the full global batch) or under a launcher
with 2 CPU processes (gloo), each rank on its half of the same global batch::

    accelerate launch --num_processes 2 --cpu tests/_dist_script.py --mode ddp --out DIR
    torchrun --nproc_per_node 2 tests/_dist_script.py --mode fsdp --out DIR

For every clipper it writes ``DIR/<clipper>.json`` (per-step loss, norm, threshold, clipped) and
``DIR/<clipper>.pt`` (final full weights), from rank 0, or ``DIR/<clipper>.error`` if it raised.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

VOCAB, CONTEXT, GLOBAL_BATCH, STEPS = 300, 16, 4, 6
CLIPPERS = ("norm", "zclip", "agc")
RUNS = CLIPPERS + ("norm_accum",)  # norm_accum: NormClip, each rank's half in 2 accumulated micro-batches


def make_clipper(name: str):
    from steadylm.train.clip import AGC, NormClip, ZClip

    if name == "zclip":  # short warm-up so that most steps clip adaptively; no cap
        return ZClip(warmup_steps=2, z_thresh=1.0, max_grad_norm=None)
    if name == "norm":
        return NormClip(0.5)  # below the nano model's norms: every step clips
    return AGC(clipping=0.01, exclude=["lm_head"])  # names resolved at clip time (DDP/FSDP safe)


def global_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, CONTEXT), generator=g)  # (B, T)


def train(run: str, *, mode: str = "single", accelerator=None, steps: int = STEPS) -> tuple[list[dict], dict]:
    """(per-step reports, full final weights) for one of `RUNS`; ``mode`` single, ddp or fsdp."""
    clipper, accum = (run, 1) if run in CLIPPERS else ("norm", 2)
    from steadylm.models import build_model
    from steadylm.train.spikes import SpikeGuard
    from steadylm.train.stabilizer import Stabilizer

    model = build_model("nano", vocab_size=VOCAB, context=CONTEXT, seed=0)
    model.train()
    rank, world = 0, 1
    if mode == "fsdp":
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        rank, world = dist.get_rank(), dist.get_world_size()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    # SGD, not Adam: Adam divides by sqrt(v), which blows the last-bit differences between a
    # 2-rank all-reduce and a 1-process sum up to ~1e-4 in entries whose gradient is ~0.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    if mode == "ddp":
        model, optimizer = accelerator.prepare(model, optimizer)
        rank, world = accelerator.process_index, accelerator.num_processes
    stab = Stabilizer(model, optimizer, clipper=make_clipper(clipper), guard=SpikeGuard("skip"),
                      accelerator=accelerator, accum_steps=accum)
    per = GLOBAL_BATCH // world
    reports = []
    for step in range(steps):
        x = global_batch(step)[rank * per:(rank + 1) * per]  # this rank's half (all of it in one process)
        for micro in x.chunk(accum):
            with stab.accumulate():  # DDP: no all-reduce on the first micro-batch
                loss = model(input_ids=micro, labels=micro).loss
            report = stab.step(loss)
        reports.append(report.as_dict())
    if mode == "fsdp":
        weights = {k: v.full_tensor() for k, v in model.state_dict().items()}  # collective: every rank
    elif mode == "ddp":
        weights = accelerator.unwrap_model(model).state_dict()
    else:
        weights = model.state_dict()
    return reports, {k: v.detach().clone() for k, v in weights.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("single", "ddp", "fsdp"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", default=",".join(RUNS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    accelerator = None
    if args.mode == "ddp":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        rank = accelerator.process_index
    elif args.mode == "fsdp":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank = dist.get_rank()
    else:
        rank = 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.runs.split(","):
        try:
            reports, weights = train(name, mode=args.mode, accelerator=accelerator)
        except Exception as e:  # every rank fails the same way; record it and go on with the next clipper
            if rank == 0:
                (out / f"{name}.error").write_text(f"{type(e).__name__}: {e}")
            continue
        if rank == 0:
            (out / f"{name}.json").write_text(json.dumps({"reports": reports, "world": int(os.environ.get("WORLD_SIZE", 1))}))
            torch.save(weights, out / f"{name}.pt")
    if args.mode == "fsdp":
        import torch.distributed as dist

        dist.destroy_process_group()
    elif accelerator is not None:
        accelerator.end_training()


if __name__ == "__main__":
    main()
