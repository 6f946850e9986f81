"""The `steadylm train` recipe: setup, train, checkpoint, finish.

Read top to bottom like nanoGPT's ``train.py``: one optimizer step is
``lr -> (forward, backward) x grad_accum -> clip -> AdamW step``. What steadylm adds is around
that core, never inside the arithmetic:

* the data order is a function of ``(seed, sample number)``, so a resume needs only the step;
* checkpoints hold weights, optimizer, RNG and data position (`checkpoint`), written atomically;
* every step writes one JSON line (`monitor`), and a resume cuts the log back to the checkpoint.

On CPU a run that is killed and resumed ends with weights bit-identical to one that never stopped
(tested with ``kill -9``). On GPUs the same holds only as far as the kernels are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError, SteadyError
from ..fsutil import write_json_atomic


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` (step counts from 0)."""
    peak, warm = cfg.optim.lr, cfg.warmup_steps
    if step < warm:
        return peak * (step + 1) / warm
    span = max(1, cfg.steps - warm)
    progress = min(1.0, (step - warm) / span)
    low = peak * cfg.optim.min_lr_ratio
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _fingerprint(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(hashlib.sha256(d.encode("utf-8")).digest())
    return h.hexdigest()[:16]


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "run.json").is_file()


class TrainingRun:
    """One training run in one folder. ``TrainingRun(cfg).run()`` or ``TrainingRun.resume(dir).run()``."""

    def __init__(self, cfg: TrainConfig, *, overwrite: bool = False, _resuming: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.overwrite = overwrite
        self.resuming = _resuming
        self.start_step = 0
        self.elapsed_before = 0.0

    @classmethod
    def resume(cls, run_dir: str | os.PathLike) -> "TrainingRun":
        d = Path(run_dir)
        if not d.is_dir():
            raise CheckpointError(f"--resume {run_dir}: no such folder")
        if not is_run_dir(d):
            raise CheckpointError(f"--resume {run_dir}: no steadylm run here (no config.json and run.json)")
        try:
            raw = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"--resume {run_dir}: unreadable config.json ({e})") from None
        raw["out"] = str(d)
        return cls(TrainConfig.from_dict(raw, origin=f"{d / 'config.json'}"), _resuming=True)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Load data, tokenizer and model; validate everything before the run folder is touched."""
        import torch

        from ..data.packing import BlockDataset
        from ..data.sources import load_documents, split_documents
        from ..data.tokenizer import encode_documents, load_tokenizer, separator_id, train_bpe
        from ..models.presets import build_model, load_model, model_context
        from .clip import make_clipper
        from .regularize import param_groups

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if not self.resuming and self.out.exists() and any(self.out.iterdir()):
            if not self.overwrite:
                hint = "use --resume to continue it" if is_run_dir(self.out) else "choose an empty folder"
                raise ConfigError(f"--out {self.out}: folder is not empty; {hint}, or pass --overwrite")
            if not is_run_dir(self.out):
                raise ConfigError(f"--out {self.out}: --overwrite only replaces a steadylm run folder, and this is not one")

        corpus = load_documents(cfg.data.source)
        train_docs, val_docs = split_documents(corpus, cfg.data.val_fraction)
        self.val_docs = val_docs
        self.data_fingerprint = _fingerprint(corpus.documents)

        mcfg = cfg.model
        base = None
        if mcfg.path is not None:  # check the folder before the slower steps
            base = load_model(mcfg.path, trust_remote_code=mcfg.trust_remote_code, dropout=mcfg.dropout)
        if self.resuming:
            tokenizer = load_tokenizer(str(self.out / "tokenizer"))
        elif mcfg.path is not None:
            tokenizer = load_tokenizer(mcfg.path, trust_remote_code=mcfg.trust_remote_code)
        else:
            tokenizer = train_bpe(train_docs, cfg.data.vocab_size)
        self.tokenizer = tokenizer
        sep = separator_id(tokenizer)
        self.data = BlockDataset(encode_documents(tokenizer, train_docs), cfg.data.context, cfg.seed, sep, name=f"{corpus.name} (training split)")

        if base is not None:
            model = base
            ctx = model_context(model.config)
            if ctx is not None and cfg.data.context > ctx:
                raise ConfigError(f"--context {cfg.data.context} is larger than the model's context of {ctx} tokens")
            if len(tokenizer) > model.config.vocab_size:
                raise ConfigError(f"{mcfg.path}: tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}")
        else:
            model = build_model(
                mcfg.preset or "tiny", vocab_size=len(tokenizer), context=cfg.data.context, dropout=mcfg.dropout,
                seed=cfg.seed, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                overrides=mcfg.overrides,
            )
        self.model = model
        self.model.train()
        groups = param_groups(model, cfg.optim.weight_decay, decay_embeddings=cfg.optim.decay_embeddings)
        self.decayed = groups[0]["params"]
        self.group_names = [g.pop("names") for g in groups]
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
            fused=True,
        )
        self.clipper = make_clipper(cfg.clip.method, max_norm=cfg.clip.max_norm, clip_value=cfg.clip.clip_value)
        self.n_params = sum(p.numel() for p in model.parameters())

    def _prepare_folder(self) -> None:
        """Create the run folder (fresh run) or restore the newest checkpoint (resume)."""
        import torch

        from safetensors.torch import load_model as load_weights

        from .checkpoint import list_checkpoints, load_training_state, verify_checkpoint

        if not self.resuming:
            if self.out.exists():
                shutil.rmtree(self.out)  # only reached with --overwrite on a run folder
            self.out.mkdir(parents=True)
            self.tokenizer.save_pretrained(self.out / "tokenizer")
            write_json_atomic(self.out / "config.json", self.cfg.to_dict())
            write_json_atomic(self.out / "run.json", {
                "steadylm": __version__, "torch": torch.__version__, "data_fingerprint": self.data_fingerprint,
                "parameters": self.n_params, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            torch.manual_seed(self.cfg.seed)  # dropout RNG
            return

        run = json.loads((self.out / "run.json").read_text(encoding="utf-8"))
        if run.get("data_fingerprint") != self.data_fingerprint:
            raise CheckpointError(f"--resume {self.out}: the data in {self.cfg.data.source} changed since the run started")
        ckpts = list_checkpoints(self.out)
        if not ckpts:
            torch.manual_seed(self.cfg.seed)
            return  # killed before its first checkpoint: start again from step 0
        step, path = ckpts[-1]
        verify_checkpoint(path)
        try:
            load_weights(self.model, str(path / "model.safetensors"))
        except Exception as e:
            raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        state = load_training_state(path, self.optimizer)
        self.start_step = step
        self.elapsed_before = float(state.get("seconds", 0.0))

    # ------------------------------------------------------------------ train
    def _checkpoint(self, step: int, seconds: float) -> None:
        from .checkpoint import save_checkpoint

        samples = step * self.cfg.optim.batch_size * self.cfg.optim.grad_accum
        epoch, index = self.data.position(samples)
        save_checkpoint(self.out, step, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer, keep=self.cfg.checkpoint.keep,
                        train_config=self.cfg.to_dict(),
                        state={"samples": samples, "data_position": {"epoch": epoch, "index": index},
                               "scheduler": {"kind": "warmup_cosine", "step": step, "warmup_steps": self.cfg.warmup_steps,
                                             "next_lr": lr_at(step, self.cfg) if step < self.cfg.steps else None},
                               "seconds": seconds, "steadylm": __version__})

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.steps``, write the model and ``summary.json``, and return the summary."""
        import torch
        import torch.nn.functional as F

        from ..progress import make_progress
        from .monitor import MetricsLogger
        from .regularize import l1_penalty, l2_penalty

        self.setup()
        self._prepare_folder()
        cfg = self.cfg
        B, A, T = cfg.optim.batch_size, cfg.optim.grad_accum, cfg.data.context
        logger = MetricsLogger(self.out, resume_step=self.start_step if self.resuming else None)
        model, opt, params = self.model, self.optimizer, [p for g in self.optimizer.param_groups for p in g["params"]]
        t_start = time.perf_counter()
        last_loss = float("nan")
        try:
            with make_progress() as bar:
                task = bar.add_task("train", total=cfg.steps, completed=self.start_step, info="")
                for step in range(self.start_step, cfg.steps):
                    t0 = time.perf_counter()
                    lr = lr_at(step, cfg)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    loss_sum = torch.zeros(())
                    for micro in range(A):
                        x, y = self.data.batch((step * A + micro) * B, B)  # (B, T) each
                        logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
                        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
                        total = loss / A
                        if micro == 0 and (cfg.optim.l2 or cfg.optim.l1):
                            penalty = l2_penalty(self.decayed, cfg.optim.l2) + l1_penalty(self.decayed, cfg.optim.l1)
                            total = total + penalty
                        total.backward()
                        loss_sum += loss.detach()
                    stats = self.clipper.clip_(params)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    dt = time.perf_counter() - t0
                    last_loss = float(loss_sum) / A
                    record = {
                        "step": step + 1, "loss": last_loss, "grad_norm": float(stats.norm),
                        "clipped": bool(stats.clipped), "lr": lr, "tokens_per_s": B * A * T / dt,
                    }
                    if cfg.optim.l2 or cfg.optim.l1:
                        record["penalty"] = float(penalty.detach())
                    logger.log(record)
                    bar.update(task, advance=1, info=f"loss {last_loss:.3f}")
                    done = step + 1
                    if done % cfg.checkpoint.every == 0 or done == cfg.steps:
                        self._checkpoint(done, self.elapsed_before + time.perf_counter() - t_start)
        finally:
            logger.close()
        return self.finish(last_loss, time.perf_counter() - t_start)  # training time only

    # ------------------------------------------------------------------ finish
    def finish(self, last_loss: float, seconds: float) -> dict[str, Any]:
        from ..data.tokenizer import tokenizer_signature
        from ..evaluate.perplexity import compute_perplexity
        from ..models.presets import model_hash, save_model
        from .monitor import read_metrics

        cfg = self.cfg
        model_dir = save_model(self.model, self.tokenizer, self.out / "model")
        val = compute_perplexity(self.model, self.tokenizer, self.val_docs, window=cfg.data.context,
                                 batch_size=cfg.eval_batch_size, progress=True,
                                 settings={"model": model_hash(model_dir), "tok": tokenizer_signature(self.tokenizer), "dtype": "float32"})
        metrics = read_metrics(self.out)
        if math.isnan(last_loss) and metrics:
            last_loss = metrics[-1]["loss"]
        total_seconds = self.elapsed_before + seconds
        steps_done = max(cfg.steps - self.start_step, 0)
        summary = {
            "steps": cfg.steps,
            "final_loss": last_loss,
            "val_loss": val.loss,
            "val_perplexity": val.token_perplexity,
            "val_bits_per_byte": val.bits_per_byte,
            "seconds": total_seconds,
            "tokens_per_s": (steps_done * cfg.optim.batch_size * cfg.optim.grad_accum * cfg.data.context / seconds) if steps_done and seconds > 0 else None,
            "tokens_seen": cfg.steps * cfg.optim.batch_size * cfg.optim.grad_accum * cfg.data.context,
            "parameters": self.n_params,
            "resumed_from": self.start_step if self.resuming else None,
            "steps_this_session": steps_done,
            "model": str(model_dir),
            "val_signature": val.signature,
        }
        write_json_atomic(self.out / "summary.json", summary)
        return summary


def train(cfg: TrainConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Run a training run described by ``cfg``; return its summary."""
    return TrainingRun(cfg, overwrite=overwrite).run()


def resume(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Continue a killed run from its newest complete checkpoint; return its summary."""
    return TrainingRun.resume(run_dir).run()


__all__ = ["TrainingRun", "lr_at", "resume", "train", "SteadyError"]
