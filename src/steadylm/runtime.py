"""The process's surroundings - CPU threads, launcher variables, devices - each checked in one place.

Training, evaluation and the CLI all read these; a bad value (``--threads 100000``, ``RANK=abc``,
``--device meta``) is a `ConfigError` with one line here, rather than a traceback wherever it
was first used. Only the standard library and `errors` at import time, so `config` can use it.
"""

from __future__ import annotations

import os

from .errors import ConfigError

#: the device types steadylm trains and evaluates on (meta tensors hold no data; MPS/XLA are untested)
DEVICE_TYPES = ("cpu", "cuda")


def cpu_count() -> int:
    return os.cpu_count() or 1


def check_threads(n: object, what: str = "--threads") -> int:
    """``n`` if it is an integer from 1 to this machine's CPU count: more threads than CPUs only
    starve other processes (and a huge count crashed the tokenizer's thread pool)."""
    limit = cpu_count()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        prefix = f"{what} " if what else ""
        raise ConfigError(f"{prefix}must be an integer between 1 and {limit} (this machine's CPU count), got {n!r}")
    return n


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def launch_ranks() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as ``accelerate launch`` and ``torchrun`` set them; (0, 1, 0)
    for a plain process. Unset or empty variables take those defaults."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    for name, v in (("RANK", rank), ("LOCAL_RANK", local)):
        if v < 0:
            raise ConfigError(f"environment variable {name}={v} must be zero or more")
    if world < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={world} must be at least 1")
    if rank >= world:
        raise ConfigError(f"environment variable RANK={rank} must be below WORLD_SIZE={world}")
    return rank, world, local


def resolve_device(name: str | None, *, local_rank: int | None = None):
    """The ``torch.device`` for ``--device NAME``; by default CUDA when available (``cuda:LOCAL_RANK``
    when ``local_rank`` is given), else the CPU. Devices that hold no data or that this machine
    lacks are refused here, before anything is loaded."""
    import torch

    if name is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        dev, label = (torch.device("cuda"), "--device cuda") if local_rank is None else \
            (torch.device(f"cuda:{local_rank}"), f"LOCAL_RANK={local_rank}")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"--device {name!r}: not a device (cpu, cuda, cuda:N)") from None
        label = f"--device {name}"
        if dev.type not in DEVICE_TYPES:
            raise ConfigError(f"--device {name}: not supported (steadylm runs on cpu, cuda or cuda:N)")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None:
        n = torch.cuda.device_count()
        if dev.index >= n:
            raise ConfigError(f"{label}: this machine has {n} CUDA device{'s' if n != 1 else ''} (cuda:0 to cuda:{n - 1})")
    return dev


__all__ = ["DEVICE_TYPES", "check_threads", "cpu_count", "launch_ranks", "resolve_device"]
