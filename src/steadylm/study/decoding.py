"""``steadylm sweep decoding``: a temperature x top-p grid of ``eval generation`` runs.

Decoding settings trade stability against diversity, and both against accuracy: greedy decoding
gives the same answer every time (self-BLEU 100) with little variety, while hotter sampling is
more diverse and, past some point, less accurate. Each cell of the grid is one
`steadylm.evaluate.generation.GenerationEval` in ``DIR/cells/<cell>/`` (its own ``results.json``,
``generations.jsonl`` and cache, so running the same command again resumes), and the sweep traces

* **consistency** - pairwise self-BLEU, self-chrF and semantic similarity (all-MiniLM-L6-v2)
  among the K samples of a prompt (``consistency.across_samples``);
* **diversity** - corpus distinct-1/2 over all outputs, seq-rep-4 and the share caught in a loop;
* **accuracy** - corpus chrF and BLEU (sacrebleu) of sample 0 against the prompts' references.

Temperature 0 is greedy, where top-p has no effect, so it is one cell whatever ``--top-ps`` says.
The determinism checks of ``eval generation`` are left out here (they do not depend on the
sampling settings being swept). Outputs: ``decoding_sweep.json`` and ``decoding_sweep.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import ConfigError
from ..fsutil import finite, write_json_atomic
from .sweep import prepare_out, slug

DEFAULT_TEMPERATURES = (0.0, 0.7, 1.0)
DEFAULT_TOP_PS = (1.0, 0.9)


def decoding_cells(temperatures: Sequence[float], top_ps: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(name, temperature, top_p)`` per cell; temperature 0 once, with top-p 1."""
    for t in temperatures:
        if t < 0:
            raise ConfigError(f"--temperatures: {t:g} must be zero or more")
    for p in top_ps:
        if not 0 < p <= 1:
            raise ConfigError(f"--top-ps: {p:g} must be in (0, 1]")
    cells = []
    for t in temperatures:
        if t == 0:
            cells.append(("T0-greedy", 0.0, 1.0))
            continue
        for p in top_ps:
            cells.append((f"T{slug(t)}-p{slug(p)}", float(t), float(p)))
    return cells


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def cell_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The traced numbers of one ``results.json``."""
    samples = results.get("consistency", {}).get("across_samples", {})
    seeds = results.get("consistency", {}).get("across_seeds", {})
    deg = results.get("degeneration", {})
    ref = results.get("reference", {})
    return {
        "self_bleu": _get(samples, "self_bleu", "mean"),
        "self_chrf": _get(samples, "self_chrf", "mean"),
        "semantic": _get(samples, "semantic", "mean"),
        "self_bleu_ci": [_get(samples, "self_bleu", "ci_low"), _get(samples, "self_bleu", "ci_high")],
        "seeds_self_bleu": _get(seeds, "self_bleu", "mean"),
        "seeds_semantic": _get(seeds, "semantic", "mean"),
        "distinct_1": deg.get("distinct_1"),
        "distinct_2": deg.get("distinct_2"),
        "seq_rep_4": deg.get("seq_rep_4"),
        "loop_share": deg.get("loop_share"),
        "chrf": _get(ref, "chrf", "score"),
        "bleu": _get(ref, "bleu", "score"),
        "relevance": _get(results, "relevance", "prompt_response", "mean"),
    }


def run_decoding_sweep(model: str, out: str, *, temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                       top_ps: Sequence[float] = DEFAULT_TOP_PS, prompts: str = "builtin", n_builtin: int = 16,
                       samples: int = 4, seeds: Sequence[int] = (0,), max_new_tokens: int = 32, top_k: int = 0,
                       bootstrap: int = 1000, backend_kw: dict[str, Any] | None = None,
                       progress: bool = True, prompt_format: str = "text") -> dict[str, Any]:
    """Run (or resume) the grid; returns ``decoding_sweep.json``'s content."""
    from ..evaluate.backends import DecodingSettings, open_backend
    from ..evaluate.generation import GenerationEval, GenerationEvalConfig
    from ..evaluate.prompts import load_prompts, prompts_label
    from ..progress import progress_enabled

    cells = decoding_cells(temperatures, top_ps)
    if samples < 2:
        raise ConfigError("--samples must be at least 2: consistency compares samples of one prompt")
    configs = {name: GenerationEvalConfig(
        prompts=prompts_label(prompts, prompt_format), samples=samples, seeds=tuple(seeds), n_builtin=n_builtin,
        decoding=DecodingSettings(temperature=t, top_p=p, top_k=top_k, max_new_tokens=max_new_tokens),
        determinism=False, environments=False, bootstrap=bootstrap) for name, t, p in cells}
    items = load_prompts(prompts, n_builtin=n_builtin, prompt_format=prompt_format)
    outp = Path(out)
    backend = open_backend(model, **(backend_kw or {}))
    try:
        lock = prepare_out(outp, "decoding")  # one sweep per folder, until it ends
    except BaseException:
        backend.close()
        raise
    with lock:
        try:
            write_json_atomic(outp / "plan.json", {"kind": "decoding", "steadylm": __version__, "model": model,
                                                   "cells": [c[0] for c in cells]})
            from rich.console import Console

            console = Console(stderr=True)
            rows = []
            t0 = time.perf_counter()
            signature = None
            for i, (name, t, p) in enumerate(cells, 1):
                if progress and progress_enabled():
                    console.print(f"[bold]decoding sweep[/] {i}/{len(cells)}: temperature {t:g}, top-p {p:g}")
                ev = GenerationEval(backend, items, configs[name], outp / "cells" / name, progress=progress)
                try:
                    res = ev.run()
                finally:
                    ev.close()
                signature = signature or res["signature"]
                rows.append({"cell": name, "temperature": t, "top_p": p, **cell_metrics(res),
                             "results": str(outp / "cells" / name / "results.json"),
                             "signature": res["signature"]["string"]})
        finally:
            backend.close()
        sig = dict(signature or {})
        sig.pop("decoding", None)
        sig.pop("string", None)
        sig.update(model=model, temperatures=list(temperatures), top_ps=list(top_ps), top_k=top_k,
                   max_new_tokens=max_new_tokens, determinism="not measured in a decoding sweep",
                   consistency="across the K samples of each prompt under the first seed",
                   reference="corpus chrF/BLEU of sample 0 of the first seed")
        result = finite({"cells": rows, "signature": sig, "factors": {"temperature": list(temperatures), "top_p": list(top_ps)},
                         "seconds": time.perf_counter() - t0})
        write_json_atomic(outp / "decoding_sweep.json", result)
        from .plots import plot_decoding_sweep

        plot_decoding_sweep(result, outp / "decoding_sweep.png")
        return result


def print_decoding_sweep(result: dict[str, Any], out: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(soft_wrap=True, width=200)
    f = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    t = Table(title="decoding sweep: consistency vs diversity vs reference score")
    for col in ("temperature", "top-p", "self-BLEU", "semantic", "distinct-1", "distinct-2", "loops", "chrF", "BLEU"):
        t.add_column(col, justify="right")
    for c in result["cells"]:
        t.add_row(f"{c['temperature']:g}", "-" if c["temperature"] == 0 else f"{c['top_p']:g}", f(c["self_bleu"], 1),
                  f(c["semantic"]), f(c["distinct_1"]), f(c["distinct_2"]), f(c["loop_share"], 2), f(c["chrf"], 1),
                  f(c["bleu"], 1))
    console.print(t)
    out = Path(out)
    console.print(f"results: {out / 'decoding_sweep.json'}  plot: {out / 'decoding_sweep.png'}  cells: {out / 'cells'}/")


__all__ = ["DEFAULT_TEMPERATURES", "DEFAULT_TOP_PS", "cell_metrics", "decoding_cells", "print_decoding_sweep",
           "run_decoding_sweep"]
