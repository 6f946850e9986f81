"""``steadylm soup`` (weight averaging) and ``steadylm ensemble select`` (one output per item)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..fsutil import to_json
from .options import Parser, add_output_args


def add_soup(sub: Any) -> None:
    sp = sub.add_parser("soup", help="average model weights: a run's newest K checkpoints (LAWA) or several model folders")
    sp.add_argument("sources", metavar="RUN_DIR|FOLDER", nargs="+",
                    help="one run folder with --last K, or model folders or .gguf files (e.g. RUN/model, RUN/model-ema, "
                         "fine-tunes, their base model's .gguf)")
    sp.add_argument("--last", type=int, default=None, metavar="K", help="average the run's newest K checkpoints")
    add_output_args(sp, "model folder to write (a new folder, or an earlier soup)", short=True, required=True)
    sp.set_defaults(func=cmd_soup)


def add_ensemble(sub: Any) -> None:
    ens = sub.add_parser("ensemble", help="output-level ensembles: pick one output per prompt by vote or MBR")
    enssub = ens.add_subparsers(dest="ensemble_command", metavar="ENSEMBLE", parser_class=Parser)
    enssub.required = True
    sel = enssub.add_parser("select", help="choose one output per item by majority vote of short answers or by MBR")
    sel.add_argument("--candidates", required=True, metavar="FILE.jsonl",
                     help='lines {"id": ..., "candidates": [...]}, or a generations.jsonl from eval generation')
    sel.add_argument("--method", default="vote", choices=["vote", "mbr"],
                     help="vote: most frequent short answer (self-consistency); mbr: minimum Bayes risk (default: vote)")
    sel.add_argument("--utility", default="chrf", choices=["chrf", "bleu"], help="MBR utility (default: chrf)")
    add_output_args(sel, "write the chosen outputs here (default: stdout)", short=True, metavar="FILE.jsonl")
    sel.set_defaults(func=cmd_select)


def cmd_soup(args: argparse.Namespace) -> int:
    from ..ensemble.soup import soup

    res = soup(args.sources, args.out, last=args.last)
    print(f"{res['method']} soup of {len(res['members'])} models:")
    for m in res["members"]:
        print(f"  {m}")
    print(f"-> {res['out']}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from ..evaluate.select import select_file
    from ..fsutil import check_out_file, write_text_atomic

    if args.out:
        check_out_file(args.out, "-o", inputs=[args.candidates])
    rows = select_file(args.candidates, method=args.method, utility=args.utility)
    text = "".join(to_json(r) + "\n" for r in rows)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"{len(rows)} chosen outputs -> {args.out}")
    else:
        sys.stdout.write(text)
    return 0
