"""Gradient clipping with one interface: ``clipper.clip_(parameters) -> ClipStats``.

Fixed clippers:

* `NormClip` - scale all gradients together when their global L2 norm exceeds ``max_norm``
  (Pascanu et al. 2013); exactly ``torch.nn.utils.clip_grad_norm_``, which it calls. The seed's
  worked example: ``[1, 2, 3]`` clipped to norm 2 is ``[1, 2, 3] * 2/sqrt(14)`` =
  ``[0.534, 1.069, 1.604]``.
* `ValueClip` - clamp every gradient element to ``[-clip_value, clip_value]``
  (``torch.nn.utils.clip_grad_value_``); the pre-clip global norm is still measured for the log.
* `NoClip` - measures the norm and leaves the gradients alone.

Adaptive clippers:

* `AutoClip` - Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source
  Separation Networks" (MLSP), following the paper's code ``autoclip.py`` in pseeth/autoclip:
  append the current global norm to the history, take ``np.percentile(history, p)`` (linear
  interpolation) and ``clip_grad_norm_`` to it. Here the history may be bounded (a ring buffer of
  the last ``history`` norms; the paper's code keeps all of them: ``history=None``). The later
  ``autoclip`` package (``QuantileClip``) differs: it takes the quantile of the *earlier* norms only
  and leaves the first step unclipped; we follow the paper's code.
* `ZClip` - Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training"; a
  re-implementation of the reference ``zclip`` 1.0.0 (github.com/bluorion-com/ZClip) with the same
  argument names, defaults and numbers (the tests run both side by side). Notes on the reference,
  all reproduced here: the default ``max_grad_norm`` is 1.0, not ``None``; during warm-up only
  ``clip_grad_norm_(max_grad_norm)`` is applied, and the step that fills the warm-up buffer
  initialises the mean and the *population* variance of the buffered (unclipped) norms and is not
  itself clipped adaptively; the EMA update is ``mu <- a*mu + (1-a)*x`` then
  ``var <- a*var + (1-a)*(x - mu_new)^2`` with the *new* mean; ``x`` is the adaptive clip value on a
  spike (before the ``max_grad_norm`` cap, even when ``clip_factor > 1`` makes it exceed the norm),
  else the raw norm; ``skip_update_on_spike`` skips the whole EMA update on a spike; ``clip_factor``
  multiplies the whole adaptive threshold ``mu + z_thresh*sigma/eta`` (the reference's docstring
  says only the ``z_thresh*sigma`` term); in ``mode='percentile'`` the threshold is
  ``mu + z_thresh*sigma`` (no percentile is taken) and ``clip_option``/``clip_factor`` are ignored;
  ``warmup_steps=0`` behaves as 1.
  Where we differ: a non-finite norm never enters the statistics. The reference appends it to the
  warm-up buffer or folds a NaN into the EMA, after which the mean is NaN and ZClip never clips
  again; here a NaN/inf norm during warm-up does not count as a warm-up sample and a NaN norm
  afterwards leaves the EMA as it was. What such a step does to the gradients is unchanged
  (the loop's NaN guard is meant to skip it). The reference syncs every step (``.item()`` and Python
  branches); this one keeps its state on the gradients' device and selects with ``torch.where``.
* `AGC` - Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
  Normalization", following timm's ``utils/agc.py`` (``adaptive_clip_grad``) number for number:
  unit-wise norms (over all dims but the first; the whole tensor for 0-/1-D), and a unit's gradient
  ``G_i`` is scaled by ``max_norm_i / max(||G_i||, 1e-6)`` unless ``||G_i|| < max_norm_i`` with
  ``max_norm_i = clipping * max(||W_i||, eps)``. We multiply the gradient in place by a per-unit
  factor (1 where unclipped) instead of building a clipped copy; ``g * 1.0 == g`` so the numbers are
  the same. Added: ``exclude`` to leave e.g. the output layer unclipped, as the paper does.

Host-device syncs: none of the clippers forces one in ``clip_`` (no ``.item()``, no Python branch on
a tensor value; the stats hold tensors on the gradients' device, like ``clip_grad_norm_``'s result).
Reading ``float(stats.norm)`` for the log is the caller's (single) sync. ``state_dict()`` copies the
state to the CPU, which syncs, but only when a checkpoint is written.

Every clipper has ``state_dict()`` (tensors, ints and floats only, loadable with
``torch.load(weights_only=True)``) and ``load_state_dict(d)``, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch


@dataclass
class ClipStats:
    """What a clipper saw and did in one step."""

    norm: torch.Tensor
    """pre-clip global L2 norm of all gradients (0-dim tensor on the gradients' device)"""
    threshold: float | torch.Tensor
    """the bound applied: a float for `NormClip`/`ValueClip`/`NoClip` (an element bound for `ValueClip`)
    and the ratio ``clipping`` for `AGC`; a 0-dim float64 tensor for `AutoClip`/`ZClip` (the norm the
    gradients were limited to this step)"""
    clipped: torch.Tensor
    """whether any gradient was changed (0-dim bool tensor)"""
    post_norm: torch.Tensor | None = None
    """post-clip global L2 norm (0-dim tensor), where it comes for free; ``None`` for `ValueClip`"""


def _grads(parameters) -> list[torch.Tensor]:
    """The parameters that have a gradient; accepts tensors or ``(name, tensor)`` pairs."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    out = []
    for p in parameters:
        if isinstance(p, tuple):
            p = p[1]
        if p.grad is not None:
            out.append(p)
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2 shards) as the full tensor - one all-reduce; any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def total_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients of ``params`` (the norm ``clip_grad_norm_`` computes)."""
    if not params:
        return torch.zeros(())
    return _full(torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=None))


def _false(device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.bool, device=device)


def _torch_clip_coef(norm: torch.Tensor, max_norm) -> torch.Tensor:
    # Exactly clip_grads_with_norm_'s factor (``max_norm / (norm + 1e-6)`` is evaluated by torch as
    # ``reciprocal * max_norm``), so clipping to a tensor threshold gives its numbers bit for bit.
    return torch.clamp((norm + 1e-6).reciprocal() * max_norm, max=1.0)


def _scale_(params: list[torch.Tensor], coef: torch.Tensor) -> None:
    """Multiply every gradient by the 0-dim ``coef`` in place (``coef == 1`` leaves them bit-equal)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for (device, _), grads in groups.items():
        torch._foreach_mul_(grads, coef.to(device))


class _Stateless:
    def state_dict(self) -> dict:
        """Nothing to save: this clipper keeps no state between steps."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (a state saved by another clipper is ignored)."""


class NoClip(_Stateless):
    """Measure the gradient norm, change nothing."""

    threshold = math.inf

    def clip_(self, parameters) -> ClipStats:
        norm = total_norm(_grads(parameters))
        return ClipStats(norm=norm, threshold=math.inf, clipped=_false(norm.device), post_norm=norm)


class NormClip(_Stateless):
    """Clip by global L2 norm to ``max_norm`` (same numbers as ``torch.nn.utils.clip_grad_norm_``)."""

    def __init__(self, max_norm: float = 1.0):
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        self.max_norm = float(max_norm)

    def clip_(self, parameters) -> ClipStats:
        params = _grads(parameters)
        norm = _full(torch.nn.utils.clip_grad_norm_(params, self.max_norm)) if params else torch.zeros(())
        post = norm * _torch_clip_coef(norm, self.max_norm)
        return ClipStats(norm=norm, threshold=self.max_norm, clipped=norm > self.max_norm, post_norm=post)


class ValueClip(_Stateless):
    """Clamp each gradient element to ``[-clip_value, clip_value]``."""

    def __init__(self, clip_value: float = 1.0):
        if not (clip_value > 0 and math.isfinite(clip_value)):
            raise ValueError(f"clip_value must be positive, got {clip_value}")
        self.clip_value = float(clip_value)

    def clip_(self, parameters) -> ClipStats:
        params = _grads(parameters)
        norm = total_norm(params)
        if not params:
            return ClipStats(norm=norm, threshold=self.clip_value, clipped=_false(norm.device))
        grads = [p.grad for p in params]
        max_abs = _full(torch.stack([g.detach().abs().amax() for g in grads]).amax())
        torch.nn.utils.clip_grad_value_(params, self.clip_value)
        return ClipStats(norm=norm, threshold=self.clip_value, clipped=max_abs > self.clip_value)


def _check_keys(state: dict, keys: set[str], who: str) -> None:
    missing = keys - set(state)
    if missing:
        raise ValueError(f"not a {who} state: missing {', '.join(sorted(missing))}")


class AutoClip:
    """Clip the global norm to the ``percentile``-th percentile of the norms seen so far.

    ``percentile`` in (0, 100] (the paper's default 10); ``history`` keeps the last N norms
    (default 1000; ``None`` keeps all, as the paper's code). The current norm is part of the
    history before the percentile is taken, as in the paper's code, so the first step is not
    clipped. Non-finite norms are not recorded (they would make every later threshold NaN).

    No host-device sync: the history is a float64 ring buffer on the gradients' device and the
    percentile is ``torch.nanquantile`` there (empty slots hold NaN); the write position is a host
    counter of calls. Cost per step: one sort of at most ``history`` numbers (all of them when
    unbounded).
    """

    def __init__(self, percentile: float = 10.0, history: int | None = 1000):
        if not (0 < percentile <= 100):
            raise ValueError(f"AutoClip percentile must be in (0, 100], got {percentile}")
        if history is not None and (isinstance(history, bool) or int(history) != history or history < 1):
            raise ValueError(f"AutoClip history must be a positive integer or None, got {history}")
        self.percentile = float(percentile)
        self.history = None if history is None else int(history)
        self._norms: torch.Tensor | None = None  # (capacity,) float64, NaN where nothing is recorded
        self._count = 0  # norms recorded so far (calls to clip_)

    def _buffer(self, device) -> torch.Tensor:
        if self._norms is None:
            cap = self.history if self.history is not None else 1024
            self._norms = torch.full((cap,), math.nan, dtype=torch.float64, device=device)
        elif self._norms.device != device:
            self._norms = self._norms.to(device)
        if self.history is None and self._count >= self._norms.numel():
            # Unbounded: double the capacity, decided on the host from the call count.
            grown = torch.full((2 * self._norms.numel(),), math.nan, dtype=torch.float64, device=device)
            grown[: self._norms.numel()] = self._norms
            self._norms = grown
        return self._norms

    @torch.no_grad()
    def clip_(self, parameters) -> ClipStats:
        params = _grads(parameters)
        norm = total_norm(params)  # (,) in the gradients' dtype
        buf = self._buffer(norm.device)
        g = norm.double()
        slot = self._count % buf.numel() if self.history is not None else self._count
        buf[slot] = torch.where(torch.isfinite(g), g, math.nan)
        self._count += 1
        # nanquantile's default linear interpolation is np.percentile's, to the last bit or one ulp.
        threshold = torch.nanquantile(buf[: min(self._count, buf.numel())], self.percentile / 100.0)
        # The reference passes the percentile to clip_grad_norm_, which rounds it to the norm's dtype.
        coef = _torch_clip_coef(norm, threshold.to(norm.dtype))
        _scale_(params, coef)
        return ClipStats(norm=norm, threshold=threshold, clipped=g > threshold, post_norm=norm * coef)

    def state_dict(self) -> dict:
        """``{"count": int, "norms": float64 CPU tensor}`` (the recorded slots of the ring buffer)."""
        n = 0 if self._norms is None else min(self._count, self._norms.numel())
        norms = torch.zeros(0, dtype=torch.float64) if self._norms is None else self._norms[:n].cpu().clone()
        return {"count": self._count, "norms": norms}

    def load_state_dict(self, state: dict) -> None:
        _check_keys(state, {"count", "norms"}, "AutoClip")
        count, norms = int(state["count"]), state["norms"]
        expected = count if self.history is None else min(count, self.history)
        if norms.ndim != 1 or norms.numel() != expected:
            raise ValueError(
                f"AutoClip state holds {norms.numel()} norms after {count} steps; "
                f"this AutoClip (history={self.history}) expects {expected}"
            )
        cap = self.history if self.history is not None else max(1024, 1 << max(count - 1, 0).bit_length())
        buf = torch.full((cap,), math.nan, dtype=torch.float64, device=norms.device)
        buf[:expected] = norms.to(torch.float64)
        self._norms, self._count = buf, count


class ZClip:
    """Z-score clipping of the global gradient norm against its EMA mean and variance.

    Arguments, meanings and defaults are those of the reference ``zclip.ZClip`` 1.0.0 (switch with
    ``zclip.ZClip(...)`` -> ``steadylm.train.ZClip(...)``; call ``clip_(model.parameters())`` instead
    of ``step(model)``):

    * ``alpha`` (0.97): EMA smoothing of the mean and variance of the norm.
    * ``z_thresh`` (2.5): in ``mode='zscore'`` a norm with ``z = (g - mu)/(sigma + eps) > z_thresh``
      is a spike; in ``mode='percentile'`` the threshold is ``mu + z_thresh*sigma``.
    * ``max_grad_norm`` (1.0; ``None`` = no cap): absolute cap, also the only clipping in warm-up.
    * ``eps`` (1e-6): added to sigma in the z-score.
    * ``warmup_steps`` (25): finite norms collected before mu and the variance are initialised.
    * ``mode``: ``'zscore'`` or ``'percentile'``.
    * ``clip_option`` (zscore mode): ``'adaptive_scaling'`` clips a spike to
      ``(mu + z_thresh^2/z * sigma) * clip_factor`` (reciprocal clipping), ``'mean'`` to ``mu``.
    * ``clip_factor`` (1.0): multiplies the adaptive-scaling threshold.
    * ``skip_update_on_spike`` (False): on a spike, leave mu and the variance as they were; otherwise
      they are updated with the clip value of a spike (the raw norm when there is none).

    ``ClipStats.threshold`` (0-dim float64) is the bound on the post-clip norm this step: in warm-up
    ``max_grad_norm`` (or inf); after it the clip value on a spike, otherwise the largest norm that
    would not have been a spike; both capped at ``max_grad_norm``. ``clipped`` says a clip was triggered.

    The statistics are float64 (Python floats in the reference). No host-device sync: they live on
    the gradients' device, warm-up progress included, and every decision is a ``torch.where``.
    See the module docstring for what the reference does and where this differs (non-finite norms).
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        max_grad_norm: float | None = 1.0,
        eps: float = 1e-6,
        warmup_steps: int = 25,
        mode: str = "zscore",
        clip_option: str | None = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
    ):
        if not (0 <= alpha <= 1):
            raise ValueError(f"ZClip alpha must be in [0, 1], got {alpha}")
        if not (z_thresh > 0 and math.isfinite(z_thresh)):
            raise ValueError(f"ZClip z_thresh must be positive, got {z_thresh}")
        if max_grad_norm is not None and not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
            raise ValueError(f"ZClip max_grad_norm must be positive or None, got {max_grad_norm}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"ZClip eps must be >= 0, got {eps}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"ZClip warmup_steps must be a non-negative integer, got {warmup_steps}")
        if not (clip_factor > 0 and math.isfinite(clip_factor)):
            raise ValueError(f"ZClip clip_factor must be positive, got {clip_factor}")
        self.mode = str(mode).lower()
        if self.mode == "zscore":
            option = str(clip_option).lower()
            if option not in ("mean", "adaptive_scaling"):
                raise ValueError(f"ZClip clip_option must be 'mean' or 'adaptive_scaling', got {clip_option!r}")
            self.clip_option: str | None = option
        elif self.mode == "percentile":
            self.clip_option = None  # ignored in percentile mode, as in the reference
        else:
            raise ValueError(f"ZClip mode must be 'zscore' or 'percentile', got {mode!r}")
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.eps = float(eps)
        self.warmup_steps = int(warmup_steps)
        self.clip_factor = float(clip_factor)
        self.skip_update_on_spike = bool(skip_update_on_spike)
        # The reference initialises once its buffer holds >= warmup_steps norms, after appending:
        # warmup_steps=0 therefore initialises on the first norm, like warmup_steps=1.
        self._w = max(self.warmup_steps, 1)
        self._state = self._fresh_state("cpu")

    def _fresh_state(self, device) -> dict[str, torch.Tensor]:
        f64 = dict(dtype=torch.float64, device=device)
        return {
            "warmup_norms": torch.zeros(self._w, **f64),  # (W,)
            "warmup_count": torch.zeros((), dtype=torch.int64, device=device),
            "initialized": torch.zeros((), dtype=torch.bool, device=device),
            "mean": torch.zeros((), **f64),
            "var": torch.zeros((), **f64),
        }

    @property
    def initialized(self) -> torch.Tensor:
        """Whether warm-up is over (0-dim bool tensor; the reference's ``initialized``)."""
        return self._state["initialized"]

    @property
    def mean(self) -> torch.Tensor:
        """EMA mean of the norm (0-dim float64; 0 until warm-up ends)."""
        return self._state["mean"]

    @property
    def var(self) -> torch.Tensor:
        """EMA variance of the norm (0-dim float64; 0 until warm-up ends)."""
        return self._state["var"]

    @torch.no_grad()
    def clip_(self, parameters) -> ClipStats:
        params = _grads(parameters)
        norm, ref_norm = _zclip_norms(params)
        device = norm.device
        s = self._state
        if s["mean"].device != device:
            s = self._state = {k: v.to(device) for k, v in s.items()}
        buf, count, ready, mean, var = s["warmup_norms"], s["warmup_count"], s["initialized"], s["mean"], s["var"]
        g = ref_norm.double()  # the reference works on its norm's .item(), a Python float
        warm = ~ready

        # Warm-up: record finite norms; the step that fills the buffer initialises mean/variance.
        record = warm & torch.isfinite(g)
        slot = torch.arange(self._w, device=device) == count.clamp(max=self._w - 1)  # (W,)
        buf = torch.where(slot & record, g, buf)
        count = count + record
        init_now = warm & (count >= self._w)
        # Python's sum() adds left to right; so does cumsum on CPU (torch.sum reorders), and the
        # variance is the population one, as the reference's.
        mean0 = buf.cumsum(0)[-1] / self._w
        var0 = ((buf - mean0) ** 2).cumsum(0)[-1] / self._w

        # After warm-up: the reference's _compute_clip_val, same operations in the same order.
        std = var.sqrt()
        if self.mode == "percentile":
            clip_val = mean + self.z_thresh * std
            spike = g > clip_val
            passes_up_to = clip_val
        else:
            z = (g - mean) / (std + self.eps)
            spike = z > self.z_thresh
            if self.clip_option == "adaptive_scaling":
                eta = z / self.z_thresh  # a larger outlier is clipped harder (reciprocal clipping)
                clip_val = (mean + (self.z_thresh * std) / eta) * self.clip_factor
            else:
                clip_val = mean
            passes_up_to = mean + self.z_thresh * (std + self.eps)
        adaptive = torch.where(spike, clip_val, g)
        bound = torch.where(spike, clip_val, passes_up_to)
        if self.max_grad_norm is not None:
            adaptive = adaptive.clamp(max=self.max_grad_norm)
            bound = bound.clamp(max=self.max_grad_norm)
        coef_ema = torch.where(g > adaptive, adaptive / (g + 1e-6), 1.0)  # float64, as the reference

        # Warm-up clips with clip_grad_norm_(max_grad_norm), whose factor is in the norm's dtype.
        cdtype = torch.promote_types(norm.dtype, torch.float32)
        if self.max_grad_norm is None:
            coef_warm = torch.ones((), dtype=cdtype, device=device)
            warm_bound = torch.full((), math.inf, dtype=torch.float64, device=device)
        else:
            coef_warm = _torch_clip_coef(norm, self.max_grad_norm).to(cdtype)
            warm_bound = torch.full((), self.max_grad_norm, dtype=torch.float64, device=device)
        # The reference multiplies by a Python float, which the kernel rounds to float32.
        coef = torch.where(warm, coef_warm, coef_ema.to(cdtype))
        _scale_(params, coef)

        # EMA update with the clip value (before the max_grad_norm cap) or the raw norm.
        x = torch.where(spike, clip_val, g)
        new_mean = self.alpha * mean + (1 - self.alpha) * x
        new_var = self.alpha * var + (1 - self.alpha) * (x - new_mean) ** 2
        update = ~warm & torch.isfinite(x)  # a NaN norm would poison the EMA for good
        if self.skip_update_on_spike:
            update = update & ~spike
        s["mean"] = torch.where(init_now, mean0, torch.where(update, new_mean, mean))
        s["var"] = torch.where(init_now, var0, torch.where(update, new_var, var))
        s["warmup_norms"], s["warmup_count"], s["initialized"] = buf, count, ready | init_now

        threshold = torch.where(warm, warm_bound, bound)
        # "clipped" = the clip was triggered (warm-up's clip_grad_norm_ also scales by ~1 - 1e-6/norm).
        clipped = torch.where(warm, g > warm_bound, g > adaptive)
        return ClipStats(norm=norm, threshold=threshold, clipped=clipped, post_norm=norm * coef)

    def state_dict(self) -> dict:
        """Warm-up buffer and count, ``initialized``, ``mean``, ``var``: CPU tensors."""
        return {k: v.cpu().clone() for k, v in self._state.items()}

    def load_state_dict(self, state: dict) -> None:
        _check_keys(state, set(self._state), "ZClip")
        new = {k: state[k].detach().clone() for k in self._state}
        if not bool(new["initialized"]) and tuple(new["warmup_norms"].shape) != (self._w,):
            raise ValueError(
                f"ZClip state is mid-warm-up with {new['warmup_norms'].numel()} slots; "
                f"this ZClip warms up over {self._w} steps"
            )
        if tuple(new["warmup_norms"].shape) != (self._w,):
            new["warmup_norms"] = torch.zeros(self._w, dtype=torch.float64)  # unused once initialised
        self._state = new


def _zclip_norms(params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(``total_norm(params)``, the reference zclip's norm), from one pass over the gradients.

    zclip takes ``sqrt(sum(stack([g.norm(2)]) ** 2))`` in the first parameter's dtype, torch the
    ``vector_norm`` of the per-tensor norms; the two differ in the last float32 bit about one step in
    three, which is enough to move the EMA. Statistics use the reference's, ``ClipStats.norm`` and the
    warm-up ``clip_grad_norm_`` torch's; both come from the same per-tensor norms (``_foreach_norm``,
    bit-equal to ``g.norm(2)`` on CPU, possibly an ulp apart on CUDA).
    """
    if not params:
        zero = torch.zeros(())
        return zero, zero
    grads = [p.grad for p in params]
    first = params[0]
    if any(g.device != first.grad.device or g.dtype != first.dtype for g in grads):
        # Mixed devices or dtypes: torch groups them, the reference casts; compute both ways.
        ref = torch.stack([_full(g.to(first.dtype).norm(2)).to(first.device) for g in grads])
        return total_norm(params), torch.sqrt(torch.sum(torch.pow(ref, 2)))
    if first.grad.device.type in ("cpu", "cuda"):
        per = torch._foreach_norm(grads)  # what get_total_norm does for one (device, dtype) group
    else:
        per = [torch.linalg.vector_norm(g) for g in grads]
    stacked = _full(torch.stack(per))  # (P,)
    return torch.linalg.vector_norm(stacked), torch.sqrt(torch.sum(torch.pow(stacked, 2)))


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (all dims but the first, kept for broadcasting); whole tensor for 0-/1-D."""
    if x.ndim <= 1:
        return x.norm(2.0)
    return x.norm(2.0, dim=tuple(range(1, x.ndim)), keepdim=True)  # (out, 1, ..., 1)


class AGC:
    """Adaptive gradient clipping (Brock et al. 2021), unit-wise, as timm's ``adaptive_clip_grad``.

    ``clipping`` is lambda (0.01), ``eps`` the floor on a unit's weight norm (1e-3). ``exclude``
    leaves some parameters unclipped (the paper does not clip the final linear layer); its items are
    parameters (matched by identity) or names. A name matches a parameter of that name or a module
    prefix (``"lm_head"`` matches ``"lm_head.weight"``) and needs the names: either pass ``model=`` here
    (names resolved once, tied weights found under every name) or call
    ``clip_(model.named_parameters())``. A name that matches nothing is a ValueError. Excluded
    gradients still count in ``ClipStats.norm``. ``ClipStats.threshold`` is ``clipping``.

    No host-device sync: per-parameter ``torch.where`` on device, as timm.
    """

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, exclude=(), *, model: torch.nn.Module | None = None):
        if not (clipping > 0 and math.isfinite(clipping)):
            raise ValueError(f"AGC clipping must be positive, got {clipping}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"AGC eps must be >= 0, got {eps}")
        self.clipping = float(clipping)
        self.eps = float(eps)
        if isinstance(exclude, (str, torch.Tensor)):
            exclude = [exclude]
        self._names: list[str] = []
        self._tensors: list[torch.Tensor] = []  # strong references keep the ids below unique
        for item in exclude:
            if isinstance(item, str):
                self._names.append(item)
            elif isinstance(item, torch.Tensor):
                self._tensors.append(item)
            else:
                raise ValueError(f"AGC exclude takes parameters or names, got {type(item).__name__}")
        if model is not None and self._names:
            named = list(model.named_parameters(remove_duplicate=False))
            for name in self._names:
                hits = [p for n, p in named if _name_matches(n, name)]
                if not hits:
                    raise ValueError(f"AGC exclude {name!r} matches no parameter of the model")
                self._tensors.extend(hits)
            self._names = []
        self._ids = {id(t) for t in self._tensors}

    def _split(self, parameters) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(all parameters with a gradient, those to clip)."""
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        every, clip, seen = [], [], set()
        for item in parameters:
            name, p = item if isinstance(item, tuple) else (None, item)
            if self._names and name is None:
                raise ValueError("AGC exclude names need clip_(model.named_parameters()) or AGC(..., model=model)")
            hit = [n for n in self._names if _name_matches(name, n)] if self._names else []
            seen.update(hit)
            if p.grad is None:
                continue
            every.append(p)
            if not hit and id(p) not in self._ids:
                clip.append(p)
        unmatched = [n for n in self._names if n not in seen]
        if unmatched:
            raise ValueError(f"AGC exclude {unmatched[0]!r} matches no parameter name")
        return every, clip

    @torch.no_grad()
    def clip_(self, parameters) -> ClipStats:
        every, clip = self._split(parameters)
        norm = total_norm(every)
        device = norm.device
        if not clip:
            return ClipStats(norm=norm, threshold=self.clipping, clipped=_false(device), post_norm=norm)
        post_sq, changed = [], []
        for p in clip:
            g = p.grad.detach()
            max_norm = unitwise_norm(p.detach()).clamp(min=self.eps).mul(self.clipping)
            grad_norm = unitwise_norm(g)
            keep = grad_norm < max_norm
            factor = torch.where(keep, 1.0, max_norm / grad_norm.clamp(min=1e-6))
            g.mul_(factor)
            post_sq.append(_full((grad_norm * factor).float().square().sum()).to(device))
            changed.append(_full((~keep).any()).to(device))
        clipped_ids = {id(p) for p in clip}
        kept = [p for p in every if id(p) not in clipped_ids]
        if kept:
            post_sq.append(total_norm(kept).float().square().to(device))
        post = torch.stack(post_sq).sum().sqrt().to(norm.dtype)
        return ClipStats(norm=norm, threshold=self.clipping, clipped=torch.stack(changed).any(), post_norm=post)

    def state_dict(self) -> dict:
        """Nothing to save: AGC keeps no state between steps."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""


def _name_matches(name: str | None, pattern: str) -> bool:
    return name is not None and (name == pattern or name.startswith(pattern + "."))


CLIPPERS = {"none": NoClip, "norm": NormClip, "value": ValueClip, "autoclip": AutoClip, "zclip": ZClip, "agc": AGC}


def _ctor_args(cls) -> set[str]:
    return {n for n in inspect.signature(cls.__init__).parameters if n != "self"}


def make_clipper(method: str, **kwargs):
    """The clipper named ``method``, built from the keyword arguments its constructor takes.

    Arguments meant for other clippers are ignored, so a caller may pass every field of its config;
    a name no clipper takes is a ValueError. Note that ``eps`` means different things to `ZClip`
    (added to sigma, 1e-6) and `AGC` (weight-norm floor, 1e-3): pass the one for ``method``.
    """
    cls = CLIPPERS.get(method)
    if cls is None:
        raise ValueError(f"unknown clipping method {method!r}; choose one of: {', '.join(CLIPPERS)}")
    known = set().union(*(_ctor_args(c) for c in CLIPPERS.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown clipper argument {unknown[0]!r}")
    accepted = _ctor_args(cls)
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})
