"""Optimizers that target instability, taken from well-kept libraries, behind one `build_optimizer`.

* ``adamw``: ``torch.optim.AdamW(fused=True)``, what ``steadylm train`` has always used.
* ``spam``: SPAM, Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM
  Training" (ICLR 2025; reference code github.com/TianjinYellow/SPAM-Optimizer). Adam whose first
  and second moments are reset to zero every ``reset_every`` steps (ΔT, then a cosine warm-up of
  the step size), and whose gradient entries with ``g^2 > threshold * v`` are clipped to
  ``sign(g) sqrt(threshold * v)`` (spike-aware clipping). The implementation is the
  ``pytorch-optimizer`` package's ``SPAM`` (defaults: ΔT 500, threshold 5000, warm-up 50 steps),
  at density 1 (the paper's sparse-momentum variant is off: every entry is updated).
* ``stable-spam``: Stable-SPAM (Huang et al. 2025, "Stable-SPAM: How to Train in 4-Bit More
  Stably than 16-Bit Adam"): adaptive spike clipping from a running max of ``|g|``, adaptive
  gradient-norm scaling and the momentum reset; ``pytorch-optimizer``'s ``StableSPAM`` (ΔT 1000).
* ``muon``: ``torch.optim.Muon`` (Jordan et al. 2024; Newton-Schulz orthogonalised momentum) for
  the hidden 2-D weight matrices and AdamW for the embeddings, the LM head, norms and biases, as
  its authors use it (github.com/KellerJordan/Muon: "embeddings, classifier heads and scalar or
  vector parameters should be optimized using AdamW"). The learning rate is shared: Muon runs with
  ``adjust_lr_fn="match_rms_adamw"`` (Liu et al. 2025, "Muon is Scalable for LLM Training": the
  update's RMS matched to AdamW's, so AdamW's learning rate and weight decay carry over) - one
  ``--lr`` and one schedule drive both halves. Muon + `qkclip.QKClip` is Kimi K2's MuonClip.

The two halves of ``muon`` are one `CombinedOptimizer`: one ``param_groups`` (the halves' own group
dicts, so setting ``lr`` on them reaches the inner optimizers), ``step``, ``zero_grad``,
``state_dict`` and ``load_state_dict``, so the `Stabilizer`, an LR scheduler and checkpoints see
a single optimizer. Every optimizer's state round-trips through ``state_dict`` with
``torch.load(weights_only=True)``, so a resumed CPU run continues bit for bit
(``tests/test_optimizers.py``). Not supported: FSDP with ``muon`` (Muon orthogonalises whole
matrices; a DTensor shard is not one).
"""

from __future__ import annotations

from collections import ChainMap

import torch

from ..config import OPTIMIZER_NAMES
from ..errors import ConfigError

OPTIMIZERS = OPTIMIZER_NAMES  # the config's tuple: config imports nothing from train
"""the names `build_optimizer` accepts (``--optimizer``)"""


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped together and saved as one.

    ``parts`` maps a label to an optimizer; ``param_groups`` is the parts' groups in that order
    (the same dicts), `sources` says which part and input group each came from, and ``state`` is a
    read-only view of the parts' states."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer], sources: list[tuple[str, int]] | None = None):
        self.parts = dict(parts)
        self.sources = sources
        """``(part label, index of the group given to build_optimizer)`` per param group, or None"""
        super().__init__([g for opt in self.parts.values() for g in opt.param_groups], {})
        self._link()

    def _link(self) -> None:
        # The parts' own group dicts and state maps, not copies: an lr set here must reach them.
        # ``Optimizer.load_state_dict`` replaces both in each part, so this runs again after it.
        self.param_groups = [g for opt in self.parts.values() for g in opt.param_groups]
        self.state = ChainMap(*(opt.state for opt in self.parts.values()))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.parts.values():
            opt.step()
        return loss

    def state_dict(self) -> dict:
        return {label: opt.state_dict() for label, opt in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.parts):
            raise ConfigError(f"optimizer state holds {sorted(state_dict)}, this optimizer is {sorted(self.parts)}: "
                              "resume with the --optimizer the run was started with")
        for label, opt in self.parts.items():
            opt.load_state_dict(state_dict[label])
        self._link()


def hidden_matrices(model: torch.nn.Module) -> set[int]:
    """``id`` of every 2-D parameter of ``model`` except the input embedding and the output head:
    the weights Muon is meant for."""
    outer = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            outer.add(id(module.weight))
    return {id(p) for p in model.parameters() if p.ndim == 2 and id(p) not in outer}


def _split(groups: list[dict], take: set[int]) -> tuple[list[dict], list[dict], list[int], list[int]]:
    """Each group into its parameters in ``take`` and the rest, keeping the group's settings;
    empty halves are dropped (with the index of the group each kept half came from)."""
    inside, outside, src_in, src_out = [], [], [], []
    for i, g in enumerate(groups):
        a = [p for p in g["params"] if id(p) in take]
        b = [p for p in g["params"] if id(p) not in take]
        if a:
            inside.append({**g, "params": a})
            src_in.append(i)
        if b:
            outside.append({**g, "params": b})
            src_out.append(i)
    return inside, outside, src_in, src_out


def build_optimizer(name: str, param_groups: list[dict], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, weight_decay: float = 0.0, model: torch.nn.Module | None = None,
                    reset_every: int | None = None):
    """The optimizer ``name`` (one of `OPTIMIZERS`) over ``param_groups``.

    ``param_groups`` as ``regularize.param_groups`` makes them (a ``names`` key is ignored; a
    group's own ``weight_decay`` wins over ``weight_decay``); ``betas`` and ``eps`` are Adam's (the
    AdamW half of ``muon`` too; Muon keeps its own momentum 0.95); ``model`` is needed by ``muon``
    to tell the embeddings and the head from hidden matrices; ``reset_every`` is SPAM's and
    Stable-SPAM's momentum-reset interval ΔT (None: the library's default)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown --optimizer {name!r}; choose {', '.join(OPTIMIZERS)}")
    if reset_every is not None and (isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 1):
        raise ConfigError(f"the momentum-reset interval must be a positive integer, got {reset_every!r}")
    if reset_every is not None and name not in ("spam", "stable-spam"):
        raise ConfigError(f"a momentum-reset interval is SPAM's and Stable-SPAM's; --optimizer {name} has none")
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups]
    adam = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, **adam, fused=True)
    if name in ("spam", "stable-spam"):
        from pytorch_optimizer import SPAM, StableSPAM

        extra = {} if reset_every is None else {"update_proj_gap": reset_every}
        return (SPAM if name == "spam" else StableSPAM)(groups, **adam, **extra)
    if model is None:
        raise ConfigError("--optimizer muon needs the model, to keep its embeddings and head on AdamW")
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"--optimizer muon needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}")
    muon_groups, adamw_groups, src_muon, src_adamw = _split(groups, hidden_matrices(model))
    if not muon_groups:
        raise ConfigError("--optimizer muon: the model has no hidden 2-D weight matrices to train with Muon")
    parts = {"muon": torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")}
    if adamw_groups:
        parts["adamw"] = torch.optim.AdamW(adamw_groups, **adam, fused=True)
    return CombinedOptimizer(parts, [("muon", i) for i in src_muon] + [("adamw", i) for i in src_adamw])


def group_labels(optimizer, names: list[str]) -> list[str]:
    """A label per ``optimizer.param_groups`` entry, from the ``names`` of the groups given to
    `build_optimizer` (``decay``, ``no_decay``): ``muon`` splits ``decay`` into ``muon/decay`` and
    ``decay``; every other optimizer keeps the groups as they were."""
    sources = getattr(optimizer, "sources", None)
    if sources is None:
        return list(names)
    return [f"{label}/{names[i]}" if label == "muon" else names[i] for label, i in sources]
