#!/usr/bin/env python3
"""Training throughput: steadylm's real `TrainingRun` loop vs a bare nanoGPT-style PyTorch loop.

Target: steadylm's tokens/s >= 0.95 x the bare loop's, on the demo model by default (preset
'tiny', context 128, batch 16, byte-level BPE of vocab 4096 trained on builtin:pydoc) with every
other setting at ``TrainConfig``'s defaults - a plain ``steadylm train`` run: AdamW, warm-up +
cosine, norm clipping at 1.0 (set explicitly: it is the only clipping the bare loop mirrors),
the spike/NaN guard, a checkpoint every 100 steps.

What is the same on both sides (checked, not assumed)
-----------------------------------------------------
* Model: ``build_model(preset, seed=cfg.seed, ...)`` - identical initial weights (compared).
* Batches: the bare loop gathers block ``perm[g]`` of the same token stream with one vectorised
  index per step, where ``perm`` is the same seeded per-epoch permutation steadylm uses; every
  batch of the run is compared with ``BlockDataset.batch`` before timing starts.
* Optimizer: ``torch.optim.AdamW(fused=True)``, same betas/eps, weight decay on every tensor with
  ``ndim >= 2`` (nanoGPT's rule, which is steadylm's ``param_groups`` for a Llama), 0 on the rest.
* LR schedule: warm-up + cosine, re-implemented nanoGPT-style and compared with ``lr_at`` for
  every step.
* Clipping: ``torch.nn.utils.clip_grad_norm_(params, 1.0)`` every step (steadylm clips by
  default, so the bare loop must pay for it too).
* Host reads: steadylm reads the loss and the grad norm as Python floats every step (for
  metrics.jsonl), so the bare loop also calls ``loss.item()`` and ``norm.item()`` every step and
  keeps them in a list (no I/O). On CPU these reads cost ~1 us; they would matter on a GPU.
* Precision (``--precision``, default fp32): both sides run the forward under
  ``torch.autocast(device, dtype)`` for bf16/fp16 and take the cross-entropy of the logits in
  float32; fp16 adds a ``torch.amp.GradScaler`` to the bare loop as nanoGPT has it (scale,
  ``unscale_``, clip, ``scaler.step``, ``update``), where steadylm's ``Stabilizer`` holds its own
  with the same settings (compared before timing, like the autocast dtype).
* After the run the per-step losses and the final weights of both models are compared; they are
  bit-identical when both sides really did the same arithmetic (on a CPU also in bf16 and fp16,
  where no kernel is nondeterministic). The first ``AGREE_STEPS`` losses must agree within the
  precision's ``LOSS_TOL``, else the report warns that the ratio compares different work.

What steadylm does on top (and is therefore *measured as its overhead*)
-----------------------------------------------------------------------
Everything in its loop body as shipped with the demo settings (at the time of writing: the lr
update, ``BlockDataset.batch`` - a Python loop over the batch rows - ``loss_sum`` bookkeeping, the
clipper's stats, the spike/NaN guard's check, one JSON line written and flushed to metrics.jsonl,
a TensorBoard scalar per numeric field, the (rich) progress bar update, and checkpoints at the
default interval, ``CheckpointConfig.every`` = 100 as in the 300-step demo). Features that are
off by default (z-loss, EMA, --monitor-every) stay off; the guard stays on, and if it ever skips
an update the two runs stop being identical, which the report shows. Nothing is disabled.
The progress bar is on only when stderr is a terminal, exactly as in a real run
(``--progress on|off`` forces it; run under ``script -qc '...' /dev/null`` to measure a real
terminal). While the bare loop runs, steadylm's progress bar is stopped, so its refresh
thread is not charged to the bare loop.

How it is timed
---------------
One process, one model each, interleaved: after ``--warmup`` steps of each side (not measured),
``--rounds`` rounds alternate blocks of ``--steps`` optimizer steps, ordered S B | B S | S B ...
(ABBA, so neither side always runs on a cache warmed by the other). steadylm runs its real
``TrainingRun.run()``; the benchmark hooks the start of each step (the call of ``loop.lr_at``
made from ``TrainingRun._lr``, near the top of the step) to take a timestamp, and runs the bare blocks from inside that hook, before
taking the timestamp that starts steadylm's next step. A steadylm step's time is therefore the
wall time of its *whole loop body* (logging, progress, checkpoint included), from one step start
to the next; the final validation/model export in ``finish()`` is not part of training and is
skipped. A bare step's time is likewise start-to-start of its loop body.

Reported: median per-step time and tokens/s per side and their ratio (the headline, target
0.95), plus an amortised figure - mean of the non-checkpoint steps plus the measured extra cost
of a checkpoint step divided by the checkpoint interval - because a median ignores checkpoints.
A component micro-benchmark then times each steadylm-only piece on its own.

Machine load: torch's OpenMP threads slow down badly when another process competes for the
cores. The script reads /proc/stat around every block to measure how much CPU *other* processes
used (per round and overall); a run or round where they averaged 0.1 cores or more is flagged as
not representative, and the ratio over the quiet rounds alone is printed as well
(``--wait-quiet`` first waits for the 1-minute load average to drop below 0.5).

Exit status is 0 whenever the measurement completed (it is a measurement, not a test); 2 on a
setup error. Example::

    .venv/bin/python benchmarks/train_overhead.py --out benchmarks/out/train_overhead.json
    .venv/bin/python benchmarks/train_overhead.py --precision bf16 --out benchmarks/out/train_overhead_bf16.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.95
QUIET_LOAD = 0.5
QUIET_OTHER_CORES = 0.1  # a round is "quiet" if other processes used less CPU than this, on average
# how far the first steps' losses may differ before the two loops are not doing the same work.
# On a CPU they are bit-identical in every precision; the slack is for nondeterministic (GPU)
# kernels, below one rounding step of the autocast dtype at the initial loss of ~8 (bf16 keeps 8
# significant bits: 8 * 2**-8 = 0.03; fp16 keeps 11: 0.004). It cannot tell a missing autocast
# (that moves the first loss by ~1e-5), so _check_same_work compares the dtypes themselves.
LOSS_TOL = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 3e-3}
AGREE_STEPS = 10  # the first steps, before rounding differences (if any) have had time to compound


# ----------------------------------------------------------------------------- helpers
def _load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, this process's CPU seconds, wall) - Linux only."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user
    t = os.times()
    return busy, t.user + t.system, time.monotonic()


def _other_cpu(a, b) -> dict | None:
    """CPU time other processes used between two snapshots: how quiet the machine really was."""
    if a is None or b is None:
        return None
    wall = b[2] - a[2]
    other = max(0.0, (b[0] - a[0]) - (b[1] - a[1]))
    return {"wall_s": wall, "own_cpu_s": b[1] - a[1], "other_cpu_s": other, "other_cores_avg": other / wall if wall > 0 else None}


def _wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait until the 1-minute load is below ``threshold`` (at most ``max_wait`` s); return the load."""
    t0 = time.monotonic()
    while True:
        l1 = _load()[0]
        if l1 < threshold or time.monotonic() - t0 >= max_wait:
            return l1
        print(f"  waiting for a quiet machine: load {l1:.2f} >= {threshold}", file=sys.stderr, flush=True)
        time.sleep(10)


def _stats(times: list[float]) -> dict:
    return {
        "n": len(times),
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
    }


def _max_diff(a: list[float], b: list[float]) -> float:
    """Largest |a - b|: a NaN or inf on both sides agrees (an fp16 overflow), on one side only is infinitely far."""
    def one(x: float, y: float) -> float:
        if x == y or (math.isnan(x) and math.isnan(y)):
            return 0.0
        return abs(x - y) if math.isfinite(x) and math.isfinite(y) else math.inf

    return max((one(x, y) for x, y in zip(a, b)), default=0.0)


def _timeit(fn, n: int) -> float:
    """Median seconds of ``fn()`` over ``n`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ----------------------------------------------------------------------------- bare loop
class BareLoop:
    """nanoGPT's train.py loop on the same model/batches/optimizer/schedule; nothing else."""

    def __init__(self, run, cfg):
        import torch

        from steadylm.models.presets import build_model

        self.torch = torch
        tok = run.tokenizer
        self.model = build_model(
            cfg.model.preset or "tiny", vocab_size=len(tok), context=cfg.data.context, dropout=cfg.model.dropout,
            seed=cfg.seed, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, overrides=cfg.model.overrides,
        )
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True,
        )
        # clip in the model's parameter order, as nanoGPT and steadylm's Stabilizer do: the global
        # norm is a sum whose order changes its last bits, and with it the weights
        self.params = params
        self.max_norm = cfg.clip.max_norm
        # precision as nanoGPT's train.py has it: the forward under autocast, fp16 with a GradScaler
        self.device_type = next(self.model.parameters()).device.type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device_type) if cfg.precision == "fp16" else None
        self.B, self.A, self.T = o.batch_size, o.grad_accum, cfg.data.context
        self.steps, self.peak, self.min_lr = cfg.steps, o.lr, o.lr * o.min_lr_ratio
        self.warmup = cfg.warmup_steps
        # data: the same token stream and seeded per-epoch permutation as BlockDataset
        self.tokens = run.data.tokens
        self.num_blocks = run.data.num_blocks
        self.seed = run.data.seed
        self.offsets = torch.arange(self.T + 1)
        self._perms: dict[int, torch.Tensor] = {}
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.times: list[float] = []  # per step, start-to-start of its body
        self.next_step = 0

    def get_lr(self, it: int) -> float:
        if it < self.warmup:
            return self.peak * (it + 1) / self.warmup
        ratio = min(1.0, (it - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.peak - self.min_lr)

    def get_batch(self, start: int):
        torch = self.torch
        g = torch.arange(start, start + self.B)
        epochs, idx = g // self.num_blocks, g % self.num_blocks
        e0 = int(epochs[0])
        if int(epochs[-1]) == e0:  # the usual case: one epoch, one gather
            blocks = self._perm(e0)[idx]
        else:
            blocks = torch.stack([self._perm(int(e))[int(i)] for e, i in zip(epochs, idx)])
        block = self.tokens[blocks[:, None] * self.T + self.offsets]  # (B, T+1)
        return block[:, :-1], block[:, 1:]

    def _perm(self, epoch: int):
        p = self._perms.get(epoch)
        if p is None:
            gen = self.torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            p = self._perms[epoch] = self.torch.randperm(self.num_blocks, generator=gen)
        return p

    def run_steps(self, n: int) -> None:
        import torch.nn.functional as F

        torch = self.torch
        model, opt, scaler, B, A = self.model, self.optimizer, self.scaler, self.B, self.A
        t_prev = time.perf_counter()
        for _ in range(n):
            it = self.next_step
            lr = self.get_lr(it)
            for group in opt.param_groups:
                group["lr"] = lr
            for micro in range(A):
                x, y = self.get_batch((it * A + micro) * B)
                with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
                    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
                # the loss in float32, as nanoGPT's (autocast runs log_softmax in float32); a no-op in fp32
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
                if scaler is None:
                    (loss / A).backward()
                else:
                    scaler.scale(loss / A).backward()
            if scaler is not None:
                scaler.unscale_(opt)  # clip the true gradients
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)  # skipped if a gradient overflowed
                scaler.update()
            opt.zero_grad(set_to_none=True)
            self.losses.append(loss.item())  # last micro-batch's loss, as nanoGPT logs
            self.norms.append(norm.item())
            t = time.perf_counter()
            self.times.append(t - t_prev)
            t_prev = t
            self.next_step += 1


# ----------------------------------------------------------------------------- the benchmark
def run_benchmark(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="steadylm-train-overhead-", dir=args.workdir))
    try:
        result = _run_benchmark(args, work)
    finally:
        if not args.keep_run:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep_run:
        result["run_dir"] = str(work / "run")
    return result


def _run_benchmark(args, work: Path) -> dict:
    import torch

    import steadylm.progress as progress_mod
    import steadylm.train.loop as loop
    from steadylm.config import ClipConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig

    if args.progress == "on":
        os.environ["STEADYLM_PROGRESS"] = "1"
    elif args.progress == "off":
        os.environ["STEADYLM_PROGRESS"] = "0"
    progress_on = progress_mod.progress_enabled()

    W, N, R = args.warmup, args.steps, args.rounds
    total = W + N * R
    cfg = TrainConfig(
        out=str(work / "run"), steps=total, seed=0, threads=args.threads,
        data=DataConfig(source=args.data, context=args.context, vocab_size=args.vocab_size),
        model=ModelConfig(preset=args.preset),
        optim=OptimConfig(batch_size=args.batch_size, grad_accum=args.grad_accum),
        clip=ClipConfig(method="norm", max_norm=1.0), precision=args.precision,
    )
    if args.checkpoint_every is not None:
        cfg.checkpoint.every = args.checkpoint_every

    # schedule: bare steps to run before steadylm step k (k == total: after its last step)
    # (round -1 is the warm-up); CPU snapshots at every block's start and end tell how much
    # CPU other processes took during each round
    segments = [("S", W, -1), ("B", W, -1)]
    for r in range(R):
        segments += [("S", N, r), ("B", N, r)] if r % 2 == 0 else [("B", N, r), ("S", N, r)]
    bare_before: list[list[tuple[int, int]]] = [[] for _ in range(total + 1)]
    s_start_at: dict[int, int] = {}
    s_end_at: dict[int, int] = {}
    s_done = 0
    for side, n, r in segments:
        if side == "S":
            s_start_at[s_done] = r
            s_done += n
            s_end_at[s_done] = r
        else:
            bare_before[s_done].append((r, n))
    snaps: dict[tuple[str, int], list] = {}

    state: dict = {"bare": None, "bar": None, "starts": [], "ends": [], "t_setup": None}
    real_lr_at = loop.lr_at
    real_make_progress = progress_mod.make_progress

    def make_progress_hook(*a, **kw):
        bar = real_make_progress(*a, **kw)
        state["bar"] = bar
        return bar

    def run_bare(blocks: list[tuple[int, int]]) -> None:
        if not blocks:
            return
        bar = state["bar"]
        live = bar is not None and not bar.disable and bar.live.is_started
        if live:
            bar.stop()  # its refresh thread must not be charged to the bare loop
        for r, n in blocks:
            snaps[("B", r)] = [_cpu_snapshot()]
            state["bare"].run_steps(n)
            snaps[("B", r)].append(_cpu_snapshot())
        if live:
            bar.start()

    run_code = loop.TrainingRun._lr.__code__  # the schedule as the step asks it (a checkpoint calls lr_at directly)

    def lr_at_hook(step, c):
        t = time.perf_counter()
        if sys._getframe(1).f_code is not run_code:  # e.g. a checkpoint recording the next lr
            return real_lr_at(step, c)
        if state["starts"]:
            state["ends"].append(t)
        if step in s_end_at:
            snaps[("S", s_end_at[step])].append(_cpu_snapshot())
        run_bare(bare_before[step])
        if step in s_start_at:
            snaps[("S", s_start_at[step])] = [_cpu_snapshot()]
        state["starts"].append(time.perf_counter())
        return real_lr_at(step, c)

    class BenchRun(loop.TrainingRun):
        def setup(self) -> None:
            t0 = time.perf_counter()
            super().setup()
            bare = BareLoop(self, self.cfg)
            _check_same_work(self, bare, self.cfg, real_lr_at)
            state["bare"] = bare
            state["t_setup"] = time.perf_counter() - t0

        def finish(self, model, last_loss, seconds):
            state["ends"].append(time.perf_counter())
            snaps[("S", s_end_at[total])].append(_cpu_snapshot())
            run_bare(bare_before[total])
            return {"last_loss": last_loss, "seconds": seconds}

    load_before = _load()
    cpu_before = _cpu_snapshot()
    loop.lr_at = lr_at_hook
    progress_mod.make_progress = make_progress_hook
    try:
        run = BenchRun(cfg)
        run.run()
    finally:
        loop.lr_at = real_lr_at
        progress_mod.make_progress = real_make_progress
    load_after = _load()
    contention = _other_cpu(cpu_before, _cpu_snapshot())

    bare: BareLoop = state["bare"]
    s_times = [e - s for s, e in zip(state["starts"], state["ends"])]
    assert len(s_times) == total and len(bare.times) == total, (len(s_times), len(bare.times), total)
    every = cfg.checkpoint.every
    ckpt_steps = {k for k in range(total) if (k + 1) % every == 0 or k + 1 == total}

    # correctness: identical losses and final weights mean identical arithmetic
    from steadylm.train.monitor import read_metrics

    metrics = read_metrics(run.out)
    steps_logged = [m for m in metrics if "event" not in m and "loss" in m]
    events = [m for m in metrics if "event" in m]
    nan = float("nan")
    s_losses = [nan if m["loss"] is None else m["loss"] for m in steps_logged]
    s_norms = [nan if m["grad_norm"] is None else m["grad_norm"] for m in steps_logged]
    # steadylm logs the mean of the micro-batch losses, the bare loop (nanoGPT) the last one
    loss_diff = first_diff = None
    if cfg.optim.grad_accum == 1:
        loss_diff = _max_diff(s_losses, bare.losses)
        first_diff = _max_diff(s_losses[:AGREE_STEPS], bare.losses[:AGREE_STEPS])
    loss_tol = LOSS_TOL[cfg.precision]
    norm_diff = _max_diff(s_norms, bare.norms)
    with torch.no_grad():
        w_diff = max(float((p - q).abs().max()) for p, q in zip(run.model.parameters(), bare.model.parameters()))

    tokens_per_step = cfg.optim.batch_size * cfg.optim.grad_accum * cfg.data.context
    measured = range(W, total)
    s_meas = [s_times[k] for k in measured]
    b_meas = [bare.times[k] for k in measured]
    s_plain = [s_times[k] for k in measured if k not in ckpt_steps]
    s_ckpt = [s_times[k] for k in measured if k in ckpt_steps]
    s_med, b_med = statistics.median(s_meas), statistics.median(b_meas)
    ckpt_extra = (statistics.fmean(s_ckpt) - statistics.median(s_plain)) if s_ckpt else None
    s_amort = statistics.fmean(s_plain) + ((ckpt_extra or 0.0) / every)
    b_amort = statistics.fmean(b_meas)

    # per-round medians (a round = one block of each side) and the other processes' CPU use
    rounds = []
    for r in range(R):
        ks = range(W + r * N, W + (r + 1) * N)
        sm = statistics.median([s_times[k] for k in ks])
        bm = statistics.median([bare.times[k] for k in ks])
        parts = [_other_cpu(*snaps[(side, r)]) for side in ("S", "B")]
        other = None
        if all(parts):
            other = sum(p["other_cpu_s"] for p in parts) / sum(p["wall_s"] for p in parts)
        rounds.append({"round": r, "steadylm_median_s": sm, "bare_median_s": bm, "ratio": bm / sm,
                       "other_cores_avg": other, "quiet": other is None or other < QUIET_OTHER_CORES})
    quiet_ks = [k for r in rounds if r["quiet"] for k in range(W + r["round"] * N, W + (r["round"] + 1) * N)]
    quiet = None
    if quiet_ks:
        qs = statistics.median([s_times[k] for k in quiet_ks])
        qb = statistics.median([bare.times[k] for k in quiet_ks])
        quiet = {"rounds": [r["round"] for r in rounds if r["quiet"]], "steps_per_side": len(quiet_ks),
                 "steadylm_median_s": qs, "bare_median_s": qb, "steadylm_tokens_per_s": tokens_per_step / qs,
                 "bare_tokens_per_s": tokens_per_step / qb, "ratio_median": qb / qs, "target_met": qb / qs >= TARGET}

    result = {
        "benchmark": "train_overhead",
        "target_ratio": TARGET,
        "config": {
            "preset": cfg.model.preset, "data": cfg.data.source, "context": cfg.data.context,
            "vocab_size": cfg.data.vocab_size, "batch_size": cfg.optim.batch_size, "grad_accum": cfg.optim.grad_accum,
            "precision": cfg.precision, "tokens_per_step": tokens_per_step, "warmup_steps": W, "steps_per_block": N, "rounds": R,
            "total_steps": total, "checkpoint_every": every, "clip": f"{cfg.clip.method} {cfg.clip.max_norm}",
            "progress_bar": progress_on, "parameters": run.n_params,
            "guard": getattr(getattr(cfg, "guard", None), "action", None), "z_loss": getattr(cfg, "z_loss", None),
            "ema": getattr(cfg, "ema", None), "monitor_every": getattr(cfg, "monitor_every", None),
        },
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "machine": platform.machine(), "platform": platform.platform(),
            "load_before": load_before, "load_after": load_after,
            "other_processes_cpu": contention,
            # measured contention decides; the load average (which lags by minutes) only without /proc
            "quiet": contention["other_cores_avg"] < QUIET_OTHER_CORES if contention else load_before[0] < QUIET_LOAD,
        },
        "steadylm": {
            **_stats(s_meas), "tokens_per_s_median": tokens_per_step / s_med,
            "mean_non_checkpoint_s": statistics.fmean(s_plain), "checkpoint_steps_measured": len(s_ckpt),
            "checkpoint_extra_s": ckpt_extra, "amortised_s": s_amort, "tokens_per_s_amortised": tokens_per_step / s_amort,
        },
        "bare": {**_stats(b_meas), "tokens_per_s_median": tokens_per_step / b_med,
                 "amortised_s": b_amort, "tokens_per_s_amortised": tokens_per_step / b_amort},
        "ratio_median": b_med / s_med,
        "ratio_amortised": b_amort / s_amort,
        "target_met": b_med / s_med >= TARGET,
        "target_met_amortised": b_amort / s_amort >= TARGET,
        "rounds": rounds,
        "quiet_rounds": quiet,
        "same_work": {"steadylm_events": [{k: e[k] for k in ("step", "event", "kind") if k in e} for e in events],
                      "max_abs_loss_diff": loss_diff, "max_abs_grad_norm_diff": norm_diff,
                      "first_steps": AGREE_STEPS, "max_abs_loss_diff_first_steps": first_diff, "loss_tolerance": loss_tol,
                      "agree": first_diff is None or first_diff <= loss_tol,
                      "first_losses": {"steadylm": s_losses[:AGREE_STEPS], "bare": bare.losses[:AGREE_STEPS]},
                      "max_abs_weight_diff": w_diff, "bit_identical": not loss_diff and norm_diff == 0 and w_diff == 0},
        "per_step_s": {"steadylm": s_times, "bare": bare.times, "checkpoint_steps": sorted(ckpt_steps)},
        "setup_s": state["t_setup"],
    }
    last_record = steps_logged[-1] if steps_logged else {}
    if args.components:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bars, 5 x per timing
        try:
            result["components"] = components(run, bare, cfg, work, last_record)
        finally:
            hf_logging.enable_progress_bar()
    return result


def _check_same_work(run, bare: BareLoop, cfg, lr_at) -> None:
    """Refuse to time two loops that would not do the same arithmetic."""
    import torch

    from steadylm.errors import SteadyError

    sd_a, sd_b = run.model.state_dict(), bare.model.state_dict()
    if sd_a.keys() != sd_b.keys() or any(not torch.equal(sd_a[k], sd_b[k]) for k in sd_a):
        raise SteadyError("bare model's initial weights differ from steadylm's")
    ga = [[id(p) for p in g["params"]] for g in run.optimizer.param_groups]
    pos = {id(p): i for i, p in enumerate(run.model.parameters())}
    pos_b = {id(p): i for i, p in enumerate(bare.model.parameters())}
    gb = [[pos_b[id(p)] for p in g["params"]] for g in bare.optimizer.param_groups]
    if [[pos[i] for i in g] for g in ga] != gb:
        raise SteadyError("bare optimizer's parameter groups differ from steadylm's")
    for ka in ("lr", "betas", "eps", "weight_decay", "fused"):
        if [g[ka] for g in run.optimizer.param_groups] != [g[ka] for g in bare.optimizer.param_groups]:
            raise SteadyError(f"bare optimizer's {ka} differs from steadylm's")
    sa, sb = run.stabilizer.scaler, bare.scaler
    if run.autocast_dtype != bare.dtype or (sa is None) != (sb is None):
        raise SteadyError(f"bare loop's precision differs from steadylm's (autocast {bare.dtype} vs {run.autocast_dtype}, "
                          f"GradScaler {sb is not None} vs {sa is not None})")
    if sa is not None and sa.state_dict() != sb.state_dict():
        raise SteadyError(f"bare loop's GradScaler {sb.state_dict()} differs from steadylm's {sa.state_dict()}")
    B, A = cfg.optim.batch_size, cfg.optim.grad_accum
    for step in range(cfg.steps):
        if abs(bare.get_lr(step) - lr_at(step, cfg)) > 1e-15:
            raise SteadyError(f"lr schedule differs at step {step}")
        for micro in range(A):
            start = (step * A + micro) * B
            xs, ys = run.data.batch(start, B)
            xb, yb = bare.get_batch(start)
            if not (torch.equal(xs, xb) and torch.equal(ys, yb)):
                raise SteadyError(f"batch {start} differs")


# ----------------------------------------------------------------------------- components
def components(run, bare: BareLoop, cfg, work: Path, record: dict) -> dict:
    """Each steadylm-only piece of the loop body, timed alone (median seconds per call)."""
    import copy

    import torch

    from steadylm.progress import make_progress
    from steadylm.train.monitor import MetricsLogger

    B = cfg.optim.batch_size
    out: dict = {}
    k = [0]

    def nxt():
        k[0] += 1
        return k[0] * B

    out["data_batch_steadylm_s"] = _timeit(lambda: run.data.batch(nxt(), B), 300)
    out["data_batch_vectorised_s"] = _timeit(lambda: bare.get_batch(nxt()), 300)

    # one metrics record as the run wrote it (its last step line), logged at a realistic pace: the
    # TensorBoard writer thread gets 5 ms between calls to drain its queue, as it gets a whole
    # training step in a run. Wall time is the main thread's; CPU time includes the writer thread.
    rec = dict(record) or {"step": 1, "loss": 5.1, "grad_norm": 0.9, "clipped": False, "lr": 0.003, "tokens_per_s": 23456.7}
    out["tensorboard_scalars_per_step"] = sum(
        1 for key, v in rec.items() if key != "step" and isinstance(v, (int, float)) and not isinstance(v, bool))
    for name, tb in (("log_jsonl_and_tensorboard", True), ("log_jsonl_only", False)):
        d = work / f"log-{name}"
        d.mkdir()
        lg = MetricsLogger(d, tensorboard=tb)
        wall, cpu = [], 0.0
        for i in range(200):
            time.sleep(0.005)
            c0, t0 = time.process_time(), time.perf_counter()
            lg.log({**rec, "step": i + 1})
            wall.append(time.perf_counter() - t0)
            time.sleep(0.005)  # let the writer thread finish (its CPU time is counted below)
            cpu += time.process_time() - c0
        lg.close()
        out[name + "_s"] = statistics.median(wall)
        out[name + "_cpu_s"] = cpu / 200
    with make_progress() as bar:  # as the loop has it: on only when stderr is a terminal
        task = bar.add_task("x", total=10**9, info="")
        out["progress_update_s"] = _timeit(lambda: bar.update(task, advance=1, info="loss 5.123"), 300)
        out["progress_enabled"] = not bar.disable
    x = torch.tensor(1.2345)
    out["float_of_tensor_s"] = _timeit(lambda: float(x), 1000)
    guard = copy.deepcopy(run.guard)
    n = [10**6]

    def check():
        n[0] += 1
        guard.check(n[0], 5.0, 0.5)

    out["guard_check_s"] = _timeit(check, 1000)
    # the clipper (with its stats) vs a bare clip_grad_norm_, on random gradients
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    out["clipper_s"] = _timeit(lambda: run.clipper.clip_(params), 100)
    out["clip_grad_norm_s"] = _timeit(lambda: torch.nn.utils.clip_grad_norm_(params, cfg.clip.max_norm), 100)
    for p in params:
        p.grad = None
    # a checkpoint exactly as the loop writes it, and its parts
    steps = iter(range(10**6, 2 * 10**6))
    out["checkpoint_s"] = _timeit(lambda: run._checkpoint(next(steps), 1.0), 5)
    parts = work / "parts"
    parts.mkdir()
    out["checkpoint_parts_s"] = {
        "model_save_pretrained": _timeit(lambda: run.model.save_pretrained(parts / "m", safe_serialization=True), 5),
        "tokenizer_save_pretrained": _timeit(lambda: run.tokenizer.save_pretrained(parts / "t"), 5),
        "optimizer_torch_save": _timeit(lambda: torch.save(run.optimizer.state_dict(), parts / "o.pt"), 5),
    }
    ck = [d for d in (run.out / "checkpoints").glob("step-*") if d.is_dir()]
    out["checkpoint_bytes"] = sum(f.stat().st_size for d in ck for f in d.iterdir() if f.is_file()) // max(1, len(ck))
    return out


# ----------------------------------------------------------------------------- report
def report(res: dict) -> None:
    c, e, s, b = res["config"], res["environment"], res["steadylm"], res["bare"]
    print(f"\ntrain_overhead: preset {c['preset']} ({c['parameters'] / 1e6:.2f} M params), context {c['context']}, "
          f"batch {c['batch_size']}x{c['grad_accum']}, vocab {c['vocab_size']}, {c['tokens_per_step']} tokens/step, "
          f"precision {c['precision']}")
    print(f"torch {e['torch']}, {e['threads']} threads on {e['cpus']} CPUs; load before {e['load_before'][0]:.2f} "
          f"(1 min) / {e['load_before'][1]:.2f} (5 min); progress bar {'on' if c['progress_bar'] else 'off'}; "
          f"checkpoint every {c['checkpoint_every']}")
    print(f"steadylm settings: clip {c['clip']}, guard {c['guard']}, z-loss {c['z_loss']}, ema {c['ema']}, monitor every {c['monitor_every']}")
    oc = e["other_processes_cpu"]
    if oc:
        print(f"other processes used {oc['other_cpu_s']:.1f} CPU-s during the {oc['wall_s']:.0f} s of training "
              f"({oc['other_cores_avg']:.2f} cores on average; this process {oc['own_cpu_s']:.0f} CPU-s)")
    print(f"{c['warmup_steps']} warm-up steps each (excluded), then {c['rounds']} rounds x {c['steps_per_block']} steps each, "
          f"interleaved ABBA\n")
    hdr = f"{'loop':<10} {'steps':>5} {'median ms':>10} {'mean ms':>9} {'min ms':>8} {'max ms':>8} {'tok/s (median)':>15} {'tok/s (amort.)':>15}"
    print(hdr)
    print("-" * len(hdr))
    for name, d in (("steadylm", s), ("bare", b)):
        print(f"{name:<10} {d['n']:>5} {d['median_s'] * 1e3:>10.2f} {d['mean_s'] * 1e3:>9.2f} {d['min_s'] * 1e3:>8.2f} "
              f"{d['max_s'] * 1e3:>8.2f} {d['tokens_per_s_median']:>15.0f} {d['tokens_per_s_amortised']:>15.0f}")
    if s["checkpoint_extra_s"] is not None:
        print(f"\nsteadylm checkpoint steps measured: {s['checkpoint_steps_measured']}, extra {s['checkpoint_extra_s'] * 1e3:.0f} ms "
              f"each = {s['checkpoint_extra_s'] / c['checkpoint_every'] * 1e3:.2f} ms/step amortised over {c['checkpoint_every']} steps")
    print("per-round ratio bare/steadylm median step time (other processes' cores): "
          + ", ".join(f"{r['ratio']:.3f}" + ("" if r["other_cores_avg"] is None else f" ({r['other_cores_avg']:.2f})")
                      for r in res["rounds"]))
    sw = res["same_work"]
    ld = "n/a (grad_accum > 1)" if sw["max_abs_loss_diff"] is None else f"{sw['max_abs_loss_diff']:.3g}"
    print(f"same work: max |loss diff| {ld}, |grad-norm diff| {sw['max_abs_grad_norm_diff']:.3g}, "
          f"|weight diff| {sw['max_abs_weight_diff']:.3g}{' (bit-identical)' if sw['bit_identical'] else ''}")
    if sw["max_abs_loss_diff_first_steps"] is not None:
        print(f"  first {sw['first_steps']} steps' losses: max |diff| {sw['max_abs_loss_diff_first_steps']:.3g} "
              f"(tolerance {sw['loss_tolerance']:g} for {c['precision']}): {'agree' if sw['agree'] else 'DIFFER'}")
    if not sw["agree"]:
        print("WARNING: the two loops did not do the same arithmetic: the ratio compares different work.")
    if sw["steadylm_events"]:
        print(f"  steadylm events during the run (explain any difference): {sw['steadylm_events']}")
    if "components" in res:
        k = res["components"]
        print("\nsteadylm-only pieces, timed alone (per call):")
        print(f"  BlockDataset.batch (Python loop over {c['batch_size']} rows) {k['data_batch_steadylm_s'] * 1e6:8.1f} us   "
              f"vs one vectorised gather {k['data_batch_vectorised_s'] * 1e6:.1f} us")
        print(f"  MetricsLogger.log, JSONL + {k['tensorboard_scalars_per_step']} TensorBoard scalars {k['log_jsonl_and_tensorboard_s'] * 1e6:8.1f} us"
              f" (CPU incl. writer thread {k['log_jsonl_and_tensorboard_cpu_s'] * 1e6:.0f} us)   JSONL only {k['log_jsonl_only_s'] * 1e6:.1f} us"
              f" (CPU {k['log_jsonl_only_cpu_s'] * 1e6:.0f} us)")
        print(f"  progress bar update ({'enabled' if k['progress_enabled'] else 'disabled, not a terminal'})"
              f"{'':<12}{k['progress_update_s'] * 1e6:8.1f} us")
        print(f"  clipper.clip_ {k['clipper_s'] * 1e6:.0f} us vs clip_grad_norm_ {k['clip_grad_norm_s'] * 1e6:.0f} us; "
              f"guard.check {k['guard_check_s'] * 1e6:.1f} us; float(tensor) {k['float_of_tensor_s'] * 1e6:.2f} us")
        p = k["checkpoint_parts_s"]
        print(f"  checkpoint {k['checkpoint_s'] * 1e3:.0f} ms ({k['checkpoint_bytes'] / 1e6:.1f} MB): model {p['model_save_pretrained'] * 1e3:.0f} ms, "
              f"tokenizer {p['tokenizer_save_pretrained'] * 1e3:.0f} ms, optimizer {p['optimizer_torch_save'] * 1e3:.0f} ms, "
              f"rest (hashing, fsync, pruning)")
    ratio, ratio_a = res["ratio_median"], res["ratio_amortised"]
    print(f"\nratio steadylm/bare tokens/s: {ratio:.3f} (median)   {ratio_a:.3f} (amortised, checkpoints included)")
    verdict = "MET" if res["target_met"] else "MISSED"
    print(f"target >= {TARGET:.2f}x: {verdict} (median){'' if res['target_met_amortised'] else '; missed when checkpoints are amortised'}")
    q = res["quiet_rounds"]
    if q and len(q["rounds"]) < len(res["rounds"]):
        print(f"quiet rounds only ({q['rounds']}, {q['steps_per_side']} steps each side): steadylm {q['steadylm_tokens_per_s']:.0f} tok/s, "
              f"bare {q['bare_tokens_per_s']:.0f} tok/s, ratio {q['ratio_median']:.3f} -> target {'MET' if q['target_met'] else 'MISSED'}"
              f"{'' if q['steps_per_side'] >= 30 else ' (fewer than 30 steps: indicative only)'}")
    if not e["quiet"]:
        print(f"WARNING: the machine was busy (other processes' CPU use is shown above, limit {QUIET_OTHER_CORES} cores on average): "
              f"re-run on a quiet machine before trusting these numbers.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny, the demo model)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per block per side per round (default: 20)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5; measured steps = steps x rounds)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured warm-up steps of each side (default: 10)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--data", default="builtin:pydoc")
    p.add_argument("--precision", choices=tuple(LOSS_TOL), default="fp32",
                   help="both loops' forward precision: autocast for bf16/fp16, fp16 with a GradScaler (default: fp32)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default: steadylm's default (100)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="steadylm's progress bar: auto = as a real run (on only if stderr is a terminal)")
    p.add_argument("--no-components", dest="components", action="store_false", help="skip the per-component timings")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help=f"first wait up to SECONDS for the 1-minute load to drop below {QUIET_LOAD}")
    p.add_argument("--workdir", default=None, help="where the temporary run folder goes (default: the system temp dir)")
    p.add_argument("--keep-run", action="store_true", help="keep steadylm's run folder")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order when piped
    if args.steps * args.rounds < 30:
        print(f"note: only {args.steps * args.rounds} measured steps per side (< 30)", file=sys.stderr)
    if args.wait_quiet > 0:
        _wait_quiet(args.wait_quiet, QUIET_LOAD)
    l1 = _load()[0]
    if l1 >= QUIET_LOAD:
        print(f"WARNING: load average {l1:.2f} >= {QUIET_LOAD}: measuring on a busy machine", file=sys.stderr)

    from steadylm.errors import SteadyError

    try:
        res = run_benchmark(args)
    except SteadyError as e:
        print(f"train_overhead: error: {e}", file=sys.stderr)
        return 2
    report(res)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
