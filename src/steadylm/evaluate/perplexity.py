"""Corpus-level perplexity that matches lm-eval-harness's ``loglikelihood_rolling``.

Windows (reference: ``lm_eval/utils.py`` ``get_rolling_token_windows`` and
``make_disjoint_window``, as used by ``HFLM.loglikelihood_rolling``):

* a document's tokens are cut into disjoint *prediction*
  windows; the first predicts its first ``min(W, n)`` tokens from ``[prefix] + tokens[:W-1]``,
  where the prefix is BOS, else EOS;
* each later window predicts the next ``S`` tokens (``S`` = stride, default ``W``) from the ``W``
  tokens just before its last target, so a full window with ``S = W`` is conditioned on one token
  of carry-over and a document's last, partial window on as many earlier tokens as fill the
  window. This is lm-eval's function with ``context_len = W - S + 1``: with ``S = W`` it is
  exactly lm-eval's ``context_len=1``; with ``S < W`` every token is still scored exactly once,
  with up to ``W`` tokens of context (a sliding window).

Encoding: by default without special tokens, as lm-eval-harness up to 0.4.9 did. Since 0.4.10 it
encodes with the tokenizer's defaults, which for tokenizers that add BOS themselves (Llama's)
scores that BOS as a document token; ``add_special_tokens=True`` (``--add-special-tokens``)
reproduces that. For tokenizers that add nothing (steadylm's own, GPT-2's) both are the same.

Metrics, all corpus-level (sums over documents, then divide), lm-eval's definitions:
``token_perplexity = exp(-sum LL / tokens)``, ``word_perplexity = exp(-sum LL / words)`` with
``words = len(re.split(r"\\s+", doc))``, ``byte_perplexity = exp(-sum LL / bytes)`` with UTF-8
bytes, ``bits_per_byte = -sum LL / bytes / ln 2``.

Batching: windows from all documents are sorted by length (longest first) and cut into batches
of ``batch_size``, so batches are full and rows are right-padded only to the longest window in
their batch (most windows are full-length, so almost no batch pads at all). Right padding needs no attention mask with a causal
model, as the padded positions come after every scored one. Log-softmax is taken one row at a
time, so memory is bounded by the batch, not the corpus.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Iterator

from ..errors import ConfigError, ModelError


def rolling_windows(tokens: list[int], prefix: int, window: int, stride: int | None = None) -> Iterator[tuple[list[int], list[int]]]:
    """Yield ``(inputs, targets)``: the model reads ``inputs`` and its last ``len(targets)``
    positions predict ``targets``. Every token of ``tokens`` is a target exactly once."""
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window], got {stride}")
    n = len(tokens)
    if n == 0:
        return
    first = min(window, n)
    yield [prefix] + tokens[: first - 1], tokens[:first]
    predicted = first
    while predicted < n:
        count = min(n - predicted, stride)
        end = predicted + count
        yield tokens[end - window - 1 : end - 1], tokens[end - count : end]
        predicted = end


@dataclass
class PerplexityResult:
    """Corpus-level perplexity with lm-eval-harness's metrics and the settings that made it."""

    token_perplexity: float
    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    loglikelihood: float
    """sum of natural-log likelihoods of every token of every document"""
    tokens: int
    words: int
    bytes: int
    documents: int
    windows: int
    window: int
    stride: int
    signature: str = ""
    settings: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """mean token cross-entropy (nats)"""
        return -self.loglikelihood / self.tokens

    def to_dict(self) -> dict:
        return asdict(self)


def _signature(settings: dict) -> str:
    from .. import __version__

    order = ["model", "tok", "special", "window", "stride", "dtype"]
    parts = [f"steadylm:{__version__}"] + [f"{k}:{settings[k]}" for k in order if k in settings]
    return "|".join(parts)


def _exp(x: float) -> float:
    """exp that says inf for a diverged model instead of raising OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def perplexities(loglikelihood: float, *, tokens: int, bytes: int) -> dict[str, float]:
    """lm-eval-harness's corpus-level rates from summed log-likelihood, token and byte counts."""
    return {"bits_per_byte": -loglikelihood / bytes / math.log(2), "byte_perplexity": _exp(-loglikelihood / bytes),
            "token_perplexity": _exp(-loglikelihood / tokens)}


class TextScorer:
    """Log-likelihoods of short texts (prompts) under one model, each text scored once.

    Every text is its own document (`compute_perplexity` with one window of ``window`` tokens), so
    corpus numbers over any set of texts are sums of the cached ones, as lm-eval-harness sums
    documents before dividing."""

    def __init__(self, model, tokenizer, *, window: int):
        self.model, self.tokenizer, self.window = model, tokenizer, window
        self._seen: dict[str, tuple[float, int, int] | None] = {}

    def score(self, text: str) -> tuple[float, int, int] | None:
        """(log-likelihood, UTF-8 bytes, tokens) of ``text``; None for empty text."""
        if text not in self._seen:
            r = None
            if text.strip():
                r = compute_perplexity(self.model, self.tokenizer, [text], window=self.window, batch_size=1,
                                       progress=False)
            self._seen[text] = None if r is None else (r.loglikelihood, r.bytes, r.tokens)
        return self._seen[text]

    def bits_per_byte(self, text: str) -> float | None:
        s = self.score(text)
        return None if s is None else -s[0] / s[1] / math.log(2)

    def corpus(self, texts: list[str]) -> dict[str, float | int]:
        """Corpus-level rates over ``texts`` (empty ones left out), with the sums they came from."""
        scored = [s for s in map(self.score, texts) if s is not None]
        ll, nb, nt = sum(s[0] for s in scored), sum(s[1] for s in scored), sum(s[2] for s in scored)
        return {**perplexities(ll, tokens=nt, bytes=nb), "loglikelihood": ll, "bytes": nb, "tokens": nt,
                "documents": len(scored)}


def compute_perplexity(model, tokenizer, documents: list[str], *, window: int, stride: int | None = None,
                       batch_size: int = 8, progress: bool = True, settings: dict | None = None,
                       add_special_tokens: bool = False) -> PerplexityResult:
    """Score ``documents`` with ``model`` (in memory) and return corpus-level perplexities."""
    import torch
    import torch.nn.functional as F

    from ..data.tokenizer import encode_documents, separator_id
    from ..progress import make_progress

    stride = window if stride is None else stride
    if window < 1:
        raise ConfigError(f"--window must be positive, got {window}")
    if not 1 <= stride <= window:
        raise ConfigError(f"--stride must be between 1 and --window {window}, got {stride}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    prefix = separator_id(tokenizer)
    if prefix is None:
        raise ModelError("the tokenizer has neither a BOS nor an EOS token to start a document with")

    token_lists = encode_documents(tokenizer, documents, add_special_tokens=add_special_tokens)
    windows = [w for toks in token_lists for w in rolling_windows(toks, prefix, window, stride)]
    # Longest first: batches of equal-length windows need no padding at all.
    windows.sort(key=lambda w: len(w[0]), reverse=True)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    with make_progress(transient=True) as bar, torch.inference_mode():
        task = bar.add_task("perplexity", total=len(windows), info="", visible=progress)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            width = len(chunk[0][0])
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (inp, _) in enumerate(chunk):
                ids[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            logits = model(input_ids=ids.to(device), use_cache=False).logits  # (B, L, V)
            for i, (inp, tgt) in enumerate(chunk):
                lo = len(inp) - len(tgt)
                row = F.log_softmax(logits[i, lo : len(inp)].float(), dim=-1)  # (n, V)
                t = torch.tensor(tgt, dtype=torch.long, device=row.device)
                total += float(row.gather(-1, t[:, None]).sum(dtype=torch.float64))
            del logits
            bar.update(task, advance=len(chunk))
    if was_training:
        model.train()

    n_tokens = sum(len(t) for t in token_lists)
    n_words = sum(len(re.split(r"\s+", d)) for d in documents)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    if n_tokens == 0:
        raise ConfigError("nothing to score: the documents encode to zero tokens")
    settings = dict(settings or {})
    settings.update(window=window, stride=stride)
    return PerplexityResult(
        **perplexities(total, tokens=n_tokens, bytes=n_bytes),
        word_perplexity=_exp(-total / n_words),
        loglikelihood=total,
        tokens=n_tokens,
        words=n_words,
        bytes=n_bytes,
        documents=len(documents),
        windows=len(windows),
        window=window,
        stride=stride,
        signature=_signature(settings),
        settings=settings,
    )


def evaluate_perplexity(model_path: str, source: str, *, window: int | None = None, stride: int | None = None,
                        batch_size: int = 8, dtype: str = "float32", trust_remote_code: bool = False,
                        progress: bool = True, add_special_tokens: bool = False) -> PerplexityResult:
    """`compute_perplexity` for a model folder and a data source, with the full signature."""
    from ..data.sources import load_documents
    from ..data.tokenizer import load_tokenizer, tokenizer_signature
    from ..models.presets import load_model, model_context, model_hash

    for name, v in (("--window", window), ("--stride", stride), ("--batch-size", batch_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be positive, got {v}")
    corpus = load_documents(source)  # check the data before the (slower) model load
    if model_path.startswith("ensemble:"):  # a token-level ensemble scored as one model
        from .backends import open_backend

        ens = open_backend(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        model, ctx = ens.scoring_model(), ens.context
        lead, model_id = ens.paths[0], ens.identity
    else:
        model = load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        ctx = model_context(model.config)
        lead, model_id = model_path, model_hash(model_path)
    if window is None:
        if ctx is None:
            raise ConfigError(f"{model_path}: the config gives no context length; pass --window")
        window = ctx
    elif ctx is not None and window > ctx:
        raise ConfigError(f"--window {window} is larger than the model's context of {ctx} tokens")
    if stride is not None and stride > window:
        raise ConfigError(f"--stride {stride} is larger than --window {window}")
    tokenizer = load_tokenizer(lead, trust_remote_code=trust_remote_code)
    settings = {"model": model_id, "tok": tokenizer_signature(tokenizer), "dtype": dtype, "data": corpus.name,
                "special": "yes" if add_special_tokens else "no"}
    return compute_perplexity(model, tokenizer, corpus.documents, window=window, stride=stride,
                              batch_size=batch_size, progress=progress, settings=settings,
                              add_special_tokens=add_special_tokens)
