"""Weight-space ensembles: average the weights of several models into one model.

* ``uniform_soup`` - the uniform model soup of Wortsman et al. 2022 ("Model soups: averaging
  weights of multiple fine-tuned models improves accuracy without increasing inference time"):
  every floating-point tensor of the members' safetensors weights is averaged elementwise (in
  float64, then cast back to the tensor's dtype, so a soup of identical folders is that folder's
  weights exactly); integer tensors (buffers) must be equal and are copied. Config, tokenizer and
  generation config are copied from the first member. The paper's *greedy* soup (add a member only
  if held-out accuracy improves) needs an evaluation in the loop and is not done here.
  Members must hold the same tensors with the same shapes - fine-tunes of one base model, or
  checkpoints of one run; anything else is refused naming the first tensor that differs.
* ``latest_k`` - LAWA, latest weight averaging (Kaddour 2022, "Stop Wasting My Time! Saving Days
  of ImageNet and BERT Training with Latest Weight Averaging"; Sanyal et al. 2023, "Early Weight
  Averaging meets High Learning Rates for LLM Pre-training"): the newest K checkpoints of one run,
  to be averaged uniformly. The papers average checkpoints taken every fixed number of steps
  during training; here they are whatever ``checkpoints/step-N/`` a steadylm run kept, so train
  with ``--keep-checkpoints`` at least K.
* EMA (Polyak averaging) is kept during training by ``steadylm train --ema DECAY`` and written as
  ``RUN/model-ema/``, an ordinary model folder: use it directly, or give it to ``soup`` as a member.

Reads and writes go through ``safetensors.torch`` only (nothing is unpickled). The result is
written to a temporary folder and renamed, so it is a complete model folder or nothing; it loads
with ``AutoModelForCausalLM.from_pretrained``. A ``soup.json`` beside the weights lists the members.

A member may also be a ``.gguf`` file, as every ``--model`` may: it is loaded (dequantized to
float32) through `models.load_model`, the loader every other command uses, and contributes the
tensors that ``save_pretrained`` would write for it (a tied output layer once, as the input
embedding), so a GGUF base and its fine-tuned folders average name for name. Its whole state dict
is held in memory. When the first member is a GGUF file, the soup's config, generation config and
tokenizer (with its chat template) are written from it.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import CheckpointError, ConfigError, ModelError
from ..fsutil import fsync_dir, write_json_atomic

WEIGHTS = "model.safetensors"
# training state in a checkpoint folder: not part of a model, never copied into a soup
_TRAINING_STATE = {"optimizer.pt", "rng.pt", "rng_python.json", "extra.pt", "state.json", "train_config.json"}


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json)")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no safetensors weights (steadylm does not unpickle .bin files)")
    return files


def _is_gguf(member: Path) -> bool:
    return member.suffix.lower() == ".gguf"


class _Tensors:
    """A loaded model's tensors behind the ``get_tensor(name)`` of a safetensors handle."""

    def __init__(self, model: Any, tensors: dict[str, Any]):
        self.model, self.tensors = model, tensors

    def get_tensor(self, name: str) -> Any:
        return self.tensors[name]


def _load_gguf(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(model, tensor name -> tensor)`` of a ``.gguf`` member, loaded as every ``--model`` is;
    a tensor that shares storage with an earlier one (a tied output layer) is left out, as
    ``save_pretrained`` leaves it out of a folder."""
    from ..models.presets import load_model

    model = load_model(path)
    tensors: dict[str, Any] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.numel() and t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        tensors[name] = t
    return model, tensors


def _open_all(folder: Path, stack: Any) -> dict[str, Any]:
    """tensor name -> an open safetensors handle holding it (sharded folders have several files)."""
    from safetensors import safe_open

    if _is_gguf(folder):
        handle = _Tensors(*_load_gguf(folder))
        return {k: handle for k in handle.tensors}
    where: dict[str, Any] = {}
    for f in _weight_files(folder):
        try:
            h = stack.enter_context(safe_open(str(f), framework="pt"))
        except Exception as e:  # a truncated or foreign file
            raise ModelError(f"{f}: unreadable safetensors file ({type(e).__name__})") from None
        for k in h.keys():
            where[k] = h
    return where


def uniform_soup(folders: Sequence[str | os.PathLike], out: str | os.PathLike, *, method: str = "uniform") -> Path:
    """Average the weights of the model folders (or ``.gguf`` files) ``folders`` into the model
    folder ``out``; return it."""
    import contextlib

    import torch
    from safetensors.torch import save_file

    folders = [Path(f) for f in folders]
    if not folders:
        raise ConfigError("soup needs at least one model folder")
    out = Path(out)
    for f in folders:
        if f.resolve() == out.resolve():
            raise ConfigError(f"-o {out}: is one of the members; write the soup to a new folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "soup.json").is_file())):
        raise ConfigError(f"-o {out}: exists and is not an earlier soup; choose a new folder or remove it")
    with contextlib.ExitStack() as stack:
        handles = [_open_all(f, stack) for f in folders]
        names = sorted(handles[0])
        lead_model = handles[0][names[0]].model if _is_gguf(folders[0]) and names else None
        for f, h in zip(folders[1:], handles[1:]):
            if set(h) != set(names):
                missing = sorted(set(names) - set(h))
                extra = sorted(set(h) - set(names))
                what = f"{missing[0]!r} is missing" if missing else f"it has an extra tensor {extra[0]!r}"
                raise ModelError(f"cannot average {f} with {folders[0]}: {what} "
                                 f"({len(missing)} missing, {len(extra)} extra tensors)")
        averaged: dict[str, Any] = {}
        for name in names:  # one tensor at a time across members: memory ~ the output plus K tensors
            ts = [h[name].get_tensor(name) for h in handles]
            first = ts[0]
            for f, t in zip(folders[1:], ts[1:]):
                if t.shape != first.shape:
                    raise ModelError(f"cannot average {f} with {folders[0]}: tensor {name!r} has shape "
                                     f"{tuple(t.shape)} vs {tuple(first.shape)}")
                if t.dtype != first.dtype:
                    raise ModelError(f"cannot average {f} with {folders[0]}: tensor {name!r} is {t.dtype} vs {first.dtype}")
            if first.is_floating_point():
                acc = torch.zeros(first.shape, dtype=torch.float64)
                for t in ts:
                    acc += t.to(torch.float64)
                averaged[name] = (acc / len(ts)).to(first.dtype).contiguous()
            else:
                for f, t in zip(folders[1:], ts[1:]):
                    if not torch.equal(t, first):
                        raise ModelError(f"cannot average {f} with {folders[0]}: integer tensor {name!r} differs")
                averaged[name] = first.contiguous()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        # "format": "pt" is what transformers looks for before it loads a safetensors file
        save_file(averaged, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if _is_gguf(folders[0]):
            _write_gguf_files(folders[0], lead_model, tmp)
        for p in [] if _is_gguf(folders[0]) else sorted(folders[0].iterdir()):
            if (p.is_file() and p.suffix not in (".safetensors", ".bin", ".pt", ".pth")
                    and p.name not in _TRAINING_STATE and p.name != "model.safetensors.index.json"
                    and p.name != "soup.json"):
                shutil.copy2(p, tmp / p.name)
        write_json_atomic(tmp / "soup.json", {"method": method, "members": [str(f) for f in folders],
                                              "tensors": len(names)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def _write_gguf_files(gguf: Path, model: Any, folder: Path) -> None:
    """The config, generation config and tokenizer of a ``.gguf`` member (``model``, loaded from
    it), as a model folder holds them."""
    from ..data.tokenizer import load_tokenizer

    config = copy.deepcopy(model.config)
    config.architectures = config.architectures or [type(model).__name__]  # as save_pretrained records it
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    load_tokenizer(str(gguf)).save_pretrained(folder)


def latest_k(run_dir: str | os.PathLike, k: int) -> list[Path]:
    """The newest ``k`` complete checkpoint folders of a steadylm run, oldest first (for LAWA)."""
    from ..train.checkpoint import list_checkpoints

    run = Path(run_dir)
    if k < 1:
        raise ConfigError(f"--last must be >= 1, got {k}")
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder")
    found = list_checkpoints(run)
    if not found:
        raise CheckpointError(f"{run}: no checkpoints (expected {run / 'checkpoints'}/step-N/)")
    if k > len(found):
        steps = ", ".join(f"step-{s}" for s, _ in found)
        raise ConfigError(f"--last {k}: {run} has only {len(found)} checkpoints ({steps}); "
                          f"train with --keep-checkpoints >= {k} to keep more")
    return [p for _, p in found[-k:]]


def soup(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, last: int | None = None) -> dict[str, Any]:
    """The ``steadylm soup`` command: ``RUN_DIR`` with ``last=K`` averages its newest K checkpoints
    (LAWA); several model folders are averaged uniformly. Returns ``{"method", "members", "out"}``."""
    sources = [Path(s) for s in sources]
    if not sources:
        raise ConfigError("soup needs a RUN_DIR with --last K, or model folders")
    if last is not None:
        if len(sources) != 1:
            raise ConfigError(f"--last takes one RUN_DIR, got {len(sources)} folders")
        members, method = latest_k(sources[0], last), "lawa"
    else:
        for s in sources:
            if (s / "checkpoints").is_dir() and not any(s.glob("*.safetensors")):
                raise ConfigError(f"{s}: is a run folder; pass --last K to average its newest K checkpoints, "
                                  f"or give model folders ({s / 'model'}, {s / 'model-ema'})")
        members, method = sources, "uniform"
    path = uniform_soup(members, out, method=method)
    return {"method": method, "members": [str(m) for m in members], "out": str(path)}
