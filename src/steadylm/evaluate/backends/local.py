"""Generation from a local Hugging Face causal-LM folder.

Batching: requests from *all* prompts are sorted by prompt length and cut into batches of
``batch_size`` rows, left-padded (the K samples of a prompt sit next to each other, so a batch
mostly holds prompts of one length and pads little). One ``model.generate`` call per batch with
the KV cache. This is the point of the backend: one batch over many prompts keeps the matrix
multiplies wide, where ``generate(num_return_sequences=K)`` prompt by prompt runs K rows at a
time (``benchmarks/generation_throughput.py`` measures both, and a naive one-call-per-sample loop).

Seeds: a sampled row draws from its own ``torch.Generator`` seeded with `Request.stream_seed`
(from seed, prompt id and sample index), inside a final logits processor that applies HF's own
temperature / top-k / top-p warpers and samples the row; ``generate`` then runs greedily over
the one-hot result. So a sample's text depends on its seed, not on which prompts share its batch
or in which order batches run - the property "same seed, same output" needs. (The logits
themselves may still change with the batch - that is what `batch_invariance` measures.)

Chat items use the tokenizer's chat template when it has one, else plain ``role: content`` lines
followed by ``assistant:`` (said in the signature as ``chat_format``).
"""

from __future__ import annotations

import functools

import math
from typing import Any, Callable, Sequence

from ...errors import ConfigError, DataError
from ...runtime import launch_ranks, resolve_device
from .base import Backend, Capabilities, DecodingSettings, Generation, OnResult, Request, whole_characters


def _chat_fallback(messages: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{r}: {c}\n" for r, c in messages) + "assistant:"


class RowSampler:
    """The last logits processor of a sampled batch: warp like HF, then sample each row from its
    own generator, and return logits that make the greedy step pick that sample (also the
    ensemble's sampler, so a sample depends on its seed alone in both)."""

    def __init__(self, seeds: Sequence[int], settings: DecodingSettings):
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.torch = torch
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        warpers: list[Any] = [TemperatureLogitsWarper(settings.temperature)]
        if settings.top_k > 0:
            warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids, scores):  # scores: (B, V)
        torch = self.torch
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1).cpu()  # (B, V)
        picks = torch.stack([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.gens)])  # (B, 1)
        out = torch.full_like(scores, -math.inf)
        out.scatter_(1, picks.to(scores.device), 0.0)
        return out


class LocalBackend(Backend):
    kind = "local"
    capabilities = Capabilities(logprobs=True, next_token=True, seeds=True, chat=True, environments=True)

    def __init__(self, path: str, *, dtype: str = "float32", batch_size: int = 64, trust_remote_code: bool = False,
                 truncate_left: bool = False, threads: int | None = None, device: str | None = None):
        from ...data.tokenizer import load_tokenizer
        from ...models.presets import load_model, model_context, model_hash, quiet_progress

        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        # one GPU per process under accelerate launch / torchrun; checked before the model loads
        self.device = resolve_device(device, local_rank=launch_ranks()[2])
        self.path, self.dtype, self.batch_size, self.truncate_left = str(path), dtype, batch_size, truncate_left
        with quiet_progress():
            self.model = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
            self.tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        self.model.to(self.device).eval()
        self.threads = threads
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
        tok.padding_side = "left"
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else self.model.config.eos_token_id
        self.context = model_context(self.model.config)
        self.hash = model_hash(path)
        self.chat_format = "template" if getattr(tok, "chat_template", None) else "role-lines"

    # ------------------------------------------------------------------ identity
    @property
    def identity(self) -> str:
        return f"local:{self.hash}:{self.dtype}"

    def signature(self) -> dict[str, Any]:
        import torch
        import transformers

        return {"backend": "local", "model": self.path, "model_hash": self.hash, "dtype": self.dtype,
                "device": self.device.type, "batch_size": self.batch_size, "chat_format": self.chat_format,
                "torch": torch.__version__, "transformers": transformers.__version__,
                "threads": torch.get_num_threads()}

    # ------------------------------------------------------------------ prompts
    def render(self, r: Request) -> str:
        if r.prompt is not None:
            return r.prompt
        msgs = list(r.messages or ())
        if self.chat_format == "template":
            return self.tokenizer.apply_chat_template([{"role": a, "content": b} for a, b in msgs],
                                                      add_generation_prompt=True, tokenize=False)
        return _chat_fallback(msgs)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The longest token's spelling in characters: a text longer than ``context`` times this
        cannot fit the context, whatever the tokenizer makes of it."""
        return max(1, max(map(len, self.tokenizer.get_vocab()), default=1))

    def encode_prompt(self, text: str, max_new_tokens: int, *, label: str = "") -> list[int]:
        if self.context is not None and not self.truncate_left and len(text) > self.context * self.max_token_chars:
            # a prompt of megabytes would take long to tokenize only to be refused: look at a prefix
            # that already needs more tokens than the context holds
            head = self.tokenizer(text[:self.context * self.max_token_chars], add_special_tokens=False)["input_ids"]
            if len(head) + max_new_tokens > self.context:
                raise DataError(
                    f"prompt {label or text[:30]!r} has more than {len(head)} tokens ({len(text):,} characters); with "
                    f"--max-new-tokens {max_new_tokens} that exceeds the model's context of {self.context} "
                    "(pass --truncate-left to keep the prompt's last tokens)")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and self.chat_format != "template" and ids[:1] != [bos]:
            ids = [bos] + ids  # as in training: documents start after BOS
        if self.context is not None and len(ids) + max_new_tokens > self.context:
            room = self.context - max_new_tokens
            if not self.truncate_left or room < 1:
                raise DataError(
                    f"prompt {label or text[:30]!r} has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} "
                    f"that exceeds the model's context of {self.context}"
                    + ("" if self.truncate_left else " (pass --truncate-left to keep the prompt's last tokens)"))
            ids = ids[len(ids) - room:]
        return ids

    # ------------------------------------------------------------------ generation
    def _batch(self, ids_list: list[list[int]], settings: DecodingSettings, seeds: Sequence[int] | None,
               *, scores: bool = False):
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(x) for x in ids_list)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids_list], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids_list], device=self.device)
        gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=settings.max_new_tokens,
                              pad_token_id=pad, eos_token_id=self.eos_id, bos_token_id=self.tokenizer.bos_token_id,
                              return_dict_in_generate=True, output_logits=scores)
        procs = LogitsProcessorList([RowSampler(seeds, settings)]) if seeds is not None else None
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gc,
                                      logits_processor=procs)
        new = out.sequences[:, width:].tolist()
        logits = torch.stack(out.logits, dim=1).float().cpu() if scores else None  # (B, T, V)
        return new, logits

    def finish(self, toks: list[int], max_new: int) -> tuple[str, int, str]:
        """``(text, completion tokens, finish reason)`` of one row's new tokens: cut at EOS, decoded."""
        n = len(toks)
        if self.eos_id is not None and self.eos_id in toks:
            n = toks.index(self.eos_id)
            reason = "stop"
        else:
            reason = "length" if len(toks) >= max_new else "stop"
        return whole_characters(self.tokenizer.decode(toks[:n], skip_special_tokens=True), reason), n, reason

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        import torch

        prev_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            results: list[Generation | None] = [None] * len(requests)
            encoded = [self.encode_prompt(self.render(r), r.settings.max_new_tokens, label=r.prompt_id) for r in requests]
            groups: dict[DecodingSettings, list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault(r.settings, []).append(i)
            for settings, idx in groups.items():
                # longest first; ties keep the prompt's samples together
                idx = sorted(idx, key=lambda i: (-len(encoded[i]), requests[i].prompt_id, requests[i].sample))
                for s in range(0, len(idx), self.batch_size):
                    part = idx[s:s + self.batch_size]
                    seeds = None if settings.greedy else [requests[i].stream_seed for i in part]
                    new, _ = self._batch([encoded[i] for i in part], settings, seeds)
                    for i, toks in zip(part, new):
                        text, n, reason = self.finish(toks, settings.max_new_tokens)
                        results[i] = Generation(requests[i], text, n, reason)
                        if on_result is not None:
                            on_result(i, results[i])
                    if progress is not None:
                        progress(len(part))
            return results  # type: ignore[return-value]
        finally:
            torch.set_num_threads(prev_threads)

    # ------------------------------------------------------------------ analysis helpers
    def scoring_model(self) -> Any:
        """The model that `compute_perplexity` scores text with."""
        return self.model

    def token_scores(self, ids: Any) -> Any:
        """Next-token scores ``(T, V)`` at every position of one sequence ``ids (1, T)``."""
        return self.model(ids).logits[0]

    def greedy_logits(self, texts: Sequence[str], settings: DecodingSettings) -> tuple[list[list[int]], Any]:
        """Greedy continuations of ``texts`` in one left-padded batch, with the raw logits of each
        step: ``(tokens per row, logits (B, T, V))``."""
        ids = [self.encode_prompt(t, settings.max_new_tokens) for t in texts]
        return self._batch(ids, settings, None, scores=True)

    def next_token_predictions(self, text: str) -> tuple[list[int], list[int]]:
        """Gold tokens of ``text`` and the model's top-1 prediction for each (teacher forcing,
        windows of the model's context with no overlap); for Welleck et al.'s rep / wrep. The
        scores come from `token_scores`, so an ensemble shares this method."""
        import torch

        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_id
        seq = [bos] + ids
        W = self.context or 1024
        targets: list[int] = []
        preds: list[int] = []
        with torch.inference_mode():
            for s in range(0, len(ids), W):
                logits = self.token_scores(torch.tensor([seq[s:s + W]], device=self.device))  # (T, V)
                preds += logits.argmax(-1).tolist()
                targets += ids[s:s + W]
        return targets, preds[:len(targets)]
