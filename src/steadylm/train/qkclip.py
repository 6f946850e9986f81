"""QK-Clip: after an optimizer step, shrink the query and key weights of every attention head
whose largest pre-softmax logit passed a threshold.

Kimi Team, "Kimi K2: Open Agentic Intelligence" (2025), section 2.1 (MuonClip = Muon + QK-Clip);
Su, "QK-Clip" (spaces.ac.cn/archives/11126, 2025). For a head h whose max logit over the step's
batch is ``S_max^h > tau``, with ``eta_h = tau / S_max^h``, the head's query rows and key rows of
the projection weights are each multiplied by ``sqrt(eta_h)``, so that ``q . k`` - and the logit on
the same input - shrink by exactly ``eta_h``; heads at or under ``tau`` are left alone. Nothing
else changes: not the other heads, not the optimizer state. It is optimizer-agnostic (the paper
pairs it with Muon; it works the same after AdamW or SPAM).

Where we differ from the paper, and why:

* Grouped-query attention: K2 uses MLA, where every head has its own key. Here a key head is
  shared by a group of query heads, so it is scaled by ``sqrt(min eta)`` over its group while each
  query head keeps its own ``sqrt(eta_h)`` - the ``"min"`` reduction of the public per-head
  reference for GQA (casinca/LLM-quest, ``qk_clip.py``, ``QKClip``). It never scales a weight up,
  and every clipped head ends at or under ``tau``; the price is that an unclipped sibling in the
  group loses up to ``sqrt(min eta)`` of its logit too. With plain multi-head attention it is the
  paper's rule exactly.
* Rotary embeddings: RoPE rotates each head's q and k by position, a linear map per head, so
  scaling the projection rows commutes with it (``rope(c q) = c rope(q)``): the logit still shrinks
  by ``eta_h``. Projection biases (Qwen2) are scaled with their rows, so ``q`` itself scales.
* QK-norm (``q_norm``/``k_norm``, Qwen3 and OLMo2): the normalisation makes q and k invariant to the
  scale of their projection weights, so QK-Clip has nothing to act on; such models are not clipped
  (`QKClip.moot` is true) and its probe is not even installed.
* S_max is not a free by-product of fused attention here (Flash/SDPA kernels never materialise the
  logits; MagiAttention returns them from its kernel). `monitor.AttentionProbe` recomputes them in a
  pre-hook on the step's own forward pass, per head - no extra forward pass, but on every step the
  ``q k^T`` of every layer is computed a second time (``(B, H, T, T)`` per layer): on CPU that is
  the cost of QK-Clip, roughly one more attention per layer per micro-batch.

The maxima of one step are collected in `on_gradients` (after every micro-batch's forward pass)
and applied in `after_update`, so a step the guard skips is not clipped and does not leak its
maxima into the next one. The factors are applied unconditionally on the device (``eta = 1`` for
heads under ``tau``, an exact no-op): no host read, so the Stabilizer's one sync per step stays one.
Under DDP the maxima are all-reduced (MAX) first, so every rank scales the same heads by the same
factors and the replicas stay identical. QK-Clip keeps no state of its own: a checkpoint needs
nothing from it.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .monitor import AttentionProbe
from .stabilizer import unwrap_model


def _scale_heads_(linear: torch.nn.Linear, factors: torch.Tensor, head_dim: int) -> None:
    """Multiply the output rows of each head of ``linear`` (and its bias) by ``factors[head]``."""
    n = factors.numel()
    linear.weight.view(n, head_dim, -1).mul_(factors.view(n, 1, 1).to(linear.weight.dtype))  # (heads, D, hidden)
    if linear.bias is not None:
        linear.bias.view(n, head_dim).mul_(factors.view(n, 1).to(linear.bias.dtype))


@torch.no_grad()
def clip_heads_(attn: torch.nn.Module, s_max: torch.Tensor, tau: float) -> torch.Tensor:
    """Scale ``attn``'s query and key rows so that each query head's max logit ``s_max[h]``
    (``(H,)``) comes down to ``tau``; return the per-query-head factors ``eta`` (1 where unclipped).

    Query head h gets ``sqrt(eta_h)``; a key head shared by a group of query heads (GQA) gets
    ``sqrt(min eta)`` over its group (see the module docstring)."""
    D = attn.head_dim
    s = s_max.detach().float()
    eta = torch.where(s > tau, tau / s, torch.ones_like(s))  # (H,)
    n_kv = attn.k_proj.weight.shape[0] // D
    eta_kv = eta.view(n_kv, -1).amin(dim=1)  # (Hkv,): query heads h*g..h*g+g-1 share key head h (repeat_kv)
    _scale_heads_(attn.q_proj, eta.sqrt(), D)
    _scale_heads_(attn.k_proj, eta_kv.sqrt(), D)
    return eta


class QKClip:
    """The Stabilizer hook that applies QK-Clip after every optimizer step taken.

    ::

        qk = QKClip(model, tau=100.0)
        stab = Stabilizer(model, optimizer, hooks=[qk])

    ``model`` the module to clip (build it after any FSDP wrapping, before the first step);
    ``tau`` the logit threshold (K2 uses 100 at scale; a small model starts far below it).
    After each step, `max_logit` (the step's largest pre-clip logit) and `clipped_heads` (query heads
    scaled, summed over layers) are 0-dim device tensors, for the caller to read when it logs.
    """

    def __init__(self, model: torch.nn.Module, tau: float):
        if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
            raise ConfigError(f"--qk-clip must be a positive logit threshold, got {tau!r}")
        self.tau = float(tau)
        self.max_logit: torch.Tensor | None = None
        """the step's largest pre-softmax logit before clipping (0-dim, on the device)"""
        self.clipped_heads: torch.Tensor | None = None
        """query heads scaled in the last step, over all layers (0-dim, on the device)"""
        self._seen: dict = {}
        self.probe = AttentionProbe(unwrap_model(model), per_head=True)
        if not self.probe.supported:
            self.probe.close()
            raise ConfigError(f"--qk-clip: {type(unwrap_model(model)).__name__} has no attention module steadylm can "
                              "measure (Llama-, Qwen-, OLMo- and Gemma-style attention in transformers)")
        self.moot = any(hasattr(m, "q_norm") for m in self.probe.modules)
        """QK-norm makes the logits independent of the q/k weight scale: nothing to clip"""
        if self.moot:
            self.probe.close()
            return
        for m in self.probe.modules:
            for proj in (m.q_proj, m.k_proj):
                if not isinstance(proj, torch.nn.Linear):
                    raise ConfigError(f"--qk-clip needs plain Linear query/key projections, {type(m).__name__} has "
                                      f"{type(proj).__name__} (LoRA adapters are not clipped)")
                if hasattr(proj.weight, "full_tensor"):
                    raise ConfigError("--qk-clip under FSDP is not supported (the heads' rows are sharded); "
                                      "use one process or DDP")
        self.probe.armed = True

    def on_gradients(self, stab, params) -> None:
        """Collect this step's per-head maxima (every micro-batch's forward pass has run)."""
        if not self.moot:
            self._seen = self.probe.take_heads()
            self.probe.take()  # the scalar maximum is ours to reset too; `max_logit` is computed below

    @torch.no_grad()
    def after_update(self, stab, params) -> None:
        """Scale the heads whose max logit this step exceeded ``tau``."""
        seen, self._seen = self._seen, {}
        if self.moot or not seen:
            return
        modules = [m for m in self.probe.modules if m in seen]
        maxima = torch.cat([seen[m].float() for m in modules])  # (sum of H over layers,)
        _all_reduce_max_(maxima)
        self.max_logit = maxima.amax()
        clipped = torch.zeros((), dtype=torch.long, device=maxima.device)
        for m, s in zip(modules, maxima.split([seen[m].numel() for m in modules])):
            clipped += (clip_heads_(m, s, self.tau) < 1).sum()
        self.clipped_heads = clipped

    def close(self) -> None:
        """Remove the probe's hooks."""
        self.probe.close()


def _all_reduce_max_(t: torch.Tensor) -> None:
    """Under DDP every rank must scale the same heads by the same factors: take the max over ranks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
