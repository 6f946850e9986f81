#!/usr/bin/env python3
"""Peak memory of training with and without ``--gradient-checkpointing``, same model, batch and steps.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"; here
transformers' per-decoder-layer ``gradient_checkpointing_enable``, non-reentrant) keeps only each
layer's input in the forward pass and recomputes the rest in the backward pass: less activation
memory for about one more forward pass of compute. This script measures both sides of that trade
on steadylm's real ``TrainingRun`` (the same code ``steadylm train`` runs).

How it is measured
------------------
Each run is a fresh subprocess (this script with ``--child``), so no allocator cache or peak is
carried from one to the other. The child builds the run exactly as ``steadylm train`` would
(``TrainConfig`` defaults but for the flags below), then after ``setup()`` - data, tokenizer and
model loaded, no gradients or optimizer state yet - reads its RSS (the *loaded* baseline) and
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), so the training peak
is not the tokenizer training's. At the end of training it reads ``VmHWM`` from
/proc/self/status: the peak RSS of the training steps (a checkpoint at the last step included,
as in a real run; the final validation and model export in ``finish()`` are skipped). Where the
counter cannot be reset the peak is the whole process's, and the report says so.

Of the peak above the loaded baseline, ``3 x 4 bytes x parameters`` is the gradients and AdamW's
two moments (same on both sides); the rest is activations and allocator slack - what checkpointing
is for. Reported: peak RSS with / without (the headline), the same for the part above the baseline,
the median step time with / without (steadylm's own per-step timing from metrics.jsonl, first
step excluded), and every step's loss on both sides, which must be equal: recomputation repeats
the same arithmetic, so the losses are compared exactly.

The runs are sequential, so the step-time ratio is only as good as the machine is quiet (the load
average before and after is recorded); ``--repeats 2`` runs off/on/on/off and pools the steps.
Exit status 0 when the measurement completed, 2 on a setup error. Example::

    .venv/bin/python benchmarks/train_memory.py --out benchmarks/out/train_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers, however this file is loaded
from _memory import status_kib  # noqa: E402

KIB = 1024


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- child
def child(args) -> dict:
    """One training run in this (fresh) process; its memory and per-step numbers."""
    import torch

    import steadylm.train.loop as loop
    from steadylm.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from steadylm.train.monitor import read_metrics

    work = Path(tempfile.mkdtemp(prefix="steadylm-train-memory-", dir=args.workdir))
    cfg = TrainConfig(
        out=str(work / "run"), steps=args.steps, seed=0, threads=args.threads,
        data=DataConfig(source=args.data, context=args.context, vocab_size=args.vocab_size),
        model=ModelConfig(preset=args.preset),
        optim=OptimConfig(batch_size=args.batch_size),
        precision=args.precision, gradient_checkpointing=args.child == "on",
    )
    mem: dict = {}

    class MemoryRun(loop.TrainingRun):
        def setup(self) -> None:
            super().setup()
            mem["loaded_kib"] = status_kib("VmRSS")
            mem["setup_peak_kib"] = status_kib("VmHWM")
            mem["peak_reset"] = _reset_peak()

        def finish(self, model, last_loss, seconds):  # not training: no validation, no model export
            mem["peak_kib"] = status_kib("VmHWM")
            return {"last_loss": last_loss, "seconds": seconds}

    try:
        run = MemoryRun(cfg)
        run.run()
        steps = [m for m in read_metrics(run.out) if "event" not in m and "loss" in m]
        events = [m for m in read_metrics(run.out) if "event" in m]
        tokens = cfg.optim.batch_size * cfg.optim.grad_accum * cfg.data.context
        return {
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "parameters": run.n_params,
            **mem,
            "losses": [m["loss"] for m in steps],
            "step_s": [tokens / m["tokens_per_s"] for m in steps],
            "events": [{k: e[k] for k in ("step", "event", "kind") if k in e} for e in events],
            "threads": torch.get_num_threads(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- parent
def _spawn(argv: list[str], variant: str, out: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", variant, "--child-out", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        from steadylm.errors import SteadyError

        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SteadyError(f"the {variant} run exited with {proc.returncode}: {tail[0]}")
    return json.loads(out.read_text(encoding="utf-8"))


def run_benchmark(args, argv: list[str]) -> dict:
    order = [("off", "on") if r % 2 == 0 else ("on", "off") for r in range(args.repeats)]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="steadylm-train-memory-", dir=args.workdir) as tmp:
        for r, pair in enumerate(order):
            for variant in pair:
                print(f"  run {r + 1}/{args.repeats}: gradient checkpointing {variant}", file=sys.stderr, flush=True)
                runs[variant].append(_spawn(argv, variant, Path(tmp) / f"{variant}-{r}.json"))
    load_after = os.getloadavg()

    def side(rs: list[dict]) -> dict:
        step_s = [t for x in rs for t in x["step_s"][1:]]  # the first step warms up
        peak = max(x["peak_kib"] for x in rs) * KIB
        loaded = max(x["loaded_kib"] for x in rs) * KIB
        return {"peak_rss_bytes": peak, "loaded_rss_bytes": loaded, "above_loaded_bytes": peak - loaded,
                "setup_peak_rss_bytes": max(x["setup_peak_kib"] for x in rs) * KIB,
                "peak_reset": all(x["peak_reset"] for x in rs), "median_step_s": statistics.median(step_s),
                "steps_timed": len(step_s), "losses": rs[0]["losses"], "events": rs[0]["events"]}

    off, on = side(runs["off"]), side(runs["on"])
    n_params = runs["off"][0]["parameters"]
    state = 3 * 4 * n_params  # fp32 gradients + AdamW's exp_avg and exp_avg_sq
    losses_equal = all(x["losses"] == runs["off"][0]["losses"] for x in runs["off"] + runs["on"])
    return {
        "benchmark": "train_memory",
        "config": {"preset": args.preset, "parameters": n_params, "context": args.context, "batch_size": args.batch_size,
                   "vocab_size": args.vocab_size, "data": args.data, "steps": args.steps, "precision": args.precision,
                   "repeats": args.repeats, "threads": runs["off"][0]["threads"]},
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_before": load_before, "load_after": load_after},
        "without": off, "with": on,
        "gradients_and_optimizer_bytes": state,
        "activations_estimate_bytes": {"without": off["above_loaded_bytes"] - state, "with": on["above_loaded_bytes"] - state},
        "peak_ratio": on["peak_rss_bytes"] / off["peak_rss_bytes"],
        "above_loaded_ratio": on["above_loaded_bytes"] / off["above_loaded_bytes"],
        "step_time_ratio": on["median_step_s"] / off["median_step_s"],
        "losses_equal": losses_equal,
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(off["losses"], on["losses"])),
    }


def report(res: dict) -> None:
    c, e = res["config"], res["environment"]
    mib = 1 / 2**20
    print(f"\ntrain_memory: preset {c['preset']} ({c['parameters'] / 1e6:.2f} M params), context {c['context']}, "
          f"batch {c['batch_size']}, {c['steps']} steps, precision {c['precision']}, {c['threads']} threads; "
          f"{c['repeats']} run(s) per side, each a fresh process")
    print(f"load average before {e['load_before'][0]:.2f}, after {e['load_after'][0]:.2f} (1 min)\n")
    hdr = f"{'gradient checkpointing':<24} {'loaded MiB':>10} {'peak MiB':>9} {'above loaded':>13} {'activations~':>13} {'median step s':>14}"
    print(hdr)
    print("-" * len(hdr))
    for name in ("without", "with"):
        s = res[name]
        print(f"{name:<24} {s['loaded_rss_bytes'] * mib:>10.0f} {s['peak_rss_bytes'] * mib:>9.0f} "
              f"{s['above_loaded_bytes'] * mib:>13.0f} {res['activations_estimate_bytes'][name] * mib:>13.0f} {s['median_step_s']:>14.3f}")
    print(f"\n(activations~ = above loaded - {res['gradients_and_optimizer_bytes'] * mib:.0f} MiB of fp32 gradients and AdamW moments)")
    if not (res["without"]["peak_reset"] and res["with"]["peak_reset"]):
        print("note: the peak-RSS counter could not be reset after setup: peaks include data/tokenizer loading")
    print(f"peak RSS with / without: {res['peak_ratio']:.3f}   above the loaded baseline: {res['above_loaded_ratio']:.3f}")
    print(f"median step time with / without: {res['step_time_ratio']:.3f}")
    verdict = "equal (bit for bit)" if res["losses_equal"] else f"DIFFER (max |diff| {res['max_abs_loss_diff']:.3g})"
    print(f"losses of every step, with vs without: {verdict}")
    print(f"  without: {', '.join(f'{x:.6f}' for x in res['without']['losses'])}")
    print(f"  with:    {', '.join(f'{x:.6f}' for x in res['with']['losses'])}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset (default: small)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per run (default: 5; the first is not timed)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--data", default="builtin:pydoc")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating off/on, on/off (default: 1)")
    p.add_argument("--workdir", default=None, help="where the temporary run folders go (default: the system temp dir)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from steadylm.errors import SteadyError

    if args.child:
        try:
            res = child(args)
        except SteadyError as e:
            print(f"train_memory: error: {e}", file=sys.stderr)
            return 2
        Path(args.child_out).write_text(json.dumps(res) + "\n", encoding="utf-8")
        return 0
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is not timed)")
    try:
        res = run_benchmark(args, argv)
    except SteadyError as e:
        print(f"train_memory: error: {e}", file=sys.stderr)
        return 2
    report(res)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
