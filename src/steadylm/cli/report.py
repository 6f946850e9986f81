"""``steadylm report``: one HTML page (and a Markdown summary) over runs and results."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_output_args


def add_report(sub: Any) -> None:
    rp = sub.add_parser("report", help="one self-contained HTML report (and a Markdown summary) over runs and results")
    rp.add_argument("inputs", nargs="+", metavar="RUN_OR_RESULT",
                    help="training run folders, demo folders, eval results folders or results.json, sweep.json, human.json, "
                         "eval perplexity --json output")
    rp.add_argument("--title", default=None, help="page title (default: steadylm report)")
    out = add_output_args(rp, "the HTML file to write (default: report.html)", default="report.html", short=True)
    out.add_argument("--md", default=None, metavar="FILE.md", help="also write a Markdown summary for pull requests")
    rp.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import build_report

    res = build_report(args.inputs, args.out, md=args.md, title=args.title)
    print(res["html"])
    if res["md"]:
        print(res["md"])
    return 0
