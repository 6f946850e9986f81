"""Checkpoints that survive a kill.

A checkpoint is a folder ``checkpoints/step-N/`` that is at the same time a complete Hugging Face
model folder (``config.json``, ``model.safetensors``, tokenizer files) - so any checkpoint can be
evaluated or averaged like a finished model - and the rest of the training state. A LoRA run's
checkpoint is a peft adapter folder instead (``adapter_config.json``, ``adapter_model.safetensors``):
the base is frozen, so writing it at every checkpoint would only cost disk; a resume loads it
again from ``--model`` (its hash checked against the one recorded when the run started).

* ``optimizer.pt`` - the optimizer's ``state_dict`` (tensors and numbers only; read back with
  ``torch.load(weights_only=True)``, which refuses to unpickle code);
* ``rng.pt`` - torch's CPU (and CUDA, when present) RNG states; ``rng_python.json`` - Python's
  and NumPy's global RNG states;
* ``train_config.json`` - the run's resolved `TrainConfig`;
* ``extra.pt`` - state of stateful pieces (adaptive clippers' statistics, EMA weights), if any;
* ``state.json`` - step, samples consumed, data position, the learning-rate schedule's position
  (the schedule is a pure function of the step), elapsed seconds, and the size and
  sha256 of every other file, checked before a resume so a corrupt checkpoint is named, not loaded.

Writing is atomic: everything goes to ``step-N.tmp/`` first, which is renamed to ``step-N/``
only when complete. A kill at any moment leaves either the old set of checkpoints or the new
one. Old checkpoints beyond ``keep`` are deleted after the new one is in place.

Under FSDP no rank holds the whole model, so the weights, the optimizer state and the EMA weights
are written as they lie, sharded, by every rank into ``step-N.tmp/sharded/`` with
``torch.distributed.checkpoint`` (DCP; `write_shards`), as accelerate's ``save_state`` does for
FSDP2; rank 0 then adds the rest (the model's ``config.json`` instead of its weights), hashes every
file, ``sharded/`` included, and renames. DCP reshards on load, so such a checkpoint resumes on any
number of ranks. The finished model is still a plain HF folder (the loop gathers it on rank 0).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DataError, SteadyError
from ..fsutil import fsync_dir, write_json_atomic
from ..io import read_json

_STEP = re.compile(r"^step-(\d+)$")
SHARDED = "sharded"
"""the folder of a checkpoint that holds the ranks' DCP shards (FSDP)"""
ADAPTER = "adapter_model.safetensors"
"""the weights of a LoRA run's checkpoint: peft's adapter file, without the frozen base"""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _host_rng_state() -> dict[str, Any]:
    """Python's and NumPy's global RNG states as JSON (steadylm uses neither; user code may)."""
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def _restore_host_rng_state(d: dict[str, Any]) -> None:
    import random

    import numpy as np

    version, internal, gauss = d["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = d["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError, torch.save's RuntimeError, safetensors' own error."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def tmp_folder(run_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is complete."""
    return Path(run_dir) / "checkpoints" / f"step-{step}.tmp"


def start_checkpoint(run_dir: str | os.PathLike, step: int) -> Path:
    """An empty `tmp_folder` to write into (rank 0's, before the ranks write their shards)."""
    tmp = tmp_folder(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


@contextlib.contextmanager
def _writing(tmp: Path, *, cleanup: bool = True):
    """Around writing into ``tmp``: a failed write removes it (with ``cleanup``; the older
    checkpoints are untouched, nothing is pruned yet) and a full disk or a read-only folder becomes
    one `SteadyError` line (not a CheckpointError, which means "unusable checkpoint")."""
    try:
        yield
    except BaseException as e:
        if cleanup:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, _write_errors()):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        raise SteadyError(f"cannot write checkpoint {final}: {reason}; the earlier checkpoints are kept "
                          "(make room, then continue with --resume)") from None


def write_shards(tmp: Path, model, optimizer, ema: list | None = None) -> None:
    """This rank's shards of the model, the optimizer state and the EMA weights into ``tmp/sharded``
    (DCP; a collective: every rank calls it with the same ``tmp``). An optimizer that has not stepped
    yet is left out: DCP would initialise its state by stepping it with zero gradients, which
    changes Adam's step count."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    with _writing(tmp, cleanup=not dist.is_initialized() or dist.get_rank() == 0):  # the folder is rank 0's
        dcp.save(_shard_state(model, optimizer if optimizer.state else None, ema), checkpoint_id=tmp / SHARDED)


def _shard_state(model, optimizer, ema) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    if ema is not None:
        state["ema"] = {str(i): t for i, t in enumerate(ema)}  # loaded in place
    return state


def read_shards(path: Path, model, optimizer, ema: list | None = None) -> None:
    """Load what `write_shards` wrote into the model, optimizer and EMA weights (a collective;
    any number of ranks, sharded or not: DCP reshards). A checkpoint without optimizer state
    (written before the first step) leaves the optimizer fresh."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    has_optim = bool(read_json(path / "state.json").get("optimizer_state", True))
    if not has_optim:
        optimizer.state.clear()
    state = _shard_state(model, optimizer if has_optim else None, ema)
    dcp.load(state, checkpoint_id=path / SHARDED)
    set_model_state_dict(model, state["model"])
    if has_optim:
        set_optimizer_state_dict(model, optimizer, state["optim"])


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model, tokenizer, optimizer, state: dict[str, Any], keep: int,
                    train_config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    sharded: bool = False) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and prune to the newest ``keep``.

    ``sharded``: the ranks have already put the weights and optimizer state into the folder
    `start_checkpoint` made (`write_shards`); this adds the rest, hashes and renames (rank 0)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = tmp_folder(run_dir, step) if sharded else start_checkpoint(run_dir, step)
    with _writing(tmp):
        _write_checkpoint(tmp, step, model=model, tokenizer=tokenizer, optimizer=optimizer, state=state,
                          train_config=train_config, extra=extra, sharded=sharded)
    old = None
    if final.exists():  # a re-run of the same step after a resume: set the old one aside, then swap
        old = root / f"step-{step}.old.tmp"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_checkpoint(tmp: Path, step: int, *, model, tokenizer, optimizer, state: dict[str, Any],
                      train_config: dict[str, Any] | None, extra: dict[str, Any] | None, sharded: bool) -> None:
    """Every file of a checkpoint into ``tmp``, ``state.json`` (with the files' hashes) last."""
    import torch

    from ..models.presets import quiet_progress

    if sharded:  # the weights and optimizer state are the ranks' shards; say what model they make
        model.config.save_pretrained(tmp)
        state = {**state, "optimizer_state": bool(optimizer.state)}
    else:
        with quiet_progress():
            model.save_pretrained(tmp, safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if extra:  # clipper statistics, EMA weights: tensors and numbers only
        torch.save(extra, tmp / "extra.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    write_json_atomic(tmp / "rng_python.json", _host_rng_state())
    if train_config is not None:
        write_json_atomic(tmp / "train_config.json", train_config)
    files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    write_json_atomic(tmp / "state.json", {**state, "step": step, "files": files})


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Read ``state.json`` and check every file's size and hash; `CheckpointError` if anything is off."""
    try:
        state = read_json(path / "state.json")
    except DataError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint (unreadable state.json: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (state.json is not an object)")
    files = state.get("files")
    if not isinstance(files, dict) or not ({"model.safetensors", ADAPTER, f"{SHARDED}/.metadata"} & files.keys()):
        raise CheckpointError(f"{path}: corrupt checkpoint (state.json lists no files)")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: corrupt checkpoint ({name} is missing)")
        if f.stat().st_size != meta.get("bytes") or _sha256(f) != meta.get("sha256"):
            raise CheckpointError(f"{path}: corrupt checkpoint ({name} does not match its recorded size and sha256)")
    return state


def load_training_state(path: Path, optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore optimizer and RNG state from a verified checkpoint; return its ``state.json``
    and its ``extra.pt`` (empty when there is none). A sharded checkpoint's optimizer state is
    `read_shards`'s."""
    import torch

    state = verify_checkpoint(path)
    try:
        if not (path / SHARDED).is_dir():
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
        rng = torch.load(path / "rng.pt", weights_only=True)
        extra = torch.load(path / "extra.pt", weights_only=True) if (path / "extra.pt").is_file() else {}
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    torch.set_rng_state(rng["torch"])
    if (path / "rng_python.json").is_file():
        _restore_host_rng_state(read_json(path / "rng_python.json", error=CheckpointError))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state, extra
