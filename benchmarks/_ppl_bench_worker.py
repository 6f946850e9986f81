"""Child-process worker for ``perplexity_vs_lmeval.py``.

Each subcommand runs in its own process so that its wall time and peak RSS
can be measured in isolation by the orchestrator:

``build``  write the JSONL documents and a seeded, randomly initialised
           Llama-style model folder (safetensors + byte-level BPE tokenizer).
``bare``   the physical limit: load the model and run only batched float32
           forward passes over exactly the windows lm-eval-harness scores.
           Prints one JSON object (timings, token counts, metrics) on stdout.

This file only imports the standard library at module level; torch,
transformers and tokenizers are imported inside the subcommands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

EOT = "<|endoftext|>"


# --------------------------------------------------------------------------- #
# lm-eval-harness rolling-window logic (copied from lm_eval 0.4.13 utils.py).
# --------------------------------------------------------------------------- #
def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    """Same generator as ``lm_eval.utils.get_rolling_token_windows``."""
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def make_disjoint_window(pair):
    """Same as ``lm_eval.utils.make_disjoint_window``."""
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def lmeval_windows(tokens, prefix_token, max_length):
    """(input_ids, n_scored) per window, exactly as lm_eval's HFLM feeds them.

    HFLM._loglikelihood_tokens builds ``(context + continuation)[-(L+1):][:-1]``
    as model input and scores the last ``len(continuation)`` logits.
    """
    out = []
    for ctx, cont in map(
        make_disjoint_window,
        get_rolling_token_windows(tokens, prefix_token, max_length, 1),
    ):
        full = (ctx + cont)[-(max_length + 1) :]
        out.append((full[:-1], full[-len(cont) :]))
    return out


def count_words(text: str) -> int:
    """lm_eval's ``count_words``: ``len(re.split(r"\\s+", doc))`` (quirks kept)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


# --------------------------------------------------------------------------- #
# build
# --------------------------------------------------------------------------- #
def load_topic_docs(n_docs: int | None):
    from pydoc_data.topics import topics

    keys = sorted(topics)
    if n_docs is not None and n_docs > 0:
        keys = keys[:n_docs]
    return [topics[k] for k in keys]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cmd_build(args) -> int:
    out = Path(args.out_dir)
    model_dir = out / "model"
    data_path = out / "docs.jsonl"
    out.mkdir(parents=True, exist_ok=True)

    texts = load_topic_docs(args.docs)
    with open(data_path, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # Byte-level BPE trained on the documents (deterministic: fixed input order).
    # Always trained on *all* topics so the tokenizer does not depend on --docs.
    all_texts = load_topic_docs(None)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(all_texts, trainer=trainer)
    if args.tokenizer_adds_bos:
        # Llama/Gemma-style: encode() prepends BOS. lm_eval >= 0.4.10 then keeps
        # that BOS in the scored tokens (and still prefixes its own BOS).
        from tokenizers import processors

        bpe.post_processor = processors.TemplateProcessing(
            single=f"{EOT} $A", special_tokens=[(EOT, bpe.token_to_id(EOT))]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=None,
        model_max_length=args.max_position_embeddings,
    )
    eot_id = tok.convert_tokens_to_ids(EOT)

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.max_position_embeddings,
        initializer_range=args.init_std,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.config.dtype = torch.float32
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)

    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "model_dir": str(model_dir),
        "data": str(data_path),
        "documents": len(texts),
        "bytes": sum(count_bytes(t) for t in texts),
        "data_sha256": sha256_file(data_path),
        "weights_sha256": sha256_file(model_dir / "model.safetensors"),
        "tokenizer_sha256": sha256_file(model_dir / "tokenizer.json"),
        "params": n_params,
        "vocab_size": len(tok),
        "config": {
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "layers": args.layers,
            "heads": args.heads,
            "max_position_embeddings": args.max_position_embeddings,
            "init_std": args.init_std,
            "seed": args.seed,
            "tokenizer_adds_bos": args.tokenizer_adds_bos,
        },
    }
    print(json.dumps(info))
    return 0


# --------------------------------------------------------------------------- #
# bare forward-pass baseline
# --------------------------------------------------------------------------- #
def cmd_bare(args) -> int:
    t_start = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    t_imported = time.perf_counter()

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    t_loaded = time.perf_counter()

    texts = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])

    # lm_eval: prefix = BOS if defined else EOS; tok_encode -> tokenizer.encode(s)
    # with the tokenizer's default add_special_tokens (=True). For the default
    # benchmark tokenizer (no post-processor) this adds nothing.
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    windows = []  # (doc_idx, input_ids, target_ids)
    n_tokens = 0
    for d, text in enumerate(texts):
        ids = tok.encode(text)
        if d == 0 and ids != tok.encode(text, add_special_tokens=False):
            print("note: tokenizer adds special tokens; lm_eval >= 0.4.10 keeps "
                  "(and scores) them, so this baseline does too", file=sys.stderr)
        n_tokens += len(ids)
        for inp, tgt in lmeval_windows(ids, prefix, args.window):
            windows.append((d, inp, tgt))
    t_prepared = time.perf_counter()

    # Physical limit: sort all windows globally by length (minimal padding),
    # right-pad (causal => padding never influences real positions).
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][1]))
    doc_ll = [0.0] * len(texts)
    forward_s = 0.0
    bs = args.batch_size
    with torch.inference_mode():
        t_loop0 = time.perf_counter()
        for b in range(0, len(order), bs):
            idx = order[b : b + bs]
            width = len(windows[idx[0]][1])
            batch = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                inp = windows[i][1]
                batch[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            t0 = time.perf_counter()
            logits = model(batch).logits
            forward_s += time.perf_counter() - t0
            if args.no_score:
                continue
            for r, i in enumerate(idx):
                d, inp, tgt = windows[i]
                n = len(tgt)
                lp = torch.log_softmax(logits[r, len(inp) - n : len(inp)], dim=-1)
                doc_ll[d] += float(
                    lp.gather(1, torch.tensor(tgt).unsqueeze(1)).sum()
                )
        loop_s = time.perf_counter() - t_loop0

    total_ll = sum(doc_ll)
    words = sum(count_words(t) for t in texts)
    nbytes = sum(count_bytes(t) for t in texts)
    res = {
        "tool": "bare",
        "documents": len(texts),
        "tokens": n_tokens,
        "windows": len(windows),
        "window": args.window,
        "batch_size": bs,
        "forward_s": forward_s,
        "loop_s": loop_s,
        "import_s": t_imported - t_start,
        "load_s": t_loaded - t_imported,
        "prepare_s": t_prepared - t_loaded,
        "torch_threads": torch.get_num_threads(),
    }
    if not args.no_score:
        res.update(
            {
                "loglikelihood": total_ll,
                "token_perplexity": math.exp(-total_ll / n_tokens),
                "word_perplexity": math.exp(-total_ll / words),
                "byte_perplexity": math.exp(-total_ll / nbytes),
                "bits_per_byte": -total_ll / nbytes / math.log(2),
                "words": words,
                "bytes": nbytes,
            }
        )
    print(json.dumps(res))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build")
    b.add_argument("--out-dir", required=True)
    b.add_argument("--docs", type=int, default=None, help="first N topics (sorted keys); default all")
    b.add_argument("--seed", type=int, default=1234)
    b.add_argument("--vocab-size", type=int, default=8192)
    b.add_argument("--hidden", type=int, default=256)
    b.add_argument("--intermediate", type=int, default=768)
    b.add_argument("--layers", type=int, default=10)
    b.add_argument("--heads", type=int, default=8)
    b.add_argument("--max-position-embeddings", type=int, default=512)
    b.add_argument("--init-std", type=float, default=0.05)
    b.add_argument("--tokenizer-adds-bos", action="store_true",
                   help="tokenizer post-processor prepends <|endoftext|> (Llama-style)")

    r = sub.add_parser("bare")
    r.add_argument("--model", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--window", type=int, default=512)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--no-score", action="store_true",
                   help="skip log_softmax/gather (pure forward passes)")

    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.cmd == "build":
        return cmd_build(args)
    return cmd_bare(args)


if __name__ == "__main__":
    sys.exit(main())
