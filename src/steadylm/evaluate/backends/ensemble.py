"""Token-level ensembles: K local causal LMs that share a tokenizer, decoding as one model.

At every decoding step each member scores the next token and the ensemble decodes from one
combined distribution (a *product* or a *mixture* of experts, Hinton 2002; the mixture is the
classic ensemble of neural MT systems, e.g. Sennrich et al. 2016 "Edinburgh Neural MT Systems for
WMT 16", and fairseq's ``EnsembleModel``, which averages probabilities in log space):

* ``mode="prob"`` (mixture): ``log Σ_k w_k softmax(z_k)``, in float32 (a token that every member
  gives less than float32's smallest normal number, ~1e-38, is floored there rather than -inf);
* ``mode="logprob"`` (product / geometric mean): ``Σ_k w_k log_softmax(z_k)``, renormalised. Since
  ``log_softmax(z) = z - log Z`` and ``Σ_k w_k log Z_k`` is one constant per row, this equals the
  weighted mean of the raw logits up to that constant - which is how it is computed: decoding
  (argmax, temperature, top-k, top-p) does not see a per-row shift.

Weights default to uniform and are normalised to sum to one. Greedy decoding takes the argmax of
the combined log-probabilities; sampled decoding applies LocalBackend's own `RowSampler` (HF's
temperature / top-k / top-p warpers, then one draw per row from a ``torch.Generator`` seeded with
`Request.stream_seed`), so a sample depends on its seed, not on its batch, exactly as with one model.

Where we differ from HF ``generate`` and why: ``generate`` takes one model, so the loop is ours -
left-padded rows, position ids from the attention mask (``cumsum - 1``), one KV cache per member,
the prompt in one forward pass and then one token per step, finished rows fed padding. It mirrors
what ``generate`` does for a decoder-only model (it also drops an all-ones mask and keeps only the
last position's logits), so an ensemble of ONE model reproduces `LocalBackend` token for token:
with K = 1 the member's logits go to the sampler untouched (``log_softmax`` is only a shift, the
same distribution, but skipping it keeps the floating-point rounding, and so the draws, identical).

Members may differ in architecture and size (a Llama and a Qwen3 QK-norm model, say); they must
share the tokenizer: the same ``get_vocab()`` and the same special-token ids, checked on loading.
If their output layers differ in width (one padded to a multiple of 64), the extra ids are cut to
the narrowest member before combining - no tokenizer can produce them. The prompt context is the
shortest member context.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any, Sequence

from ...errors import ConfigError, ModelError
from .base import Backend, Capabilities, DecodingSettings, Request
from .local import LocalBackend, RowSampler

MODES = ("prob", "logprob")
_SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def check_same_vocabulary(a_path: str, a_tok: Any, b_path: str, b_tok: Any) -> None:
    """`ModelError` (one line, naming both folders and the difference) unless two tokenizers have
    the same vocabulary and the same special-token ids."""
    va, vb = a_tok.get_vocab(), b_tok.get_vocab()
    if len(va) != len(vb):
        raise ModelError(f"vocabularies differ: {a_path} has {len(va)} tokens, {b_path} has {len(vb)}")
    if va != vb:
        diff = sorted(t for t in va if vb.get(t) != va[t])
        t = diff[0]
        other = f"id {vb[t]}" if t in vb else "absent"
        raise ModelError(f"vocabularies differ: {len(diff)} of {len(va)} tokens map differently between {a_path} and "
                         f"{b_path} (e.g. {t!r} is id {va[t]} vs {other})")
    for name in _SPECIAL:
        x, y = getattr(a_tok, name, None), getattr(b_tok, name, None)
        if x != y:
            raise ModelError(f"special tokens differ: {name} is {x} in {a_path} but {y} in {b_path}")


def _cache_kw(model) -> str:
    # transformers 5 renamed past_key_values to cache; take whichever this version's forward has
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class EnsembleBackend(Backend):
    """K local HF causal-LM folders with one tokenizer, generating as one model (see module doc)."""

    kind = "ensemble"
    # no `environments`: reopening every member in another dtype is not implemented
    capabilities = Capabilities(logprobs=True, next_token=True, seeds=True, chat=True)

    def __init__(self, paths: Sequence[str], *, weights: Sequence[float] | None = None, mode: str = "prob",
                 dtype: str = "float32", batch_size: int = 64, trust_remote_code: bool = False,
                 truncate_left: bool = False, threads: int | None = None, device: str | None = None):
        paths = [str(p) for p in paths]
        if not paths:
            raise ConfigError("an ensemble needs at least one model folder")
        if mode not in MODES:
            raise ConfigError(f"ensemble mode must be one of {', '.join(MODES)}, got {mode!r}")
        if weights is None:
            weights = [1.0] * len(paths)
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ConfigError(f"ensemble weights must be numbers, got {list(weights)!r}") from None
        if len(weights) != len(paths):
            raise ConfigError(f"ensemble: {len(weights)} weights for {len(paths)} models")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ConfigError(f"ensemble weights must be positive and finite, got {weights}")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.mode, self.paths, self.dtype, self.batch_size = mode, paths, dtype, batch_size
        self.truncate_left, self.threads = truncate_left, threads
        # Each member is a full LocalBackend: the same loading, tokenizer padding and EOS rules.
        self.members = [LocalBackend(p, dtype=dtype, batch_size=batch_size, trust_remote_code=trust_remote_code,
                                     truncate_left=truncate_left, threads=threads, device=device) for p in paths]
        lead = self.lead = self.members[0]
        for m in self.members[1:]:
            check_same_vocabulary(lead.path, lead.tokenizer, m.path, m.tokenizer)
        ctxs = [m.context for m in self.members if m.context is not None]
        lead.context = min(ctxs) if ctxs else None  # prompts must fit every member
        self.context = lead.context
        self.tokenizer, self.eos_id, self.device = lead.tokenizer, lead.eos_id, lead.device
        self.chat_format = lead.chat_format
        self.models = [m.model for m in self.members]
        self._cache_kws = [_cache_kw(m) for m in self.models]
        self._keep = ["logits_to_keep" in inspect.signature(m.forward).parameters for m in self.models]
        self.hashes = [m.hash for m in self.members]

    @classmethod
    def from_spec(cls, spec: str, **kw: Any) -> "EnsembleBackend":
        """``ensemble:DIR1,DIR2[#prob|#logprob]`` (see `parse_spec`); keywords go to the members."""
        paths, mode = parse_spec(spec)
        return cls(paths, mode=mode, **kw)

    # ------------------------------------------------------------------ identity
    @property
    def identity(self) -> str:
        w = "" if len(set(self.weights)) == 1 else ":w=" + ",".join(f"{x:.6g}" for x in self.weights)
        return f"ensemble:{self.mode}:{'+'.join(self.hashes)}{w}:{self.dtype}"

    @property
    def hash(self) -> str:
        """One 12-hex name for the ensemble (members, weights, mode), for signature strings."""
        return hashlib.sha256(self.identity.encode()).hexdigest()[:12]

    def signature(self) -> dict[str, Any]:
        import torch
        import transformers

        return {"backend": "ensemble", "model": "ensemble:" + ",".join(self.paths) + f"#{self.mode}",
                "model_hash": self.hash, "mode": self.mode,
                "members": [{"model": m.path, "model_hash": m.hash, "weight": w,
                             "model_type": getattr(m.model.config, "model_type", None)}
                            for m, w in zip(self.members, self.weights)],
                "dtype": self.dtype, "device": self.device.type, "batch_size": self.batch_size,
                "chat_format": self.chat_format, "context": self.context, "torch": torch.__version__,
                "transformers": transformers.__version__, "threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ prompts (the lead member's)
    def render(self, r: Request) -> str:
        return self.lead.render(r)

    def encode_prompt(self, text: str, max_new_tokens: int, *, label: str = "") -> list[int]:
        return self.lead.encode_prompt(text, max_new_tokens, label=label)

    # ------------------------------------------------------------------ combining
    def combine(self, logits: Sequence[Any]) -> Any:
        """The ensemble's next-token scores ``(..., V)`` from each member's logits ``(..., V)``:
        log-probabilities of the combined distribution up to one constant per row (which greedy,
        temperature, top-k and top-p all ignore; `next_token_logprobs` normalises). With one
        member, its logits unchanged."""
        import torch

        if len(logits) == 1:
            return logits[0]
        v = min(x.shape[-1] for x in logits)
        z = [x[..., :v].float() for x in logits]  # K x (..., V)
        w = self.weights
        # Decoding runs this once per step on (B, V): a few elementwise passes per member, no
        # reduction over a stacked (K, B, V) tensor (logsumexp over the member axis cost twice as much).
        if self.mode == "logprob":
            # Σ w_k log_softmax(z_k) = Σ w_k z_k - Σ w_k log Z_k, and the last sum is one constant per
            # row: the weighted mean of the raw logits is the renormalised product of experts.
            s = z[0] * w[0]
            for wk, zk in zip(w[1:], z[1:]):
                s.add_(zk, alpha=wk)
            return s
        acc = torch.softmax(z[0], dim=-1).mul_(w[0])  # Σ w_k p_k: (..., V)
        for wk, zk in zip(w[1:], z[1:]):
            acc.add_(torch.softmax(zk, dim=-1), alpha=wk)
        # a token every member gives < 1e-38 would be log 0 = -inf: floor it at float32's smallest normal
        return acc.clamp_min_(torch.finfo(acc.dtype).tiny).log_()

    def _forward(self, k: int, ids, attn, pos, cache, last_only: bool = True):
        kw = {self._cache_kws[k]: cache}
        if last_only and self._keep[k]:
            kw["logits_to_keep"] = 1
        out = self.models[k](input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, return_dict=True, **kw)
        new_cache = out.get("cache") if "cache" in out else out.get("past_key_values")
        return out.logits, new_cache

    def _padded(self, ids_list: list[list[int]]):
        import torch

        width = max(len(x) for x in ids_list)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids_list], device=self.device)  # (B, W)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids_list], device=self.device)  # (B, W)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as HF generate: pads get position 0
        # HF generate drops a mask of all ones (no padding): keep its attention path, hence its numbers
        attn = None if bool(mask.all()) else mask
        return ids, attn, pos

    def _batch(self, ids_list: list[list[int]], settings: DecodingSettings, seeds: Sequence[int] | None,
               *, scores: bool = False):
        """Decode one left-padded batch; ``(new tokens per row, combined scores (B, T, V) or None)``."""
        import torch

        ids, attn, pos = self._padded(ids_list)
        B = ids.shape[0]
        pad = self.tokenizer.pad_token_id
        sampler = RowSampler(seeds, settings) if seeds is not None else None
        caches: list[Any] = [None] * len(self.models)
        unfinished = torch.ones(B, dtype=torch.bool, device=self.device)
        cols, kept = [], []
        inp = ids
        with torch.inference_mode():
            for _ in range(settings.max_new_tokens):
                logits = []
                for k in range(len(self.models)):
                    z, caches[k] = self._forward(k, inp, attn, pos, caches[k])
                    logits.append(z[:, -1].to(dtype=torch.float32, copy=True))  # (B, V)
                combined = self.combine(logits)  # (B, V)
                if scores:
                    kept.append(combined.cpu())
                # the sampler's warpers ignore input_ids; it returns 0 at the drawn token, -inf elsewhere
                nxt = (sampler(ids, combined) if sampler is not None else combined).argmax(-1)  # (B,)
                if self.eos_id is not None:
                    nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))  # finished rows get padding
                    unfinished &= nxt != self.eos_id
                cols.append(nxt)
                if self.eos_id is not None and not bool(unfinished.any()):
                    break
                inp = nxt[:, None]  # (B, 1)
                pos = pos[:, -1:] + 1
                if attn is not None:
                    attn = torch.cat([attn, attn.new_ones((B, 1))], dim=-1)
        new = torch.stack(cols, dim=1).tolist()  # (B, T)
        return new, (torch.stack(kept, dim=1) if scores else None)

    # ------------------------------------------------------------------ generation
    def finish(self, toks: list[int], max_new: int) -> tuple[str, int, str]:
        return self.lead.finish(toks, max_new)

    # LocalBackend's batching (longest first, a prompt's samples together, per-row seeds, results
    # and progress reported per batch); only `_batch`, the decoding of one batch, differs.
    generate = LocalBackend.generate

    def next_token_logprobs(self, texts: Sequence[str]) -> Any:
        """The ensemble's next-token log-probabilities after each text, ``(B, V)``, from one
        left-padded batch (normalised also for a single member)."""
        import torch

        ids, attn, pos = self._padded([self.encode_prompt(t, 1) for t in texts])
        with torch.inference_mode():
            logits = [self._forward(k, ids, attn, pos, None)[0][:, -1].float() for k in range(len(self.models))]
            return torch.log_softmax(self.combine(logits), dim=-1)

    def greedy_logits(self, texts: Sequence[str], settings: DecodingSettings) -> tuple[list[list[int]], Any]:
        """Greedy continuations of ``texts`` in one left-padded batch, with the combined scores of
        each step ``(B, T, V)`` (as `LocalBackend.greedy_logits`, for the batch-invariance check)."""
        return self._batch([self.encode_prompt(t, settings.max_new_tokens) for t in texts], settings, None, scores=True)

    def token_scores(self, ids: Any) -> Any:
        """The combined next-token scores ``(T, V)`` at every position of one sequence ``ids (1, T)``."""
        return self.combine([m(ids).logits[0].float() for m in self.models])  # K x (T, V) -> (T, V)

    # teacher forcing in non-overlapping windows of the shortest member context, through `token_scores`
    next_token_predictions = LocalBackend.next_token_predictions

    def scoring_model(self) -> "EnsembleLM":
        """The ensemble as one causal LM, for `compute_perplexity`."""
        return EnsembleLM(self)


def parse_spec(spec: str) -> tuple[list[str], str]:
    """``ensemble:DIR1,DIR2[#prob|#logprob]`` -> (folders, mode)."""
    body = spec.removeprefix("ensemble:")
    mode = "prob"
    if "#" in body:
        body, mode = body.rsplit("#", 1)
        if mode not in MODES:
            raise ConfigError(f"{spec}: ensemble mode after '#' must be one of {', '.join(MODES)}, got {mode!r}")
    paths = [p for p in (x.strip() for x in body.split(",")) if p]
    if not paths:
        raise ConfigError(f"{spec!r}: name the members, as ensemble:DIR1,DIR2[#logprob]")
    return paths, mode


class EnsembleLM:
    """An `EnsembleBackend` seen as one causal LM for scoring: ``forward(input_ids).logits`` are
    the combined log-probabilities ``(B, T, V)`` (mode ``prob``: log Σ w·p; ``logprob``: the
    renormalised weighted mean of log-probabilities), so `compute_perplexity` scores an ensemble
    exactly as it scores one model."""

    def __init__(self, backend: "EnsembleBackend"):
        self.backend = backend
        self.training = False
        self.config = backend.models[0].config

    def parameters(self):
        return self.backend.models[0].parameters()

    def eval(self):
        for m in self.backend.models:
            m.eval()
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, **_: Any):
        import torch
        from types import SimpleNamespace

        with torch.inference_mode():
            logits = [m(input_ids=input_ids, use_cache=False).logits for m in self.backend.models]  # K x (B, T, V)
            z = self.backend.combine(logits)
            return SimpleNamespace(logits=torch.log_softmax(z.float(), dim=-1))
