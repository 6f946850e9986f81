"""Prompts per second of each perturbation, against the 10,000 prompts/s target, in one run.

The prompts are CPython's ``pydoc_data.topics`` prose (the built-in corpus), whitespace-collapsed and
cut at word boundaries into pieces of about 200 characters (about 2,000 of them); the first ``--n``
are used. On that English prose ``zh-punct`` and ``zh-char`` find next to nothing to act on, so they
are timed a second time (rows ``zh-punct/zh``, ``zh-char/zh``) on as many ~200-character pieces of a
fixed Chinese paragraph. Each kind
runs at its default rate over all of them, each prompt with its own seeded generator, exactly as
``compose(kind)(text, index)`` does in an evaluation (so the generator's construction is counted).
The figure is the best of ``--repeats`` timed passes (the least disturbed by other processes), after
one warm-up pass, which also loads MiniLM's embeddings for ``synonym`` and fills its neighbour cache
for these prompts; the warm-up's own rate is shown as ``first pass`` (for ``synonym``: cold cache,
model load included). The 10,000/s target is for the character-level kinds (marked ``char``); the
word-level ones are shown against it too.

    python benchmarks/perturb_speed.py [--n 2000] [--repeats 3] [--out FILE.json]

Single-threaded (pure Python), so one core is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from steadylm import __version__
from steadylm.evaluate.perturb import PERTURBATIONS, compose

TARGET = 10_000.0
CHAR_LEVEL = ("typo", "swap", "insert", "delete", "ocr", "whitespace", "punctuation", "zh-punct", "zh-char")
ZH_PARAGRAPH = (
    "大语言模型的稳定性是指模型在不同输入、不同环境下表现的一致性和可靠性。梯度裁剪通过限制梯度的范数来防止梯度爆炸，"
    "从而提高训练的稳定性。“权重衰减”（weight decay）把参数拉向零；学习率预热则让优化器在最初几百步里小心前进。"
    "评测时，我们对同一个问题加入错别字、标点变化和繁简转换，看模型的回答是否依然一致。"
)


def prompts(n: int, size: int = 200) -> list[str]:
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        words = re.split(r"\s+", topics[key].strip())
        cur: list[str] = []
        length = 0
        for w in words:
            cur.append(w)
            length += len(w) + 1
            if length >= size:
                out.append(" ".join(cur))
                cur, length = [], 0
                if len(out) == n:
                    return out
    return out


def zh_prompts(n: int, size: int = 200) -> list[str]:
    text = ZH_PARAGRAPH * (size // len(ZH_PARAGRAPH) + 2)
    return [text[(i * 37) % len(ZH_PARAGRAPH):][:size] for i in range(n)]


def time_kind(kind: str, texts: list[str], repeats: int) -> tuple[float, float]:
    f = compose(kind)
    t0 = time.perf_counter()
    for i, t in enumerate(texts):  # warm-up (and model load for synonym)
        f(t, i)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i, t in enumerate(texts):
            f(t, i)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / first, len(texts) / best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=2000, help="prompts (default 2000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per kind; the best counts (default 3)")
    ap.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    texts = prompts(args.n)
    zh = zh_prompts(len(texts))
    mean_len = sum(map(len, texts)) / len(texts)
    rows = []
    runs = [(k, k, texts) for k in PERTURBATIONS] + [(f"{k}/zh", k, zh) for k in ("zh-punct", "zh-char")]
    for label, kind, batch in runs:
        first, rate = time_kind(kind, batch, args.repeats)
        level = "char" if kind in CHAR_LEVEL else "word/text"
        rows.append({"kind": label, "level": level, "default_rate": PERTURBATIONS[kind].default_rate,
                     "first_pass_per_s": round(first, 1), "prompts_per_s": round(rate, 1),
                     "ratio_to_target": round(rate / TARGET, 2)})

    print(f"steadylm {__version__} perturbation speed: {len(texts)} prompts of {mean_len:.0f} chars (pydoc_data.topics), "
          f"one core, best of {args.repeats}; target {TARGET:,.0f} prompts/s")
    print(f"{'kind':<12} {'level':<9} {'rate':>5} {'first pass':>11} {'prompts/s':>11} {'x target':>9}")
    for r in rows:
        flag = "" if r["level"] != "char" or r["ratio_to_target"] >= 1 else "  BELOW TARGET"
        print(f"{r['kind']:<12} {r['level']:<9} {r['default_rate']:>5g} {r['first_pass_per_s']:>11,.0f} "
              f"{r['prompts_per_s']:>11,.0f} {r['ratio_to_target']:>9.2f}{flag}")
    slowest = min((r for r in rows if r["level"] == "char"), key=lambda r: r["prompts_per_s"])
    print(f"slowest character-level kind: {slowest['kind']} at {slowest['ratio_to_target']:.2f}x the target")

    if args.out:
        res = {"steadylm": __version__, "python": sys.version.split()[0], "machine": platform.machine(),
               "prompts": len(texts), "mean_chars": round(mean_len, 1), "repeats": args.repeats,
               "target_prompts_per_s": TARGET, "results": rows}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
