"""The ``steadylm`` command: parse arguments, call the library, map `SteadyError` to exit 2.

Thin on purpose: every command is a library call (`steadylm.train.loop.train`,
`steadylm.evaluate.perplexity.evaluate_perplexity`, `steadylm.demo.run_demo`). Heavy imports
(torch, transformers) happen inside the commands, so ``steadylm --help`` is instant. One module
per command family adds its commands, each with ``set_defaults(func=...)``; the flags several
commands share are declared once, as argument groups, in `steadylm.cli.options`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..errors import SteadyError
from . import ensemble, evaluate, human, report, study, train
from .options import Parser

#: what adds each command, in the order ``steadylm --help`` lists them
COMMANDS = (train.add_demo, train.add_train, evaluate.add_eval, evaluate.add_compare, train.add_plot, evaluate.add_perturb,
            ensemble.add_soup, ensemble.add_ensemble, report.add_report, human.add_human, study.add_sweep, train.add_presets)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="steadylm", description="Keep large language models steady, and prove it with numbers.")
    p.add_argument("--version", action="version", version=f"steadylm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return p


def _quiet_libraries() -> None:
    """steadylm draws its own progress bars; silence transformers' and hub's tqdm bars."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the try, not at interpreter exit
        return rc
    except SteadyError as e:
        sys.stderr.write(f"steadylm: error: {e}\n")
        return 2
    except BrokenPipeError:
        # the reader went away (`steadylm perturb ... | head`): stop quietly, as cat does
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:  # a last resort (a full disk, a read-only folder): the commands check what they can first
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"steadylm: error: {where}{e.strerror or e}\n")
        return 2
    except KeyboardInterrupt:
        if args.command == "train":
            sys.stderr.write("steadylm: interrupted; finished checkpoints are kept (continue with --resume)\n")
        else:
            sys.stderr.write("steadylm: interrupted; finished work is kept (run the same command again to resume)\n")
        return 130

