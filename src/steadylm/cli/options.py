"""The argument groups several commands share, each declared once: the backend (which model, and how
a local one runs), the endpoint (how an ``openai:`` model is called), the prompts, decoding, and
output. A command adds a group with one call and adds its own flags to the group returned, so
``--help`` lists them together; the functions below turn a group's flags back into library calls.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError, SteadyError
from ..fsutil import to_json
from ..runtime import check_threads


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``steadylm: error: ...`` and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"steadylm: error: {self.prog.removeprefix('steadylm').strip() + ': ' if self.prog != 'steadylm' else ''}{message}\n")
        sys.exit(2)


def timeout_arg(text: str) -> float:
    """``--timeout``: checked as the endpoint backend checks it, when the flag is parsed, so every
    command refuses ``inf``, ``nan`` or 0 even where no endpoint is opened."""
    from ..evaluate.backends.openai import check_timeout

    try:
        return check_timeout(text)
    except SteadyError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--timeout ")) from None  # argparse names the flag


def threads_arg(text: str) -> int:
    """The type of every ``--threads``: an integer from 1 to this machine's CPU count (`check_threads`)."""
    try:
        return check_threads(int(text) if text.strip().lstrip("+-").isdigit() else text, what="")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None  # argparse names the flag


DTYPES = ("float32", "bfloat16", "float16")


def backend_group(p: argparse.ArgumentParser) -> Any:
    return p.add_argument_group("backend", "the model, and how a local one runs")


def add_local_args(g: Any) -> None:
    """``--dtype``, ``--threads``, ``--trust-remote-code``: how every command that loads a local
    model loads it."""
    g.add_argument("--dtype", default="float32", choices=list(DTYPES), help="local models: compute dtype (default: float32)")
    g.add_argument("--threads", type=threads_arg, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")


def add_backend_args(p: argparse.ArgumentParser, *, endpoint: bool = True) -> Any:
    """``--model`` (any spec `open_backend` takes) and how a local model generates; with
    ``endpoint``, the endpoint group too. Returns the backend group."""
    g = backend_group(p)
    g.add_argument("--model", required=True, help="a local HF causal-LM folder or .gguf file, openai:http://HOST:PORT/v1#MODEL_NAME, or "
                                                  "ensemble:DIR1,DIR2[#logprob] (token-level average of local models)")
    g.add_argument("--batch-size", type=int, default=64, help="local models: rows per generate call (default: 64)")
    add_local_args(g)
    g.add_argument("--truncate-left", action="store_true", help="cut prompts longer than the context from the left instead of refusing")
    if endpoint:
        add_endpoint_args(p)
    return g


def add_endpoint_args(p: argparse.ArgumentParser, *, concurrency: int = 8) -> Any:
    """How requests to an OpenAI-compatible endpoint are sent (`endpoint_options` reads them back)."""
    g = p.add_argument_group("endpoint", "openai: models only: how requests are sent")
    g.add_argument("--concurrency", type=int, default=concurrency, help=f"requests in flight (default: {concurrency})")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the key (default: OPENAI_API_KEY; local servers need none)")
    g.add_argument("--timeout", type=timeout_arg, default=60.0,
                   help="seconds one request may take in all (connect, headers, body) before it is retried (default: 60)")
    g.add_argument("--max-retries", type=int, default=6, help="retries on 429/5xx/timeouts/garbage (default: 6)")
    g.add_argument("--sampling-fields", choices=("extended", "standard"), default="extended",
                   help="extended: also send top_k/min_p/repeat_penalty/repetition_penalty at neutral values, so "
                        "llama.cpp/vLLM/SGLang defaults never apply; standard: OpenAI's own fields only "
                        "(api.openai.com) (default: extended)")
    return g


def add_prompts_args(p: argparse.ArgumentParser, *, builtin: int) -> Any:
    """``--prompts`` and how many a built-in source draws (`steadylm.evaluate.prompts.load_prompts`)."""
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", default="builtin",
                   help="a JSONL prompt file, 'builtin' (held-out built-in corpus) or builtin:SOURCE (default: builtin)")
    g.add_argument("--builtin-prompts", type=int, default=builtin, help=f"how many prompts a built-in source draws (default: {builtin})")
    g.add_argument("--prompt-format", choices=("text", "chat"), default="text",
                   help="how 'prompt' items and built-in prompts reach the model: text to continue (default), or chat: "
                        "one user turn through the model's chat template, as 'messages' items always are (for instruct "
                        "models)")
    return g


def add_decoding_args(p: argparse.ArgumentParser, *, temperature: float | None = 1.0, max_new_tokens: int = 64,
                      seeds: bool = True) -> Any:
    """The `DecodingSettings` flags (`decoding_settings` reads them back) and, with ``seeds``,
    ``--seeds``. ``temperature`` None: the command sweeps temperature and top-p itself."""
    g = p.add_argument_group("decoding")
    if temperature is not None:
        g.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default: {temperature})")
        g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0 = off)")
    g.add_argument("--top-k", type=int, default=0, help="top-k sampling (default: 0 = off)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"tokens to generate per sample (default: {max_new_tokens})")
    if seeds:
        g.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    return g


def add_output_args(p: argparse.ArgumentParser, out: str | None, *, default: str | None = None, short: bool = False,
                    required: bool = False, metavar: str | None = None, json: str | None = None) -> Any:
    """``--out`` (``-o`` too with ``short``) with help ``out`` (None: no --out), and ``--json``
    with help ``json`` (None: no --json)."""
    g = p.add_argument_group("output")
    if out is not None:
        g.add_argument(*(("-o", "--out") if short else ("--out",)), default=default, required=required, metavar=metavar, help=out)
    if json is not None:
        g.add_argument("--json", action="store_true", help=json)
    return g


def add_bootstrap_arg(p: Any) -> None:
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (default: 1000)")


def use_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU thread count for this process, before a model loads."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def endpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """The endpoint group's flags, as `open_backend` takes them."""
    return {"api_key_env": args.api_key_env, "concurrency": args.concurrency, "timeout": args.timeout,
            "max_retries": args.max_retries, "sampling_fields": args.sampling_fields}


def local_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend group's flags for a local model, as `open_backend` takes them."""
    return {"dtype": args.dtype, "batch_size": args.batch_size, "threads": args.threads,
            "trust_remote_code": args.trust_remote_code, "truncate_left": args.truncate_left}


def open_model(args: argparse.Namespace) -> Any:
    """The backend ``--model`` names, opened with the backend (or endpoint) group's flags."""
    from ..evaluate.backends import open_backend

    if args.model.startswith("openai:"):
        return open_backend(args.model, **endpoint_options(args))
    use_threads(args.threads)
    return open_backend(args.model, **local_options(args))


def decoding_settings(args: argparse.Namespace) -> Any:
    from ..evaluate.backends import DecodingSettings

    return DecodingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens)


def print_summary(d: dict[str, Any], *, as_json: bool, title: str) -> None:
    """One result as JSON on stdout, or as a two-column table."""
    if as_json:
        print(to_json(d))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in d.items():
        t.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    Console().print(t)
