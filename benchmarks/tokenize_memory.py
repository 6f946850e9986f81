#!/usr/bin/env python3
"""Peak memory of tokenizing fine-tuning data: a 20 MB and a 200 MB chat JSONL, and one 50 MB line.

Issue 11 asks that large files are streamed: the peak memory of tokenizing a 200 MB JSONL stays
flat (the ratio to a 20 MB file near 1), and a single 50 MB line is refused without a memory
blow-up. `steadylm.data.sft.load_sft` reads the file line by line, renders and tokenizes it in
chunks, and appends ids and loss flags to unlinked temporary files it memory-maps afterwards.

How it is measured
------------------
The parent writes the inputs into a temporary folder (chat records in OpenAI's ``messages`` form,
two turns each, text cut from CPython's pydoc topics so that every record differs) and saves a
byte-level BPE with ChatML specials and SmolLM2-135M-Instruct's chat template beside them. Each
input is then read by a fresh subprocess (this script with ``--child``): it imports steadylm,
torch and transformers and loads the tokenizer, reads its RSS (the *loaded* baseline), runs
``load_sft`` (tokenize, then pack into rows of ``--context`` tokens) and reads ``VmHWM`` from
/proc/self/status - the peak RSS of the process. Reported per input: the peak, the baseline, the
part above it, examples and tokens; then the 200 MB / 20 MB ratio of the peaks (the headline) and
of the parts above the baseline. The 50 MB line must end in steadylm's one-line refusal.

Linux only (``/proc``). Example::

    .venv/bin/python benchmarks/tokenize_memory.py --out benchmarks/out/tokenize_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers, however this file is loaded
from _memory import status_kib  # noqa: E402

MB = 1_000_000
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def child(args) -> None:
    from steadylm.data.sft import load_sft
    from steadylm.data.tokenizer import load_tokenizer
    from steadylm.errors import SteadyError

    tok = load_tokenizer(args.tokenizer)
    baseline = status_kib("VmRSS")
    out = {"baseline_kib": baseline}
    try:
        train, _ = load_sft(args.child, tok, context=args.context, seed=0, val_fraction=0.0, folder=args.tmp)
        out.update(examples=train.report.examples, tokens=train.report.tokens, rows=train.report.rows,
                   padding_share=train.report.padding_share)
    except SteadyError as e:
        out["error"] = str(e)
    out["peak_kib"] = status_kib("VmHWM")
    print(json.dumps(out))


def write_chat_jsonl(path: Path, size: int, texts: list[str]) -> int:
    """Chat records until ``size`` bytes; returns the number of records."""
    n = written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            t = texts[n % len(texts)]
            cut = (n * 7919) % max(1, len(t) - 1500)
            record = {"messages": [{"role": "user", "content": f"#{n}: explain this. " + t[cut:cut + 500]},
                                   {"role": "assistant", "content": t[cut + 500:cut + 1500]}]}
            line = json.dumps(record, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            n += 1
    return n


def run_child(path: Path, tok_dir: Path, tmp: Path, context: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), "--tokenizer", str(tok_dir), "--tmp", str(tmp),
                           "--context", str(context)], capture_output=True, text=True, check=False,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="true"))
    if proc.returncode:
        sys.exit(f"child for {path.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--context", type=int, default=2048, help="tokens per row (default 2048)")
    ap.add_argument("--sizes", default="20,200", help="JSONL sizes in MB (default 20,200)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.child:
        return child(args)

    from steadylm.data.sources import load_documents
    from steadylm.data.tokenizer import train_bpe

    texts = [d for d in load_documents("builtin:pydoc").documents if len(d) > 2000]
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"context": args.context, "python": sys.version.split()[0], "inputs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_bpe(texts[:50], 4096)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.eos_token = "<|im_end|>"
        tok.chat_template = SMOL_TEMPLATE
        tok.save_pretrained(tmp / "tokenizer")
        for mb in sizes:
            path = tmp / f"chat_{mb}mb.jsonl"
            records = write_chat_jsonl(path, mb * MB, texts)
            r = run_child(path, tmp / "tokenizer", tmp, args.context)
            r.update(file_bytes=path.stat().st_size, records=records)
            results["inputs"][f"{mb}MB"] = r
            path.unlink()
            print(f"{mb:>4} MB: {records:>7} records, {r['tokens']:>10} tokens, peak RSS {r['peak_kib'] / 1024:7.1f} MiB "
                  f"(loaded {r['baseline_kib'] / 1024:6.1f} MiB, above it {(r['peak_kib'] - r['baseline_kib']) / 1024:6.1f} MiB), "
                  f"padding {r['padding_share']:.1%}", flush=True)
        line = tmp / "one_line.jsonl"
        with open(line, "w", encoding="utf-8") as f:
            f.write('{"text": "' + "x" * (50 * MB) + '"}\n')
        r = run_child(line, tmp / "tokenizer", tmp, args.context)
        results["inputs"]["one 50MB line"] = r
        print(f"one 50 MB line: peak RSS {r['peak_kib'] / 1024:.1f} MiB (loaded {r['baseline_kib'] / 1024:.1f} MiB): "
              f"{r.get('error', 'accepted')}")
    if len(sizes) >= 2:
        small, big = (results["inputs"][f"{s}MB"] for s in (sizes[0], sizes[-1]))
        results["peak_ratio"] = big["peak_kib"] / small["peak_kib"]
        results["above_baseline_ratio"] = (big["peak_kib"] - big["baseline_kib"]) / max(1, small["peak_kib"] - small["baseline_kib"])
        print(f"peak RSS {sizes[-1]} MB / {sizes[0]} MB: {results['peak_ratio']:.3f} "
              f"(above the loaded baseline: {results['above_baseline_ratio']:.2f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
