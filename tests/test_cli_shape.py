"""The shape of the ``steadylm`` parser: every command dispatches through ``set_defaults(func=...)``,
the flags several commands share are declared once (as argument groups in `steadylm.cli.options`),
and each command's flag set is pinned, so a refactoring that drops or adds a flag fails here."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from steadylm import cli
from steadylm.config import train_options


def _parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command words, parser)`` for the root and every (sub)command."""
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _parsers(sp, path + (name,))


PARSERS = {" ".join(path): p for path, p in _parsers(cli.build_parser())}


def _has_required_subcommand(p: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) and a.required for a in p._actions)


def _minimal_argv(p: argparse.ArgumentParser) -> list[str]:
    """The command's required arguments, each given a placeholder."""
    argv = []
    for a in p._actions:
        if not a.option_strings and a.nargs not in ("?", argparse.PARSER) and not isinstance(a, argparse._SubParsersAction):
            argv.append("X")
        elif a.option_strings and a.required:
            argv += [a.option_strings[-1], "X"]
    return argv


#: positional names and flags of every command but train (pinned from the parser before the move)
FLAGS = {
    "": "--version",
    "compare": "run_a run_b --json",
    "demo": "--out --steps",
    "ensemble": "",
    "ensemble select": "--candidates --method --out --utility -o",
    "eval": "",
    "eval generation": "--api-key-env --batch-size --bootstrap --builtin-prompts --concurrency --determinism-prompts "
                       "--determinism-runs --dtype --json --max-new-tokens --max-retries --model --nli-model --no-determinism "
                       "--no-environments --out --prompt-format --prompts --samples --sampling-fields --seeds --temperature --threads --timeout --top-k --top-p "
                       "--truncate-left --trust-remote-code",
    "eval perplexity": "--add-special-tokens --batch-size --data --dtype --json --model --stride --threads --trust-remote-code --window",
    "eval robustness": "--adv-items --api-key-env --batch-size --bootstrap --budget --builtin-prompts --concurrency --dtype --json "
                       "--kinds --max-new-tokens --max-retries --model --ood --out --prompt-format --prompts --queries --rate --samples --sampling-fields --seed "
                       "--temperature --threads --timeout --top-k --top-p --truncate-left --trust-remote-code",
    "human": "",
    "human export": "results --max-prompts --out --per-prompt --seed --title -o",
    "human import": "files --bootstrap --json --key --out -o",
    "human judge": "results --api-key-env --bootstrap --concurrency --judge --max-new-tokens --max-prompts --max-retries --out "
                   "--per-prompt --sampling-fields --timeout -o",
    "perturb": "file --kind --list --rate --seed",
    "plot": "run_dir --out -o",
    "presets": "",
    "report": "inputs --md --out --title -o",
    "soup": "sources --last --out -o",
    "sweep": "--ablation --executor --json --keep-run-checkpoints --lrs --out --preset --recipes --seeds --set --steps --study "
             "--threads --workers",
    "sweep clip": "--confirm-seed --executor --json --lr --max-norms --out --preset --recipe --seed --set --steps --threads "
                  "--tolerance --workers",
    "sweep decoding": "--api-key-env --batch-size --bootstrap --builtin-prompts --concurrency --dtype --json --max-new-tokens "
                      "--max-retries --model --out --prompt-format --prompts --samples --sampling-fields --seeds --temperatures --threads "
                      "--timeout --top-k --top-ps --truncate-left --trust-remote-code",
    # train: its own flags plus one per config field (tests/test_options.py pins those)
    "train": " ".join(["--config --json --no-plots --out --overwrite --resume", *(o.flag for o in train_options())]),
}


def _flag_set(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction))
            for s in (a.option_strings or [a.dest])}


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_flag_set_is_pinned(command):
    assert _flag_set(PARSERS[command]) == set(FLAGS[command].split()), command


def test_every_command_is_pinned():
    assert set(PARSERS) == set(FLAGS)


@pytest.mark.parametrize("command", sorted(c for c, p in PARSERS.items() if c and not _has_required_subcommand(p)))
def test_every_command_dispatches_through_func(command):
    """Parsing any command sets ``func``, a ``cmd_*`` function of the cli package: no handler table."""
    args = cli.build_parser().parse_args([*command.split(), *_minimal_argv(PARSERS[command])])
    assert callable(args.func), command
    assert args.func.__module__.startswith("steadylm.cli.") and args.func.__name__.startswith("cmd_"), args.func


def test_a_subcommand_overrides_its_parents_func():
    """``sweep`` runs itself; ``sweep clip`` and ``sweep decoding`` run their own function."""
    p = cli.build_parser()
    funcs = {c: p.parse_args([*c.split(), *_minimal_argv(PARSERS[c])]).func.__name__
             for c in ("sweep", "sweep clip", "sweep decoding")}
    assert funcs == {"sweep": "cmd_sweep", "sweep clip": "cmd_clip", "sweep decoding": "cmd_decoding"}


#: the flags of the shared argument groups: (group title, flags, the commands that have the group)
GROUPS = [
    ("backend", "--model --batch-size --dtype --threads --trust-remote-code --truncate-left",
     ["eval generation", "eval robustness", "sweep decoding"]),
    ("backend", "--model --batch-size --dtype --threads --trust-remote-code", ["eval perplexity"]),
    ("endpoint", "--concurrency --api-key-env --timeout --max-retries --sampling-fields", ["eval generation", "eval robustness", "human judge", "sweep decoding"]),
    ("prompts", "--prompts --builtin-prompts --prompt-format", ["eval generation", "eval robustness", "sweep decoding"]),
    ("decoding", "--temperature --top-p --top-k --max-new-tokens", ["eval generation", "eval robustness"]),
    ("decoding", "--top-k --max-new-tokens --seeds", ["sweep decoding", "eval generation"]),
    ("output", "--out --json", ["eval generation", "eval robustness", "sweep", "sweep clip", "sweep decoding", "train"]),
    ("output", "--out", ["demo", "plot", "soup", "ensemble select", "report", "human export", "human import", "human judge"]),
]


def _group_of(p: argparse.ArgumentParser, flag: str) -> str:
    (title,) = [g.title for g in p._action_groups for a in g._group_actions if flag in a.option_strings]
    return title


@pytest.mark.parametrize("title, flags, commands", GROUPS, ids=[f"{t}:{c[0]}" for t, _, c in GROUPS])
def test_shared_flags_are_listed_in_their_group(title, flags, commands):
    """``--help`` shows the shared flags under the same heading in every command that has them."""
    for command in commands:
        assert {f: _group_of(PARSERS[command], f) for f in flags.split()} == dict.fromkeys(flags.split(), title), command


def test_shared_flags_check_their_values_the_same_way():
    """Every --threads and --timeout has the one type that checks it (so 0 or inf is refused as parsed)."""
    from steadylm.cli.options import threads_arg, timeout_arg

    types = {(c, s): a.type for c, p in PARSERS.items() for a in p._actions for s in a.option_strings
             if s in ("--threads", "--timeout")}
    assert len(types) == 11 and set(types.values()) == {threads_arg, timeout_arg}
    assert all(t is (threads_arg if s == "--threads" else timeout_arg) for (_, s), t in types.items())


#: a shared flag written in more than one ``add_argument`` call, and why
SECOND_DECLARATION = {
    "--model": "eval perplexity takes local models only",
    "--batch-size": "eval perplexity batches windows (default 8), not generate rows",
    "--threads": "sweep and sweep clip: threads per training run, not this process's",
    "--max-new-tokens": "human judge: the judge's answer length",
    "--seeds": "sweep: training seeds (default 0,1,2)",
}


def _declared(flag: str) -> int:
    """How many ``add_argument`` calls in the cli package's source write ``flag``."""
    n = 0
    for path in Path(cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                    and any(isinstance(c, ast.Constant) and c.value == flag for a in node.args for c in ast.walk(a))):
                n += 1
    return n


@pytest.mark.parametrize("flag", sorted({f for _, flags, _ in GROUPS for f in flags.split()} | {"-o", "--bootstrap"}))
def test_shared_flags_are_declared_once(flag):
    assert _declared(flag) == (2 if flag in SECOND_DECLARATION else 1), SECOND_DECLARATION.get(flag, flag)
