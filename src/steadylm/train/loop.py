"""The `steadylm train` recipe: setup, train, checkpoint, finish.

Read top to bottom like nanoGPT's ``train.py``: one optimizer step is
``lr -> (forward, backward) x grad_accum -> clip -> AdamW step``. What steadylm adds is around
that core, never inside the arithmetic:

* the data order is a function of ``(seed, sample number)``, so a resume needs only the step;
* checkpoints hold weights, optimizer, RNG and data position (`checkpoint`), written atomically;
* every step writes one JSON line (`monitor`), and a resume cuts the log back to the checkpoint;
* under a launcher the ranks split each batch (DDP, or FSDP2 with ``--fsdp``: `Ranks`).

On CPU a run that is killed and resumed ends with weights bit-identical to one that never stopped
(tested with ``kill -9``). On GPUs the same holds only as far as the kernels are deterministic.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import TrainConfig, parse_injection
from ..errors import CheckpointError, ConfigError, SteadyError
from ..fsutil import FolderLock, check_out_dir, clear_folder, folder_contents, write_json_atomic
from ..io import read_json, read_json_object_or_empty
from ..runtime import launch_ranks, resolve_device


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


class Ranks:
    """The processes of a data-parallel ``steadylm train``, through ``accelerate`` (``accelerate
    launch`` / ``torchrun`` set RANK and WORLD_SIZE; one process is a world of one).

    accelerate starts the process group and wraps the model in DDP (`Accelerator.prepare_model`),
    whose backward all-reduces the gradients bucket by bucket while the backward pass runs; every
    rank then holds the global gradient and the `Stabilizer` gives the numbers of one process.
    Every rank runs the same arithmetic on rows ``rank::world`` of the same global batch, so the
    data order stays a function of (seed, sample) and a resume needs only the step.

    FSDP (``--fsdp``, or accelerate's own ``ACCELERATE_USE_FSDP=true`` from ``accelerate launch
    --use_fsdp`` or its config file): FSDP2 through accelerate's ``FullyShardedDataParallelPlugin``,
    one unit per transformer block; see `prepare`."""

    def __init__(self, cpu: bool, fsdp: bool = False) -> None:
        self.rank, self.world, self.local_rank = launch_ranks()
        self.active = self.world > 1
        self.fsdp = fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if self.fsdp and not self.active:
            what = "--fsdp" if fsdp else "ACCELERATE_USE_FSDP=true (accelerate launch --use_fsdp)"
            raise ConfigError(f"{what}: FSDP shards the model over several processes and this is one; start it with "
                              f"accelerate launch --num_processes N or torchrun --nproc_per_node N, or drop {what}")
        mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if mp not in ("no", ""):
            raise ConfigError(f"accelerate launch --mixed_precision {mp}: steadylm sets the precision with --precision; "
                              "launch with --mixed_precision no")
        from accelerate import Accelerator

        self.fsdp_plugin = None
        if self.fsdp:
            from accelerate.utils import FullyShardedDataParallelPlugin

            # FSDP2 whatever FSDP_VERSION the launcher left (its default is 1); a wrap policy from accelerate's
            # config wins, else one unit per transformer block; the other settings come from accelerate's environment
            policy = None if os.environ.get("FSDP_AUTO_WRAP_POLICY") else "transformer_based_wrap"
            self.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy=policy)
        try:  # starts the process group under a launcher; mixed precision is the Stabilizer's
            self.accelerator = Accelerator(cpu=cpu, mixed_precision="no", fsdp_plugin=self.fsdp_plugin)
        except ValueError as e:  # accelerate's state was set up otherwise earlier in this process
            raise ConfigError(f"accelerate: {str(e).splitlines()[0]}") from None
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

    def prepare(self, model, *, compile: bool):
        """The module that runs the forward pass: ``model`` compiled (opt-in), then wrapped in DDP by
        accelerate under a launcher; under FSDP ``model`` itself, sharded in place, then compiled.

        On GPUs FSDP is accelerate's own path (``Accelerator.prepare``, `fsdp2_prepare_model`).
        accelerate switches to ``DistributedType.FSDP`` only for GPU-type distributed runs: on CPU
        (gloo) it stays ``MULTI_CPU`` and would wrap the model in DDP. There we apply torch's
        ``fully_shard`` ourselves with the same plugin: accelerate's wrap policy
        (``fsdp2_prepare_auto_wrap_policy``: the model's ``_no_split_modules``, i.e. its transformer
        blocks), its ``reshard_after_forward`` and offload policy, then the root; no mixed-precision
        policy (the Stabilizer's autocast sets precision). Setting accelerate's distributed type to
        FSDP by hand instead would change what its other calls do, which branch on it. What
        accelerate adds on GPUs - the embedding and the output head in units of their own -
        changes when parameters are gathered, not the arithmetic."""
        import torch

        if not self.fsdp:
            return self.accelerator.prepare_model(torch.compile(model) if compile else model, device_placement=False)
        if self.accelerator.is_fsdp2:
            model = self.accelerator.prepare(model)
        else:
            from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
            from torch.distributed.fsdp import fully_shard

            plugin = self.fsdp_plugin
            plugin.set_auto_wrap_policy(model)
            wrap = fsdp2_prepare_auto_wrap_policy(plugin, model)
            kwargs = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload}
            for block in [m for m in model.modules() if m is not model and wrap is not None and wrap(m)]:
                fully_shard(block, **kwargs)
            fully_shard(model, offload_policy=plugin.cpu_offload)
        return torch.compile(model) if compile else model

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()

    def mean(self, value):
        """A 0-dim tensor averaged over the ranks (itself in one process)."""
        return self.accelerator.reduce(value, reduction="mean") if self.active else value

    def agree(self, ok: bool) -> bool:
        """True only if every rank says True (a failure on one rank stops all of them)."""
        if not self.active:
            return ok
        import torch

        return int(self.accelerator.reduce(torch.tensor([0 if ok else 1], device=self.accelerator.device), reduction="sum")) == 0

    def close(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class _RunHooks:
    """What ``steadylm train`` adds around the `Stabilizer` step: injected gradient spikes and the
    monitor's update-to-weight ratios (only on monitor steps)."""

    def __init__(self, group_names: list[str]):
        self.group_names = group_names
        self.spike: float | None = None
        self.watch = False
        self.ratios: dict[str, float] = {}
        self._before = None

    def arm(self, *, watch: bool, spike: float | None) -> None:
        self.watch, self.spike, self.ratios, self._before = watch, spike, {}, None

    def on_gradients(self, stab, params) -> None:
        if self.spike is not None:
            for _, p in params:
                if p.grad is not None:
                    p.grad.mul_(self.spike)

    def before_update(self, stab, params) -> None:
        if self.watch:
            self._before = [p.detach().clone() for p in params]

    def after_update(self, stab, params) -> None:
        if self.watch:
            from .monitor import update_ratios

            self.ratios = update_ratios(self._before, [g["params"] for g in stab.optimizer.param_groups], self.group_names)


class _NoLogger:
    """What ranks other than 0 log to."""

    def log(self, record) -> None:
        pass

    def rewind(self, step) -> None:
        pass

    def close(self) -> None:
        pass


def _wants_cpu(device: str | None) -> bool:
    """Whether accelerate should keep to the CPU: asked for, or no GPU to use."""
    import torch

    return (device or "").startswith("cpu") or not torch.cuda.is_available()


def check_precision(precision: str, device) -> None:
    """Refuse a precision the device cannot compute in (one autocast matmul tells), before anything is written."""
    import torch

    if precision == "fp32":
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} cannot compute in bfloat16; use fp16")
    try:
        with torch.autocast(device.type, dtype=dtype):
            a = torch.ones(2, 2, device=device)
            out = a @ a
        if out.dtype != dtype:
            raise RuntimeError(f"autocast gave {out.dtype}")
    except RuntimeError as e:
        raise ConfigError(f"--precision {precision}: not available on {device} ({str(e).splitlines()[0]})") from None


def is_run_dir(path: Path) -> bool:
    """A folder ``steadylm train`` made. Its ``config.json`` (the run's `TrainConfig`) is the first
    file written, so a run killed while its folder was being created counts too: `TrainingRun.resume`
    starts it again from step 0 and ``--overwrite`` replaces it. A model folder's config.json is not
    a TrainConfig, so ``--overwrite`` never takes one for a run."""
    d = read_json_object_or_empty(path / "config.json")
    return {"optim", "clip", "guard", "checkpoint"} <= d.keys()


class TrainingRun:
    """One training run in one folder. ``TrainingRun(cfg).run()`` or ``TrainingRun.resume(dir).run()``."""

    def __init__(self, cfg: TrainConfig, *, overwrite: bool = False, _resuming: bool = False, _flag: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.overwrite = overwrite
        self.resuming = _resuming
        self.flag = _flag or ("--resume" if _resuming else "--out")
        self.lock = FolderLock(self.out, self.flag)  # rank 0's, held from setup to the end of the run
        self.start_step = 0
        self.elapsed_before = 0.0
        self.dp = Ranks(cpu=_wants_cpu(cfg.device), fsdp=cfg.fsdp)
        if not self.dp.main:
            os.environ["STEADYLM_PROGRESS"] = "0"  # one progress bar, rank 0's

    @classmethod
    def resume(cls, run_dir: str | os.PathLike) -> "TrainingRun":
        d = Path(run_dir)
        if not d.is_dir():
            raise CheckpointError(f"--resume {run_dir}: no such folder")
        if not is_run_dir(d):
            raise CheckpointError(f"--resume {run_dir}: no steadylm run here (no config.json with training settings)")
        raw = read_json(d / "config.json", error=CheckpointError)
        raw["out"] = str(d)
        cores = os.cpu_count() or 1
        if isinstance(raw.get("threads"), int) and not isinstance(raw["threads"], bool) and raw["threads"] > cores:
            # started on a bigger machine: run with what is here (CPU results may then differ in the last bits)
            import sys

            sys.stderr.write(f"steadylm: note: the run used {raw['threads']} threads; this machine has {cores}, so it "
                             f"continues with {cores}\n")
            raw["threads"] = cores
        cfg = TrainConfig.from_dict(raw, origin=f"{d / 'config.json'}")
        if not (d / "run.json").is_file():  # killed while the folder was being created: start it again
            return cls(cfg, overwrite=True, _flag="--resume")
        return cls(cfg, _resuming=True)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Load data, tokenizer and model; validate everything before the run folder is touched."""
        import torch

        from ..data.packing import BlockDataset
        from ..data.sft import is_fine_tuning_source
        from ..data.sources import degrade_documents, load_documents, split_documents
        from ..data.tokenizer import encode_documents, load_tokenizer, separator_id, train_bpe
        from ..models.headrows import LossPositions
        from ..models.presets import build_model, load_model, model_context
        from .regularize import param_groups
        from .spikes import SpikeGuard
        from .optimizers import build_optimizer, group_labels
        from .stabilizer import Stabilizer

        cfg = self.cfg
        check_out_dir(self.out, self.flag)
        if self.out.is_dir() and (self.resuming or is_run_dir(self.out) or not folder_contents(self.out)):
            self._hold_folder()  # at once, and before anything in the folder is removed (a foreign folder is refused below)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = self._device(cfg.device)
        check_precision(cfg.precision, self.device)
        if cfg.optim.batch_size % self.dp.world:
            raise ConfigError(f"--batch-size {cfg.optim.batch_size} does not split evenly over {self.dp.world} processes "
                              "(each rank takes an equal share of every batch)")
        if not self.resuming and folder_contents(self.out):
            if not self.overwrite:
                hint = "use --resume to continue it" if is_run_dir(self.out) else "choose an empty folder"
                raise ConfigError(f"--out {self.out}: folder is not empty; {hint}, or pass --overwrite")
            if not is_run_dir(self.out):
                raise ConfigError(f"--out {self.out}: --overwrite only replaces a steadylm run folder, and this is not one")

        d = cfg.data
        self.sft = is_fine_tuning_source(d.source, text_field=d.text_field, messages_field=d.messages_field)
        if self.sft:
            self._check_fine_tuning_options()
        else:
            corpus = load_documents(d.source)
            train_docs, val_docs = split_documents(corpus, d.val_fraction)
            # a data-quality factor: the training side only, so validation measures the harm
            train_docs = degrade_documents(train_docs, corrupt=d.corrupt_fraction, duplicate=d.duplicate_fraction, seed=cfg.seed)
            self.val_docs = val_docs
            self.data_fingerprint = _fingerprint(corpus.documents)

        mcfg = cfg.model
        base = None
        if mcfg.path is not None:  # check the folder before the slower steps
            base = load_model(mcfg.path, trust_remote_code=mcfg.trust_remote_code, dropout=mcfg.dropout,
                              attn_softcap=mcfg.attn_softcap, final_softcap=mcfg.final_softcap)
        if self.resuming:
            tokenizer = load_tokenizer(str(self.out / "tokenizer"))
        elif mcfg.path is not None:
            tokenizer = load_tokenizer(mcfg.path, trust_remote_code=mcfg.trust_remote_code)
        else:
            tokenizer = train_bpe(train_docs, cfg.data.vocab_size)
        self.tokenizer = tokenizer
        if self.sft:
            self._load_fine_tuning_data(base)
        else:
            sep = separator_id(tokenizer)
            self.data = BlockDataset(encode_documents(tokenizer, train_docs), d.context, cfg.seed, sep, name=f"{corpus.name} (training split)")

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
                overrides=mcfg.overrides, attn_softcap=mcfg.attn_softcap, final_softcap=mcfg.final_softcap,
            )
        model = model.to(self.device)
        model.train()
        if cfg.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise ConfigError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
            if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.x on
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.r:  # from here on only the adapters train: the optimizer, clippers, guard and monitor see them alone
            from .lora import add_lora

            if self.dp.fsdp:
                raise ConfigError("--lora-r under FSDP is not supported; the frozen base is not sharded - run LoRA "
                                  "in one process or with DDP (accelerate launch without --use_fsdp)")
            model = add_lora(model, cfg.lora, seed=cfg.seed)
        self.model = model  # the module without DDP or compile wrappers (sharded in place under FSDP)
        # what runs the forward pass; before the optimizer is made, since FSDP replaces the parameters
        self.forward_model = self.dp.prepare(model, compile=cfg.compile)
        # the LM head at the loss positions only (fine-tuning rows); off under torch.compile, whose
        # graphs would recompile for every count of loss positions
        self.loss_positions = LossPositions(model, enabled=not cfg.compile)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        if cfg.compile:
            self._probe_compile()
        groups = param_groups(model, cfg.optim.weight_decay, decay_embeddings=cfg.optim.decay_embeddings)
        self.decayed = groups[0]["params"]
        self.group_names = [g.pop("names") for g in groups]
        if self.dp.fsdp and cfg.optim.optimizer != "adamw":  # sharded checkpoints take one plain torch optimizer
            raise ConfigError(f"--optimizer {cfg.optim.optimizer} is not supported under FSDP yet; use adamw")
        self.optimizer = build_optimizer(cfg.optim.optimizer, groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                         eps=cfg.optim.eps, model=model, reset_every=cfg.optim.spam_reset_every)
        self.clipper = self.build_clipper(cfg.clip, model)
        g = cfg.guard
        self.guard = SpikeGuard(g.action, sigma=g.sigma, window=g.window, min_samples=g.min_samples, max_consecutive=g.max_consecutive)
        self.hooks = _RunHooks(group_labels(self.optimizer, ["decay", "no_decay"]))  # param_groups order (Muon: 3)
        self.qk_clip = None
        if cfg.qk_clip:
            from .qkclip import QKClip

            self.qk_clip = QKClip(model, cfg.qk_clip)  # a hook after each update; refuses FSDP and LoRA
        self.stabilizer = Stabilizer(
            self.forward_model, self.optimizer, self.clipper, self.guard, accum_steps=cfg.optim.grad_accum,
            accelerator=self.dp.accelerator, ema=cfg.ema, hooks=[self.hooks, *([self.qk_clip] if self.qk_clip else [])], owns_checkpoints=True,
            scaler=torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None,
            stop_hint=f"the checkpoints in {self.out / 'checkpoints'} are intact - lower --lr, clip harder, "
                      "or raise --guard-max-consecutive",
        )
        self.data_offset = 0
        self.rollbacks = 0
        self.lr_low_until = 0  # steps before this one run at --rollback-lr-factor after a rollback
        self.fired: set[str] = set()
        self.n_params = sum(p.numel() for p in model.parameters())
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def _probe_compile(self) -> None:
        """Compile now, forward and backward on a batch of the run's shape: torch.compile fails
        only when it first runs (no C compiler, an unsupported op), and that must be one line
        before the run folder is written, not a traceback at step 1. The kernels are cached for
        the run; the probe's gradients are dropped and the random streams are left untouched."""
        import torch

        cfg = self.cfg
        x = torch.zeros((cfg.optim.batch_size // self.dp.world, cfg.data.context), dtype=torch.long, device=self.device)
        dtype = self.autocast_dtype
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                    torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                self.forward_model(input_ids=x, use_cache=False).logits.float().mean().backward()
        except Exception as e:  # dynamo/inductor raise many kinds
            first = (str(e).strip().splitlines() or ["no detail"])[0][:200]
            raise ConfigError(f"--compile: torch.compile failed ({type(e).__name__}: {first}); "
                              "run without --compile") from None
        finally:
            for p in self.model.parameters():
                p.grad = None

    def _check_fine_tuning_options(self) -> None:
        """Refuse what fine-tuning data cannot do, before anything slow runs."""
        from ..config import DataConfig, ModelConfig, flag_of

        d = self.cfg.data
        if self.cfg.model.path is None:
            raise ConfigError(f"{flag_of(DataConfig, 'source')} {d.source}: fine-tuning data (chat, prompt/completion, parquet "
                              f"or a datasets folder) is rendered with a pretrained model's tokenizer: give "
                              f"{flag_of(ModelConfig, 'path')} (a model folder or .gguf file)")
        degrade = [flag_of(d, n) for n in ("corrupt_fraction", "duplicate_fraction") if getattr(d, n)]
        if degrade:
            raise ConfigError(f"{' and '.join(degrade)} degrade text documents; fine-tuning data ({d.source}) takes neither")

    def _load_fine_tuning_data(self, base) -> None:
        """``self.data`` and ``self.val_data`` (`SFTDataset`, validation None when no example fell
        there) from the fine-tuning source, packed as ``--packing`` says or, under ``auto``, by
        position ids where ``base`` keeps packed examples apart; the fingerprint covers the tokens,
        loss flags, boundaries and packing."""
        import sys

        from ..config import DataConfig, flag_of
        from ..data.sft import load_sft, supports_position_packing

        cfg, d = self.cfg, self.cfg.data
        packing = d.packing
        if packing != "padding":
            fits = supports_position_packing(base)
            if packing == "auto":
                packing = "positions" if fits else "padding"
            elif not fits:
                raise ConfigError(f"{flag_of(DataConfig, 'packing')} positions: {cfg.model.path} does not keep position-packed "
                                  "examples apart (its attention ignores restarting position ids); use padding or auto")
        self.data, self.val_data = load_sft(d.source, self.tokenizer, context=d.context, seed=cfg.seed, packing=packing,
                                            loss_on=d.loss_on, text_field=d.text_field, messages_field=d.messages_field,
                                            val_fraction=d.val_fraction)
        val = self.val_data.examples.fingerprint() if self.val_data is not None else ""
        self.data_fingerprint = _fingerprint([packing, self.data.examples.fingerprint(), val])
        if self.val_data is None and self.dp.main:
            sys.stderr.write(f"steadylm: note: no example of {d.source} fell in the held-out {flag_of(DataConfig, 'val_fraction')} "
                             f"{d.val_fraction} (split by content), so the run reports no validation loss\n")

    def _device(self, name: str | None):
        return resolve_device(name, local_rank=self.dp.local_rank if self.dp.active else None)

    @staticmethod
    def build_clipper(clip, model):
        """The clipper a `ClipConfig` names, for ``model``."""
        from .clip import make_clipper

        kwargs = clip.clipper_kwargs()
        if clip.method == "agc":
            out = model.get_output_embeddings()
            kwargs["exclude"] = [out.weight] if (clip.agc_skip_output and out is not None) else []
        return make_clipper(clip.method, **kwargs)

    def _prepare_folder(self) -> None:
        """Create the run folder (fresh run) or restore the newest checkpoint (resume)."""
        import torch

        from .checkpoint import list_checkpoints, verify_checkpoint

        if not self.resuming:
            if self.dp.main:
                if self.out.is_dir():  # holds a run only with --overwrite; the folder and its lock file stay
                    clear_folder(self.out)
                self.out.mkdir(parents=True, exist_ok=True)
            self._hold_folder()
            if self.dp.main:
                # config.json first (from now on the folder is a run: resumable, overwritable), run.json last
                write_json_atomic(self.out / "config.json", self.cfg.to_dict())
                self.tokenizer.save_pretrained(self.out / "tokenizer")
                write_json_atomic(self.out / "run.json", {
                    "steadylm": __version__, "torch": torch.__version__, "data_fingerprint": self.data_fingerprint,
                    "parameters": self.n_params, "trainable_parameters": self.n_trainable,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "world_size": self.dp.world, "fsdp": self.dp.fsdp,
                    **({"base_model": self._base_hash()} if self.cfg.lora.r else {}),
                })
            self.dp.barrier()
            torch.manual_seed(self.cfg.seed + self.dp.rank)  # dropout RNG (each rank its own masks)
            return

        run = read_json(self.out / "run.json", error=CheckpointError)
        if run.get("data_fingerprint") != self.data_fingerprint:
            raise CheckpointError(f"--resume {self.out}: the data in {self.cfg.data.source} changed since the run started")
        if self.cfg.lora.r and run.get("base_model") != self._base_hash():  # the checkpoints hold the adapters alone
            raise CheckpointError(f"--resume {self.out}: the base model {self.cfg.model.path} changed since the run started; "
                                  "its LoRA adapters were trained on the other one")
        started = run.get("world_size", 1)
        if started != self.dp.world and self.dp.main:
            # sound: the global batch and its order do not depend on the number of processes
            import sys

            sys.stderr.write(f"steadylm: note: the run started with {started} process(es) and continues with {self.dp.world}; "
                             "each step still takes the same global batch (sums over ranks may differ in the last bits)\n")
        ckpts = list_checkpoints(self.out)
        if not ckpts:
            torch.manual_seed(self.cfg.seed + self.dp.rank)
            return  # killed before its first checkpoint: start again from step 0
        step, path = ckpts[-1]
        verify_checkpoint(path)
        state = self._restore(path)
        self.start_step = step
        self.elapsed_before = float(state.get("seconds", 0.0))
        self.fired = set(state.get("fired", []))

    def _base_hash(self) -> str:
        from ..models.presets import model_hash

        return model_hash(self.cfg.model.path)

    def _hold_folder(self) -> None:
        """Rank 0 locks the run folder (a no-op once held); every rank stops if it could not, so
        none waits at a barrier for a rank 0 that has left."""
        err = None
        if self.dp.main:
            try:
                self.lock.acquire()
            except SteadyError as e:
                err = e
        if not self.dp.agree(err is None):
            raise err or ConfigError(f"{self.flag} {self.out}: rank 0 could not lock the folder")

    def _restore(self, path: Path) -> dict[str, Any]:
        """Load weights, optimizer, RNG and stateful pieces from a checkpoint folder."""
        import torch
        from safetensors.torch import load_model as load_weights

        from .checkpoint import SHARDED, load_training_state, read_shards, verify_checkpoint

        verify_checkpoint(path)
        stab = self.stabilizer
        if (path / SHARDED).is_dir():  # every rank reads its shards (resharded for this world size)
            read_shards(path, self.model, self.optimizer, stab.ema_params)
        elif self.dp.fsdp:
            raise CheckpointError(f"{path}: written without FSDP (one model.safetensors); continue it without FSDP "
                                  "(no --fsdp, no accelerate launch --use_fsdp)")
        elif self.cfg.lora.r:  # the adapters alone: the frozen base came from --model
            from .lora import load_adapter_weights

            load_adapter_weights(self.model, path)
        else:
            try:
                load_weights(self.model, str(path / "model.safetensors"))
            except Exception as e:
                raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        state, extra = load_training_state(path, self.optimizer)
        if "clipper" in extra and hasattr(self.clipper, "load_state_dict"):
            self.clipper.load_state_dict(extra["clipper"])
        if stab.ema_params is not None and "ema" in extra:
            torch._foreach_copy_(stab.ema_params, extra["ema"])
        if stab.scaler is not None and "scaler" in extra:
            stab.scaler.load_state_dict(extra["scaler"])
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])
        self.data_offset = int(state.get("data_offset", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_low_until = int(state.get("lr_low_until", 0))
        return state

    # ------------------------------------------------------------------ train
    def _checkpoint(self, step: int, seconds: float) -> None:
        samples = step * self.cfg.optim.batch_size * self.cfg.optim.grad_accum + self.data_offset
        epoch, index = self.data.position(samples)
        extra: dict[str, Any] = {}
        if hasattr(self.clipper, "state_dict"):
            extra["clipper"] = self.clipper.state_dict()
        stab = self.stabilizer
        if stab.ema_params is not None and not self.dp.fsdp:  # under FSDP the EMA weights are shards
            extra["ema"] = [e.clone() for e in stab.ema_params]
        if stab.scaler is not None:
            extra["scaler"] = stab.scaler.state_dict()
        if self.dp.fsdp:  # every rank writes its shards into rank 0's folder; rank 0 completes it below
            from .checkpoint import start_checkpoint, tmp_folder, write_shards

            if self.dp.main:
                start_checkpoint(self.out, step)
            self.dp.barrier()
            write_shards(tmp_folder(self.out, step), self.model, self.optimizer, stab.ema_params)
        if not self.dp.main:
            self.dp.barrier()  # wait until rank 0 has written it
            return
        self._save_checkpoint(step, seconds, samples, epoch, index, extra)
        self.dp.barrier()

    def _save_checkpoint(self, step, seconds, samples, epoch, index, extra) -> None:
        from .checkpoint import save_checkpoint

        save_checkpoint(self.out, step, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer, keep=self.cfg.checkpoint.keep,
                        train_config=self.cfg.to_dict(), extra=extra, sharded=self.dp.fsdp,
                        state={"samples": samples, "data_position": {"epoch": epoch, "index": index},
                               "data_offset": self.data_offset,
                               "scheduler": {"kind": "warmup_cosine", "step": step, "warmup_steps": self.cfg.warmup_steps,
                                             "next_lr": lr_at(step, self.cfg) if step < self.cfg.steps else None},
                               "guard": self.guard.state_dict(), "fired": sorted(self.fired),
                               "rollbacks": self.rollbacks, "lr_low_until": self.lr_low_until,
                               "seconds": seconds, "steadylm": __version__})

    def _rollback(self, step: int, logger) -> int:
        """Restore the last good checkpoint before ``step`` and skip the batches consumed since.

        The k-th rollback in a row goes k checkpoints back: if the newest checkpoint already
        holds the damage, the next incident reaches further into the past."""
        from .checkpoint import list_checkpoints

        before = [(s, p) for s, p in list_checkpoints(self.out) if s < step]
        if not before:
            return -1
        back = min(self.guard.consecutive, len(before))
        target, path = before[-back]
        offset_before = self.data_offset
        guard_state, rollbacks = self.guard.state_dict(), self.rollbacks
        self._restore(path)
        self.guard.load_state_dict(guard_state)  # the incident history is not rolled back, nor the count
        self.rollbacks = rollbacks
        # Skip every batch since the checkpoint, the bad one included (PaLM's remedy).
        self.data_offset = offset_before + (step - target) * self.cfg.optim.batch_size * self.cfg.optim.grad_accum
        self.rollbacks += 1
        logger.rewind(target)
        logger.log({"step": step, "event": "rollback", "to_step": target,
                    "skipped_samples": self.data_offset - offset_before, "rollbacks": self.rollbacks})
        g = self.cfg.guard
        if g.rollback_lr_steps and g.rollback_lr_factor < 1.0:
            self.lr_low_until = target + g.rollback_lr_steps
            logger.log({"step": step, "event": "lr_lowered", "factor": g.rollback_lr_factor,
                        "from_step": target + 1, "until_step": self.lr_low_until})
        return target

    def run(self, *, keep_lock: bool = False) -> dict[str, Any]:
        """Train to ``cfg.steps``, write the model and ``summary.json``, and return the summary.
        The run folder's lock is released at the end, or, with ``keep_lock`` and a run that
        finished, left held for the caller to write more there (the CLI's plots) and release."""
        ok = False
        try:
            summary = self._run()
            ok = True
            return summary
        finally:
            if not (keep_lock and ok):
                self.lock.release()

    def _run(self) -> dict[str, Any]:
        from ..progress import make_progress
        from .monitor import AttentionProbe, MetricsLogger
        from .spikes import GuardStop

        done = self._finished_summary()
        if done is not None:
            self.dp.close()
            return done
        self.setup()
        self._prepare_folder()
        cfg = self.cfg
        self.injections = {}
        self.tokens_done = 0  # real input tokens trained on in this session
        for spec in cfg.guard.inject:  # a later spec for the same kind and step overrides an earlier one
            inj = parse_injection(spec)
            self.injections[(inj.kind, inj.step)] = inj
        logger = MetricsLogger(self.out, resume_step=self.start_step if self.resuming else None) if self.dp.main else _NoLogger()
        self.probe = AttentionProbe(self.model) if cfg.monitor_every else None
        if cfg.guard.action == "rollback" and not self.resuming and self.start_step == 0:
            self._checkpoint(0, 0.0)  # something to roll back to before the first regular checkpoint
        t_start = time.perf_counter()
        last_loss = float("nan")
        step = self.start_step
        try:
            with make_progress() as bar:
                task = bar.add_task("train", total=cfg.steps, completed=self.start_step, info="")
                while step < cfg.steps:
                    n = step + 1  # the step being taken, counting from 1
                    report = self._train_step(n, logger)
                    if report.action == "rollback":
                        limit = cfg.guard.max_rollbacks
                        if limit is not None and self.rollbacks >= limit:
                            raise GuardStop(f"stopped at step {n}: {self.rollbacks} rollbacks, the limit set by --guard-max-rollbacks; "
                                            f"the checkpoints in {self.out / 'checkpoints'} are intact - lower --lr or clip harder")
                        target = self._rollback(n, logger)
                        if target >= 0:
                            step = target
                            bar.update(task, completed=step, info=f"rolled back to {target}")
                            continue
                    if math.isfinite(report.loss):
                        last_loss = report.loss
                    bar.update(task, advance=1, info=f"loss {report.loss:.3f}")
                    step = n
                    if n % cfg.checkpoint.every == 0 or n == cfg.steps:
                        self._checkpoint(n, self.elapsed_before + time.perf_counter() - t_start)
        except GuardStop as stop:
            logger.close()
            if not self.dp.main:
                raise
            write_json_atomic(self.out / "summary.json", {
                "steps": cfg.steps, "stopped_at": step + 1, "stopped": str(stop),
                "seconds": self.elapsed_before + time.perf_counter() - t_start, **self.incident_summary()})
            raise
        finally:
            logger.close()
            if self.probe is not None:
                self.probe.close()
        seconds = time.perf_counter() - t_start  # training time only
        try:
            model = self._save_models()
            if not self.dp.main:  # rank 0 evaluates the model
                return {"rank": self.dp.rank, "world_size": self.dp.world, "final_loss": last_loss}
            return self.finish(model, last_loss, seconds)
        finally:
            self.dp.close()

    def _finished_summary(self) -> dict[str, Any] | None:
        """Under ``--resume``, the summary of a run that already finished (one the guard did not
        stop), said in one line: validating again would only rewrite it and lose its throughput."""
        if not self.resuming:
            return None
        summary = read_json_object_or_empty(self.out / "summary.json")
        if not summary or "stopped" in summary:
            return None
        if self.dp.main:
            import sys

            sys.stderr.write(f"steadylm: note: the run in {self.out} finished all {summary.get('steps')} steps; "
                             "nothing to resume (summary.json is unchanged)\n")
        return summary

    def _lr(self, step: int) -> float:
        """The schedule's learning rate for ``step`` (from 0), lowered for a while after a rollback."""
        lr = lr_at(step, self.cfg)
        return lr * self.cfg.guard.rollback_lr_factor if step < self.lr_low_until else lr

    def _train_step(self, n: int, logger):
        """Optimizer step ``n`` (from 1): the batches, forward passes and the `Stabilizer`; one log line.

        Everything steadylm adds (injected faults, the monitor) sits around ``stab.step``; the
        Stabilizer alone turns the loss into an update. Host reads: one per step (the Stabilizer's),
        more only on monitor steps. A micro-batch's loss (and z-loss, and the monitor's log Z) is
        the mean over its loss-carrying targets (labels other than -100: every target of text
        blocks); micro-batches are weighted equally, whatever their count of loss tokens."""
        import torch
        import torch.nn.functional as F

        from ..data.sft import IGNORE
        from .regularize import l1_penalty, l2_penalty
        from .spikes import GuardStop

        cfg, dp, stab, dev = self.cfg, self.dp, self.stabilizer, self.device
        B, A = cfg.optim.batch_size, cfg.optim.grad_accum
        t0 = time.perf_counter()
        fire = {k: v for (k, s_), v in self.injections.items() if s_ == n and v.spec not in self.fired}
        for inj in fire.values():
            self.fired.add(inj.spec)
            logger.log({"step": n, "event": "inject", "kind": inj.kind, "factor": inj.factor, "spec": inj.spec})
        lr = self._lr(n - 1) * (fire["lr"].factor if "lr" in fire else 1.0)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        watch = bool(cfg.monitor_every) and n % cfg.monitor_every == 0
        if self.probe is not None:
            self.probe.armed = watch
        self.hooks.arm(watch=watch, spike=fire["spike"].factor if "spike" in fire else None)
        first_sample = (n - 1) * A * B + self.data_offset
        tokens = self.data.real_tokens(first_sample, A * B)  # real ones: fine-tuning rows hold padding
        penalized = bool(cfg.optim.l2 or cfg.optim.l1)
        z_sum = torch.zeros((), device=dev) if cfg.z_loss else None
        extras: dict[str, torch.Tensor] = {}
        for micro in range(A):
            batch = self.data.rows(first_sample + micro * B, B)  # input_ids, labels (B, T); position_ids if packed
            if dp.active:  # this rank's equal share of the global batch
                batch = {k: v[dp.rank::dp.world] for k, v in batch.items()}  # (B/world, T) each
            labels = batch.pop("labels")  # stays on the host: the loss positions are picked there
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            with stab.accumulate(), torch.autocast(dev.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                # (B, T, V) and (B*T,), or (1, N, V) and (N,) at the loss positions alone (fine-tuning rows)
                logits, y = self.loss_positions.logits(self.forward_model, batch, labels, IGNORE)
            flat = logits.reshape(-1, logits.size(-1)).float()  # (B*T, V) or (N, V)
            loss = F.cross_entropy(flat, y, ignore_index=IGNORE)
            if "nan" in fire:
                loss = loss * float("nan")
            on = (y != IGNORE).float() if cfg.z_loss or (watch and micro == 0) else None  # (B*T,) 1 on loss tokens
            aux = None
            if cfg.z_loss:
                z = (flat.logsumexp(-1).pow(2) * on).sum() / on.sum()  # log^2 Z per loss token
                aux = cfg.z_loss * z
                z_sum += z.detach()
            if micro == 0 and penalized:  # once per step: A x, as the step divides by A
                penalty = l2_penalty(self.decayed, cfg.optim.l2) + l1_penalty(self.decayed, cfg.optim.l1)
                aux = A * penalty if aux is None else aux + A * penalty
                extras["penalty"] = penalty.detach()
            if watch and micro == 0:
                log_z = flat.detach().logsumexp(-1)  # (B*T,)
                extras.update(log_z_mean=(log_z * on).sum() / on.sum(), log_z_max=log_z.masked_fill(on == 0, -math.inf).max())
            if micro == A - 1 and z_sum is not None:
                extras["z_loss"] = dp.mean(z_sum / A)
            # the (B, T, V) logits are not needed by the backward pass (cross-entropy saved its own
            # log-softmax): holding them through it raised the peak by their size
            del logits, flat
            try:
                report = stab.step(loss, aux=aux, extras=extras if micro == A - 1 else None)
            except GuardStop as stop:  # log the step that stopped the run, then stop
                self._log_step(logger, n, stop.report, lr, first_sample, tokens, time.perf_counter() - t0)
                raise
        self.tokens_done += tokens
        self._log_step(logger, n, report, lr, first_sample, tokens, time.perf_counter() - t0)
        return report

    def _log_step(self, logger, n: int, report, lr: float, first_sample: int, tokens: int, seconds: float) -> None:
        """The step's metrics line and its events (incidents, an fp16 overflow)."""
        cfg = self.cfg
        B, A = cfg.optim.batch_size, cfg.optim.grad_accum
        record = {"step": n, "loss": report.loss, "grad_norm": report.grad_norm, "clipped": report.clipped,
                  "threshold": report.threshold, "lr": lr, "tokens_per_s": tokens / seconds}
        ex = report.extras
        if "penalty" in ex:
            record["penalty"] = ex["penalty"]
        if "z_loss" in ex:
            record["z_loss"] = ex["z_loss"]
        if report.post_norm is not None:
            record["post_norm"] = report.post_norm
        if report.loss_scale is not None:
            record["loss_scale"] = report.loss_scale
        if self.hooks.watch:
            record.update(self.hooks.ratios)  # empty when the update was not taken
            if "log_z_mean" in ex:
                record["log_z_mean"], record["log_z_max"] = ex["log_z_mean"], ex["log_z_max"]
            if self.probe is not None and self.probe.supported:
                record["max_attn_logit"] = self.probe.take()
            if self.qk_clip is not None and self.qk_clip.clipped_heads is not None:  # a host read, monitor steps only
                record["qk_clipped_heads"] = int(self.qk_clip.clipped_heads)
        if report.incidents or report.overflow:
            record["skipped"] = report.skipped
        logger.log(record)
        if report.overflow:
            scaler = self.stabilizer.scaler
            logger.log({"step": n, "event": "overflow", "loss_scale": report.loss_scale,
                        "next_loss_scale": report.loss_scale * scaler.get_backoff_factor()})
        for inc in report.incidents:
            logger.log({"step": n, "event": "incident", "kind": inc.kind, "value": inc.value,
                        "threshold": inc.threshold, "action": inc.action,
                        "batches": list(range(first_sample, first_sample + A * B))})

    # ------------------------------------------------------------------ finish
    def _save_models(self):
        """Write ``model/`` (and ``model-ema/``) as plain HF folders from rank 0 and return the model
        rank 0 evaluates. Every rank calls it: under FSDP the shards are gathered on rank 0."""
        import torch

        if self.stabilizer.ema_params is not None:  # the EMA weights in the model's place, for a moment
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            raw = [p.detach().clone() for p in params]
            with torch.no_grad():  # one copy_ per tensor: DTensor has no _foreach_copy_
                for p, e in zip(params, self.stabilizer.ema_params):
                    p.copy_(e)
                ema = self._whole_model()
                if self.dp.main:
                    self._export(ema, "model-ema")
                for p, r in zip(params, raw):
                    p.copy_(r)
        model = self._whole_model()
        if self.dp.main:
            model = self._export(model, "model", last=True)
        return model

    def _export(self, model, name: str, *, last: bool = False):
        """Write ``name/`` as a plain HF folder and return the model it holds. With LoRA the adapter
        goes to ``adapter/`` (``adapter-ema/``), loadable by peft, and ``name/`` holds the merged
        model, so every eval command reads it unchanged: merged into a copy, or, for the ``last``
        export (the trained model itself, whose weights nothing needs afterwards), in place."""
        from ..models.presets import save_model

        if self.cfg.lora.r:
            from .lora import merged

            save_model(model, self.tokenizer, self.out / name.replace("model", "adapter"))
            model = merged(model, in_place=last)
        save_model(model, self.tokenizer, self.out / name)
        return model

    def _whole_model(self):
        """The model with all its weights on rank 0: itself, or under FSDP an unsharded copy of
        the gathered full state dict (None on the other ranks; a collective, every rank calls it)."""
        if not self.dp.fsdp:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from transformers import AutoModelForCausalLM

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dp.main:
            return None
        whole = AutoModelForCausalLM.from_config(self.model.config, trust_remote_code=self.cfg.model.trust_remote_code)
        whole.load_state_dict(full)
        return whole.to(self.device)

    def finish(self, model, last_loss: float, seconds: float) -> dict[str, Any]:
        """Rank 0's end of a run: validation perplexity of ``model`` (written to ``model/``) and ``summary.json``.
        ``tokens_per_s`` counts the real input tokens of this session's steps (fine-tuning rows hold padding)."""
        from .monitor import read_metrics

        cfg = self.cfg
        model_dir = self.out / "model"
        val = self._validate(model, model_dir)
        metrics = read_metrics(self.out)
        if math.isnan(last_loss) and metrics:
            last_loss = metrics[-1]["loss"]
        total_seconds = self.elapsed_before + seconds
        steps_done = max(cfg.steps - self.start_step, 0)
        summary = {
            "steps": cfg.steps,
            "final_loss": last_loss,
            "val_loss": val["loss"],
            "val_perplexity": val["perplexity"],
            "val_bits_per_byte": val["bits_per_byte"],
            "seconds": total_seconds,
            "tokens_per_s": self.tokens_done / seconds if self.tokens_done and seconds > 0 else None,
            "tokens_seen": self.data.real_tokens(0, cfg.steps * cfg.optim.batch_size * cfg.optim.grad_accum),
            "parameters": self.n_params,
            "trainable_parameters": self.n_trainable,
            "resumed_from": self.start_step if self.resuming else None,
            "steps_this_session": steps_done,
            "model": str(model_dir),
            "val_signature": val["signature"],
            **self.incident_summary(),
        }
        if self.sft:
            summary["packing"] = self.data.report.as_dict()
        if self.stabilizer.ema_params is not None:
            summary["ema_model"] = str(self.out / "model-ema")
        if cfg.lora.r:
            summary["adapter"] = str(self.out / "adapter")
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    def _validate(self, model, model_dir: Path) -> dict[str, Any]:
        """Held-out loss, perplexity, bits per byte (text only) and signature: `compute_perplexity`
        over the validation documents, or for fine-tuning data `heldout_loss` over the held-out
        examples' loss tokens (all None when no example was held out)."""
        from .. import __version__
        from ..data.sft import heldout_loss
        from ..data.tokenizer import tokenizer_signature
        from ..evaluate.perplexity import compute_perplexity
        from ..models.presets import model_hash

        cfg = self.cfg
        settings = {"model": model_hash(model_dir), "tok": tokenizer_signature(self.tokenizer), "dtype": "float32"}
        if not self.sft:
            val = compute_perplexity(model, self.tokenizer, self.val_docs, window=cfg.data.context,
                                     batch_size=cfg.eval_batch_size, progress=True, settings=settings)
            return {"loss": val.loss, "perplexity": val.token_perplexity, "bits_per_byte": val.bits_per_byte,
                    "signature": val.signature}
        if self.val_data is None:
            return {"loss": None, "perplexity": None, "bits_per_byte": None, "signature": None}
        loss, n = heldout_loss(model, self.val_data, batch_size=cfg.eval_batch_size)
        settings.update(heldout=cfg.data.loss_on, targets=n, context=cfg.data.context, packing=self.data.report.packing)
        return {"loss": loss, "perplexity": math.inf if loss > 700 else math.exp(loss), "bits_per_byte": None,
                "signature": "|".join([f"steadylm:{__version__}", *(f"{k}:{v}" for k, v in settings.items())])}

    def incident_summary(self) -> dict[str, Any]:
        """Counts of incidents, skips and rollbacks, and what the guard did about each injected fault."""
        from .monitor import read_metrics

        events = read_metrics(self.out, events=True)
        incidents = [e for e in events if e["event"] == "incident"]
        injected = []
        for e in (e for e in events if e["event"] == "inject"):
            near = [i for i in incidents if e["step"] <= i["step"] <= e["step"] + 2]
            injected.append({"spec": e["spec"], "step": e["step"],
                             "detected": [{"step": i["step"], "kind": i["kind"], "action": i["action"]} for i in near]})
        return {
            "guard": self.cfg.guard.action,
            "incidents": len(incidents),
            "spikes": sum(i["kind"] in ("loss_spike", "grad_spike") for i in incidents),
            "nonfinite_steps": len({i["step"] for i in incidents if i["kind"].startswith("nonfinite")}),
            "skipped_steps": len({i["step"] for i in incidents if i["action"] in ("skip", "rollback")}),
            "rollbacks": sum(e["event"] == "rollback" for e in events),
            "injected": injected,
        }


def train(cfg: TrainConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Run a training run described by ``cfg``; return its summary."""
    return TrainingRun(cfg, overwrite=overwrite).run()


def resume(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Continue a killed run from its newest complete checkpoint; return its summary."""
    return TrainingRun.resume(run_dir).run()


__all__ = ["TrainingRun", "lr_at", "resume", "train"]
