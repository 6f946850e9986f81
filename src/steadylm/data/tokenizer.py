"""Tokenizers: train a byte-level BPE with the ``tokenizers`` library, or load a model folder's.

The trained tokenizer is GPT-2 style (byte-level, so any UTF-8 text - Chinese included - is
covered with no unknown token) with a single special token ``<|endoftext|>`` that serves as BOS,
EOS and document separator. It is wrapped in `transformers.PreTrainedTokenizerFast` and saved into
the model folder, so ``AutoTokenizer.from_pretrained`` (and lm-eval-harness, vLLM) load it.
Encoding adds no special tokens; steadylm adds separators itself where it needs them.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import ModelError

SPECIAL = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on ``texts`` and return a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL,
        eos_token=SPECIAL,
        unk_token=None,
        model_max_length=1_000_000,
    )


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """Load the tokenizer saved in a model folder, or the one inside a ``.gguf`` file (local files only)."""
    from transformers import AutoTokenizer

    from ..models.presets import gguf_file, quiet_progress

    folder, gguf = gguf_file(path)
    try:
        with quiet_progress():
            return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code,
                                                 gguf_file=gguf)
    except Exception as e:  # transformers raises many kinds here
        raise ModelError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def encode_documents(tokenizer, docs: list[str], *, add_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each document (by default without special tokens), batched through the Rust backend."""
    if not docs:
        return []
    return tokenizer(docs, add_special_tokens=add_special_tokens)["input_ids"]


def separator_id(tokenizer) -> int | None:
    """The token that marks a document start: BOS, else EOS (lm-eval-harness's choice)."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    return tokenizer.eos_token_id


def tokenizer_signature(tokenizer) -> str:
    """A short, stable description of a tokenizer for result signatures."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:10]
    return f"{type(tokenizer).__name__.replace('TokenizerFast', '').lower() or 'fast'}-{len(tokenizer)}-{digest}"
