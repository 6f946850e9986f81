"""What every generation backend shares: decoding settings, requests, results, and the cache.

A *request* is one sample: one prompt (or chat), one decoding setting, one seed, one sample index.
Each request has a stable key (sha256 of its canonical JSON plus the backend's identity), so

* a sampled request is reproducible on its own - its random stream is seeded from
  ``(seed, prompt_id, sample)`` (`sample_seed`), not from its position in a batch;
* finished requests go to an append-only JSONL cache as they finish (`GenerationCache`), and a
  second run with the same ``--out`` takes them from there instead of generating them again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ...errors import ConfigError
from ...fsutil import to_json
from ...io import read_jsonl_tail_tolerant


#: the smallest sampling temperature: logits / T overflow float32 (and fp16 far sooner) below it, and
#: a sample at T = 1e-3 is already the argmax for any real logit gap; greedy is ``temperature = 0``
MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class DecodingSettings:
    """How to decode. ``temperature == 0`` means greedy (then top-p/top-k are ignored)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise ConfigError(f"--temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got "
                              f"{self.temperature:g}: below that, logits / T overflow to inf and sampling gives NaN "
                              f"or plain argmax; use 0 for greedy")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.greedy:
            d.update(top_p=1.0, top_k=0)  # ignored under greedy; keep keys stable
        return d


def sample_seed(seed: int, prompt_id: str, sample: int) -> int:
    """The random stream of one sample: a stable 63-bit number from (seed, prompt, sample)."""
    h = hashlib.sha256(f"{seed}\x00{prompt_id}\x00{sample}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


@dataclass(frozen=True)
class Request:
    """One sample to generate."""

    prompt_id: str
    sample: int
    seed: int
    settings: DecodingSettings
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...) for chat items
    repeat: int = 0  # >0: a repeated run for the determinism checks (its own cache entry)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a Request needs exactly one of prompt or messages")

    @property
    def stream_seed(self) -> int:
        return sample_seed(self.seed, self.prompt_id, self.sample)

    def payload(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "messages": [list(m) for m in self.messages] if self.messages is not None else None,
            "settings": self.settings.as_dict(),
            # greedy output does not depend on the seed; sampled output depends on the stream
            "stream_seed": None if self.settings.greedy else self.stream_seed,
            "repeat": self.repeat,
        }

    def key(self, backend_id: str) -> str:
        blob = json.dumps({"backend": backend_id, **self.payload()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Generation:
    """A finished request."""

    request: Request
    text: str
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (max_new_tokens)
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


OnResult = Callable[[int, Generation], None]


def whole_characters(text: str, finish_reason: str | None) -> str:
    """``text`` without the U+FFFD a cut-off character leaves at its end, when the row stopped at
    its token limit. A byte-level tokenizer can stop inside a character (a Chinese one is 3 UTF-8
    bytes, often split over tokens) and decoding shows the partial bytes as U+FFFD, which no one
    wrote and which chrF and the CJK unit counts would score as a character. Local and served
    generations go through this one rule, so the same tokens give the same text either way."""
    return text.rstrip("\ufffd") if finish_reason == "length" else text


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do besides `generate`, declared as data: a metric asks this, never
    ``hasattr`` or the backend's kind, so a new backend says in one place what it supports."""

    logprobs: bool = False
    """scores text: ``scoring_model()`` (a causal LM for `compute_perplexity`) and ``tokenizer``"""
    next_token: bool = False
    """next-token distributions: ``next_token_predictions``, ``next_token_logprobs``, ``greedy_logits``"""
    seeds: bool = False
    """a sampled output is fixed by `Request.stream_seed` (an endpoint may ignore the seed it is sent)"""
    chat: bool = False
    """takes chat requests (``Request.messages``)"""
    environments: bool = False
    """can be opened again in another dtype or thread count (``path``, ``dtype``, ``threads``)"""


class Backend(ABC):
    """A model that generates text. Implementations: `LocalBackend`, `OpenAIBackend`, `EnsembleBackend`."""

    #: short kind name used in signatures: "local", "openai" or "ensemble"
    kind: str = ""
    #: what it can do besides generating; the default is generation alone
    capabilities: Capabilities = Capabilities()

    @property
    @abstractmethod
    def identity(self) -> str:
        """What makes outputs of this backend comparable: model hash or URL + model name.
        Part of every cache key."""

    @abstractmethod
    def signature(self) -> dict[str, Any]:
        """Settings that belong in results.json next to every number."""

    @abstractmethod
    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Generation]:
        """Generate every request; return them in the order given. Call ``on_result(i, gen)`` as
        soon as request ``i`` is finished (the cache writes it then) and ``progress(n)`` after
        each ``n`` finished requests."""

    def close(self) -> None:  # pragma: no cover - optional
        pass


class GenerationCache:
    """Append-only JSONL of finished requests, keyed by `Request.key`.

    One line per finished request, flushed when written: a run killed in the middle loses at most
    the line being written. That torn last line is cut off when the cache is opened again, so
    the next entry starts on a line of its own instead of being glued to the torn one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries: dict[str, dict[str, Any]] = {}
        self.repaired = False
        if self.path.exists():
            records, cut = read_jsonl_tail_tolerant(self.path)
            for obj in records:
                if self._valid(obj):
                    self._entries[obj["key"]] = obj
            if cut is not None:
                os.truncate(self.path, cut)
                self.repaired = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        if self._fh.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a complete last record that lost only its newline
                    self._fh.write("\n")
                    self._fh.flush()

    @staticmethod
    def _valid(obj: Any) -> bool:
        return isinstance(obj, dict) and isinstance(obj.get("key"), str) and isinstance(obj.get("text"), str)

    def __len__(self) -> int:
        return len(self._entries)

    def absorb(self, path: str | os.PathLike) -> int:
        """Take in the entries of another cache file (a data-parallel rank's) and append them
        to this one, so the run's cache.jsonl ends up holding everything. Returns how many."""
        n = 0
        if Path(path).exists():
            for obj in read_jsonl_tail_tolerant(path)[0]:
                if self._valid(obj) and obj["key"] not in self._entries:
                    self._entries[obj["key"]] = obj
                    self._fh.write(to_json(obj) + "\n")
                    n += 1
        self._fh.flush()
        return n

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, gen: Generation) -> None:
        obj = {"key": key, "text": gen.text, "completion_tokens": gen.completion_tokens,
               "finish_reason": gen.finish_reason, "extra": gen.extra}
        self._entries[key] = obj
        self._fh.write(to_json(obj) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def generate_cached(backend: Backend, requests: Sequence[Request], cache: GenerationCache | None,
                    progress: Callable[[int], None] | None = None) -> list[Generation]:
    """Serve what the cache has, generate the rest, write each new result to the cache as it
    finishes. If generation fails part-way, everything finished so far is already in the cache."""
    out: list[Generation | None] = [None] * len(requests)
    todo: list[int] = []
    for i, r in enumerate(requests):
        hit = cache.get(r.key(backend.identity)) if cache is not None else None
        if hit is not None:
            out[i] = Generation(r, hit["text"], hit.get("completion_tokens"), hit.get("finish_reason"),
                                cached=True, extra=hit.get("extra") or {})
        else:
            todo.append(i)
    if progress is not None and len(todo) < len(requests):
        progress(len(requests) - len(todo))
    if todo:
        sub = [requests[i] for i in todo]

        def on_result(j: int, gen: Generation) -> None:
            if cache is not None:
                cache.put(sub[j].key(backend.identity), gen)

        for j, gen in enumerate(backend.generate(sub, on_result=on_result, progress=progress)):
            out[todo[j]] = gen
    return out  # type: ignore[return-value]


def chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
