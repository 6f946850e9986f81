"""``steadylm report``: one self-contained HTML page (and a Markdown summary) over every run and result.

The page is a jinja2 template (``templates/report.html.j2``) filled with plain data built here:
plots are PNGs drawn by `report.plots` (and here, for the learning-rate sweep) and embedded as
``data:image/png;base64`` URIs; the CSS is inline; there is no script and no external request, so
the file can be mailed, attached to a pull request or opened offline years later.

Sections, with stable headings and ids (tests and links rely on them): Overview (``#overview``:
inputs, versions, signatures, warnings), Training (``#training``), LR sensitivity
(``#lr-sensitivity``), Evaluation (``#evaluation``), Robustness (``#robustness``), Ensembles
(``#ensembles``), Human ratings (``#human-ratings``), and Other results (``#other``, only when an
input is of a kind this module does not know: it is shown as key/value tables and tables, so new
result kinds never break the report). A section with no inputs says so.

Problems that should not stop a report are warnings in the Overview (and on stderr): inputs from
steadylm versions whose major.minor differ, a run without ``summary.json``, a plot that could not
be drawn, a file named by an input that is missing. An input that is none of the known kinds is a
`SteadyError` (exit 2) naming it (`report.inputs`).
"""

from __future__ import annotations

import base64
import io
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import __version__
from ..errors import SteadyError
from ..fsutil import check_out_file, write_text_atomic
from ..io import iter_jsonl
from .format import fmt, fmt_ci_n
from .inputs import Input, collect_inputs

__all__ = ["build_report", "SECTIONS"]

#: (id, heading) of the sections every report has, in order
SECTIONS = (("overview", "Overview"), ("training", "Training"), ("lr-sensitivity", "LR sensitivity"),
            ("evaluation", "Evaluation"), ("robustness", "Robustness"), ("ensembles", "Ensembles"),
            ("human-ratings", "Human ratings"))
NO_INPUTS = "No inputs of this kind."
_MAX_ROWS = 40        # rows of a generic table before "... more"
_MAX_TEXT = 4000      # characters of one verbatim cell before it is cut (with a note)
_PLOT_TITLES = {"loss": "Training loss (spikes and incidents marked)",
                "grad_norm": "Gradient norm with the clip threshold",
                "lr": "Learning rate", "z_loss": "z-loss", "update_ratio": "Update-to-weight ratio",
                "attention": "Attention logits and output log Z"}


# --------------------------------------------------------------------------- formatting


def _is_ci(d: Any) -> bool:
    return isinstance(d, dict) and "mean" in d and ("ci_low" in d or "n" in d) and \
        all(not isinstance(v, (dict, list)) for v in d.values())


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cell(v: Any) -> dict[str, Any]:
    """One table cell: ``{"text", "verbatim"}``; long or multi-line text is shown verbatim."""
    if _is_ci(v):
        return {"text": fmt_ci_n(v), "verbatim": False}
    if isinstance(v, str):
        text = v if len(v) <= _MAX_TEXT else v[:_MAX_TEXT] + f" … ({len(v) - _MAX_TEXT} more characters)"
        return {"text": text, "verbatim": len(v) > 60 or "\n" in v or v != v.strip()}
    if isinstance(v, (dict, list)):
        if isinstance(v, list) and all(_is_scalar(x) for x in v) and len(v) <= 12:
            return {"text": ", ".join(fmt(x) for x in v), "verbatim": False}
        s = json.dumps(v, ensure_ascii=False, default=str)
        return {"text": s if len(s) <= 300 else s[:300] + " …", "verbatim": True}
    return {"text": fmt(v), "verbatim": False}


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fig_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- generic rendering
# A node is a dict with "type": "kv" (rows of key, cell), "table" (columns, rows of cells, more),
# "text" (verbatim), "figure" (uri, alt, title) or "group" (title, children); the template draws them
# with one recursive macro.


def _flatten(d: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if _is_scalar(v) or _is_ci(v):
            out[key] = v
        elif isinstance(v, dict) and depth < 1 and v.get("measured") is not False:
            out.update(_flatten(v, key + ".", depth + 1))
        elif isinstance(v, dict) and v.get("measured") is False:
            out[key] = "not measured: " + str(v.get("reason", ""))
    return out


def _table_of_dicts(rows: Sequence[dict[str, Any]], first: str | None = None, names: Sequence[str] | None = None
                    ) -> dict[str, Any] | None:
    """A table node with one row per dict (its flattened scalar leaves as columns), or None when
    the dicts share too little to be one table."""
    flat = [_flatten(r) for r in rows]
    cols: dict[str, None] = {}
    for f in flat:
        cols.update(dict.fromkeys(f))
    if not cols or len(cols) > 18:
        return None
    columns = ([first] if first else []) + list(cols)
    body = []
    for i, f in enumerate(flat[:_MAX_ROWS]):
        body.append(([_cell(names[i])] if names else []) + [_cell(f.get(c)) if c in f else _cell(None) for c in cols])
    return {"type": "table", "columns": columns, "rows": body, "more": max(0, len(flat) - _MAX_ROWS)}


def generic(obj: Any, depth: int = 0, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Nodes that show any JSON value: scalars as key/value rows, lists of objects and objects of
    objects as tables, long text verbatim, deeper structure as nested groups."""
    skip = set(skip)
    if isinstance(obj, dict):
        if _is_ci(obj):
            return [{"type": "kv", "rows": [("value", _cell(obj))]}]
        kv, nested = [], []
        for k, v in obj.items():
            if k in skip:
                continue
            if k == "per_prompt" and isinstance(v, list):
                kv.append((k, _cell(f"{len(v)} per-prompt records (in the results file)")))
            elif _is_scalar(v) and not (isinstance(v, str) and ("\n" in v or len(v) > 200)) or _is_ci(v) \
                    or (isinstance(v, list) and all(_is_scalar(x) for x in v) and len(v) <= 12):
                kv.append((str(k), _cell(v)))
            elif isinstance(v, dict) and v.get("measured") is False:
                kv.append((str(k), _cell("not measured: " + str(v.get("reason", "")))))
            else:
                nested.append((str(k), v))
        nodes: list[dict[str, Any]] = [{"type": "kv", "rows": kv}] if kv else []
        for k, v in nested:
            if depth >= 4:
                nodes.append({"type": "group", "title": k, "children": [{"type": "text", "text": _cell(v)["text"]}]})
            else:
                nodes.append({"type": "group", "title": k, "children": generic(v, depth + 1)})
        return nodes
    if isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):
            t = _table_of_dicts(obj)
            if t is not None and all(all(_is_scalar(v) or _is_ci(v) or isinstance(v, dict) for v in x.values()) for x in obj):
                return [t]
            return [{"type": "group", "title": f"[{i}]", "children": generic(x, depth + 1)} for i, x in enumerate(obj[:_MAX_ROWS])]
        if all(_is_scalar(x) for x in obj):
            return [{"type": "kv", "rows": [("values", _cell(", ".join(fmt(x) for x in obj[:200])))]}]
        return [{"type": "group", "title": f"[{i}]", "children": generic(x, depth + 1)} for i, x in enumerate(obj[:_MAX_ROWS])]
    if isinstance(obj, str):
        return [{"type": "text", "text": obj}]
    return [{"type": "kv", "rows": [("value", _cell(obj))]}]


def _dict_table(d: dict[str, dict[str, Any]], first: str) -> list[dict[str, Any]]:
    """An object of objects (say per perturbation kind) as one table with a row per key."""
    t = _table_of_dicts(list(d.values()), first=first, names=list(d))
    return [t] if t is not None else generic(d)


def _safely(what: str, warnings: list[str], fn, fallback):
    """Tailored rendering of a result whose format may have moved on: on a surprise, the generic
    view and a warning, never a crash."""
    try:
        return fn()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        warnings.append(f"{what}: shown as plain tables ({type(e).__name__}: {e})")
        return fallback()


# --------------------------------------------------------------------------- training


def _training_entry(inp: Input, plot_dir: Path, warnings: list[str]) -> dict[str, Any]:
    from .plots import RunRecords, plot_run

    s = inp.data.get("summary") or {}
    cfg = inp.data.get("config") or {}
    facts = []
    for k in ("steps", "final_loss", "val_loss", "val_perplexity", "val_bits_per_byte", "incidents", "spikes",
              "nonfinite_steps", "skipped_steps", "rollbacks", "guard", "parameters", "tokens_seen", "seconds"):
        if k in s:
            facts.append((k.replace("_", " "), _cell(s[k])))
    setting = []
    for sec, keys in (("model", ("preset", "path")), ("data", ("source", "context")), ("optim", ("lr", "batch_size", "weight_decay")),
                      ("clip", ("method", "max_norm")), ("guard", ("action", "inject"))):
        block = cfg.get(sec) if isinstance(cfg.get(sec), dict) else {}
        for k in keys:
            if block.get(k) not in (None, [], ""):
                setting.append((f"{sec}.{k}", _cell(block[k])))
    for k in ("seed", "z_loss", "ema"):
        if cfg.get(k) not in (None, 0, 0.0):
            setting.append((k, _cell(cfg[k])))
    entry: dict[str, Any] = {"label": inp.label, "path": str(inp.path), "facts": facts, "settings": setting,
                             "signature": inp.signature, "plots": [], "incidents": [], "events": [], "clip": []}
    try:
        run = RunRecords(inp.path)
    except SteadyError as e:
        warnings.append(f"{inp.label}: no training curves ({e})")
        return entry
    n = len(run.steps)
    clipped = sum(1 for r in run.steps if r.get("clipped") is True)
    thr = [r["threshold"] for r in run.steps if _finite(r.get("threshold"))]
    gn = [r["grad_norm"] for r in run.steps if _finite(r.get("grad_norm"))]
    method = (cfg.get("clip") or {}).get("method") if isinstance(cfg.get("clip"), dict) else None
    clip = [("clip method", fmt(method)), ("steps clipped", f"{clipped} of {n} ({clipped / n:.1%})" if n else "-"),
            ("clip threshold (first / last / max)", " / ".join(fmt(x) for x in (thr[0], thr[-1], max(thr))) if thr else "-"),
            ("grad norm (median / max)", f"{fmt(sorted(gn)[len(gn) // 2])} / {fmt(max(gn))}" if gn else "-")]
    entry["clip"] = [(k, _cell(v)) for k, v in clip]
    for e in run.events:
        if e.get("event") == "incident":
            entry["incidents"].append([_cell(e.get("step")), _cell(e.get("kind")), _cell(e.get("value")),
                                       _cell(e.get("threshold")), _cell(e.get("action"))])
        else:
            detail = ", ".join(f"{k} {fmt(v)}" for k, v in e.items() if k not in ("step", "event", "batches"))
            entry["events"].append([_cell(e.get("step")), _cell(e.get("event")), _cell(detail)])
    try:
        paths = plot_run(inp.path, plot_dir)
    except SteadyError as e:
        warnings.append(f"{inp.label}: plots could not be drawn ({e})")
        paths = []
    for p in paths:
        entry["plots"].append({"title": _PLOT_TITLES.get(p.stem, p.stem), "uri": _png_uri(p), "alt": f"{p.stem} of {inp.label}"})
    return entry


# --------------------------------------------------------------------------- LR sensitivity


def _sweep_plot(recipes: dict[str, Any]) -> str | None:
    """Loss against learning rate per recipe: the recipe's curve (``curve``: mean capped loss over
    seeds, what LR sensitivity is computed from) as a line, each run's final loss as a dot, and
    diverged runs as crosses on the top edge."""
    from matplotlib.figure import Figure

    from .plots import RUN_COLORS

    fig = Figure(figsize=(10, 5), dpi=100)
    fig.subplots_adjust(left=0.08, right=0.74, bottom=0.11, top=0.9)
    ax = fig.subplots()
    any_point = False
    capped = False
    for i, (name, rec) in enumerate(recipes.items()):
        runs = [r for r in rec.get("runs") or [] if isinstance(r, dict) and _finite(r.get("lr"))]
        color = RUN_COLORS[i % len(RUN_COLORS)]
        ok = [(r["lr"], r["final_loss"]) for r in runs if _finite(r.get("final_loss"))]
        bad = sorted({r["lr"] for r in runs if not _finite(r.get("final_loss"))})
        if ok:
            ax.scatter([x for x, _ in ok], [y for _, y in ok], color=color, s=18, alpha=0.55, zorder=3)
        curve = [(c["lr"], c["loss"]) for c in rec.get("curve") or []
                 if isinstance(c, dict) and _finite(c.get("lr")) and _finite(c.get("loss"))]
        if curve:
            capped = True
        else:
            by_lr: dict[float, list[float]] = {}
            for x, y in ok:
                by_lr.setdefault(x, []).append(y)
            curve = [(x, sum(v) / len(v)) for x, v in sorted(by_lr.items())]
        if curve:
            any_point = True
            sens = rec.get("lr_sensitivity")
            ax.plot([x for x, _ in curve], [y for _, y in curve], color=color, linewidth=1.5, marker="o", markersize=4,
                    label=name + (f" (LR sensitivity {fmt(sens)})" if _finite(sens) else ""), zorder=4)
        if bad:
            any_point = True
            ax.scatter(bad, [0.97] * len(bad), transform=ax.get_xaxis_transform(), marker="x", s=50, color=color,
                       label=f"{name}: diverged", zorder=5, clip_on=False)
    if not any_point:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("min(final loss, loss at init), mean over seeds" if capped else "final loss, mean over seeds")
    ax.set_title("Loss against learning rate per recipe (dots: each run's final loss)", fontsize=10)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    return _fig_uri(fig)


def _seed_spread(rec: dict[str, Any], runs: list[dict[str, Any]], lrs: list[float]) -> Any:
    """The largest standard deviation across seeds of the loss at one learning rate."""
    ov = ((rec.get("seed_variance") or {}).get("overall") or {}) if isinstance(rec.get("seed_variance"), dict) else {}
    if "capped_loss_std_max" in ov:
        return ov["capped_loss_std_max"]
    spread = None
    for lr in lrs:
        ys = [r["final_loss"] for r in runs if r.get("lr") == lr and _finite(r.get("final_loss"))]
        if len(ys) >= 2:
            m = sum(ys) / len(ys)
            sd = math.sqrt(sum((y - m) ** 2 for y in ys) / (len(ys) - 1))
            spread = sd if spread is None else max(spread, sd)
    return spread


def _sweep_entry(inp: Input) -> dict[str, Any]:
    recipes = {k: v for k, v in inp.data["recipes"].items() if isinstance(v, dict)}
    base = "baseline" if "baseline" in recipes else next(iter(recipes), None)
    base_sens = recipes.get(base, {}).get("lr_sensitivity") if base else None
    rows, extra = [], []
    for name, rec in recipes.items():
        runs = [r for r in rec.get("runs") or [] if isinstance(r, dict)]
        lrs = sorted({r.get("lr") for r in runs if _finite(r.get("lr"))})
        seeds = sorted({r.get("seed") for r in runs if r.get("seed") is not None}, key=str)
        sens = rec.get("lr_sensitivity")
        rel = rec.get("relative_to") if isinstance(rec.get("relative_to"), dict) else {}
        if rel.get("recipe") == base and _finite(rel.get("lr_sensitivity_ratio")):
            ratio = f"{rel['lr_sensitivity_ratio']:.2f}x"
        elif name == base:
            ratio = "(reference)"
        else:
            ratio = f"{sens / base_sens:.2f}x" if _finite(sens) and _finite(base_sens) and base_sens > 0 else "-"
        diverged = rec.get("diverged") if isinstance(rec.get("diverged"), int) else \
            sum(1 for r in runs if not _finite(r.get("final_loss")))
        rows.append([_cell(name), {"text": str(rec.get("description") or ""), "verbatim": False}, _cell(sens),
                     _cell(ratio), _cell(rec.get("best_loss")), _cell(rec.get("best_lr")), _cell(len(runs)),
                     _cell(diverged), _cell(", ".join(fmt(x) for x in lrs)), _cell(", ".join(map(str, seeds))),
                     _cell(_seed_spread(rec, runs, lrs))])
        rest = {k: v for k, v in rec.items() if k not in ("runs", "lr_sensitivity", "best_loss", "best_lr", "description",
                                                           "relative_to", "diverged")}
        children = generic(rest)
        t = _table_of_dicts([{k: v for k, v in r.items() if k not in ("factors",)} for r in runs]) if runs else None
        if t is not None:
            children.append({"type": "group", "title": "runs", "children": [t]})
        extra.append({"type": "details", "title": f"{name}: every run, seed variance and options", "children": children})
    if isinstance(inp.data.get("study"), dict):
        extra[:0] = _study_nodes(inp.data, inp.label)
    others = {k: v for k, v in inp.data.items() if k not in ("recipes", "signature", "study")}
    if others:
        extra.append({"type": "details", "title": "grid", "children": generic(others)})
    return {"label": inp.label, "path": str(inp.path), "signature": inp.signature,
            "columns": ["recipe", "description", "LR sensitivity", f"vs {base}", "best loss", "best LR", "runs",
                        "diverged", "learning rates", "seeds", "seed spread (max std)"],
            "rows": rows, "plot": _sweep_plot(recipes), "extra": extra, "others": []}


def _study_nodes(data: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """A named study's (``steadylm sweep --study``) table with intervals over seeds, its goal, and the
    max attention logit over steps at its highest learning rate, drawn from ``sweep.json``."""
    from ..study.plots import plot_attention_logits
    from ..study.studies import goal_lines, study_table

    study = data["study"]
    columns, rows = study_table(data)
    children: list[dict[str, Any]] = [{"type": "table", "columns": columns, "rows": [[_cell(c) for c in r] for r in rows],
                                       "more": 0}]
    children += [{"type": "text", "text": line} for line in goal_lines(data)]
    with tempfile.TemporaryDirectory(prefix="steadylm-study-") as tmp:
        uri = _png_uri(plot_attention_logits(data, Path(tmp) / "attention_logits.png"))
    children.append({"type": "figure", "uri": uri, "alt": f"max attention logit of {label}",
                     "title": f"Max attention logit over steps at LR {fmt(study.get('top_lr'))}, one line per seed"})
    definition = study.get("definition") if isinstance(study.get("definition"), dict) else {}
    if definition:
        children.append({"type": "details", "title": "the study's fixed definition", "children": generic(definition)})
    return [{"type": "group", "title": f"Study {study.get('name', '')}", "children": children}]


def _study_entry(inp: Input, warnings: list[str]) -> dict[str, Any]:
    """A study this module shows generically (clip threshold, decoding grid) with its own plot."""
    d = inp.data
    what = "Clip threshold sweep" if "recommended" in d else "Decoding sweep" if "cells" in d else "Study"
    plot = None
    if inp.source is not None:
        png = inp.source.with_suffix(".png")
        if png.is_file():
            plot = _png_uri(png)
        else:
            warnings.append(f"{png}: plot of {inp.label} is missing")
    head = {k: v for k, v in d.items() if k not in ("signature",)}
    return {"label": f"{what}: {inp.label}", "path": str(inp.path), "signature": inp.signature, "columns": [],
            "rows": [], "plot": plot, "extra": [], "others": generic(head)}


# --------------------------------------------------------------------------- evaluation


def _generation_entry(inp: Input) -> dict[str, Any]:
    from .tables import generation_rows

    r = inp.data
    ref = r.get("reference", {}) if isinstance(r.get("reference"), dict) else {}
    sigs = [f"{k}: {ref[k]['signature']}" for k in ("bleu", "chrf", "ter") if isinstance(ref.get(k), dict)
            and ref[k].get("signature")]
    cnt = r.get("counts", {}) if isinstance(r.get("counts"), dict) else {}
    return {"label": inp.label, "path": str(inp.path), "signature": inp.signature,
            "rows": [[_cell(g), _cell(m), _cell(v)] for g, m, v in generation_rows(r)],
            "metric_signatures": sigs,
            "counts": ", ".join(f"{k} {fmt(v)}" for k, v in cnt.items()) + (f"; {r['elapsed_s']} s" if "elapsed_s" in r else ""),
            "settings": generic({k: v for k, v in (r.get("signature") or {}).items() if k != "string"})}


def _perplexity_entry(inp: Input) -> dict[str, Any]:
    r = inp.data
    keys = ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "loglikelihood", "tokens",
            "words", "bytes", "documents", "windows", "window", "stride")
    data = (r.get("settings") or {}).get("data") if isinstance(r.get("settings"), dict) else None
    return {"label": inp.label, "path": str(inp.path), "signature": inp.signature, "data": data,
            "rows": [(k.replace("_", " "), _cell(r[k])) for k in keys if k in r]}


def _comparison(entries: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Generation results side by side: one row per (group, metric), one column per result."""
    from .tables import generation_rows

    if len(entries) < 2:
        return None
    order: dict[tuple[str, str], dict[str, str]] = {}
    for label, r in entries:
        for g, m, v in generation_rows(r):
            if m == "not measured":
                continue
            order.setdefault((g, m), {})[label] = v
    return {"columns": ["group", "metric"] + [lab for lab, _ in entries],
            "rows": [[_cell(g), _cell(m)] + [_cell(vals.get(lab, "-")) for lab, _ in entries]
                     for (g, m), vals in order.items()]}


# --------------------------------------------------------------------------- robustness


def _read_generations(folder: Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(folder / "generations.jsonl", error=SteadyError) if isinstance(obj, dict)]


def _worst_examples(inp: Input, kinds: Iterable[str], warnings: list[str], per_kind: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Per kind, the items whose output moved most (lowest chrF to the clean output), verbatim:
    clean and perturbed prompt and output from the folder's ``generations.jsonl``."""
    folder = inp.path if inp.path.is_dir() else inp.path.parent
    pp = inp.data.get("per_prompt")
    if not isinstance(pp, list) or not pp:
        return {}
    if not (folder / "generations.jsonl").is_file():
        warnings.append(f"{inp.label}: {folder / 'generations.jsonl'} is missing; worst examples cannot be shown verbatim")
        return {}
    gens: dict[tuple[str, str], dict[str, Any]] = {}
    for g in _read_generations(folder):
        if g.get("set", "in") != "in" or g.get("sample", 0) != 0:
            continue
        gens.setdefault((str(g.get("variant")), str(g.get("prompt_id"))), g)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        scored = []
        for rec in pp:
            row = (rec.get("kinds") or {}).get(kind) if isinstance(rec, dict) else None
            if isinstance(row, dict) and _finite(row.get("chrf")):
                scored.append((row["chrf"], str(rec.get("prompt_id")), row))
        scored.sort(key=lambda t: (t[0], t[1]))
        picked = []
        for chrf, pid, row in scored[:per_kind]:
            c, p = gens.get(("clean", pid)), gens.get((kind, pid))
            if c is None or p is None:
                continue
            picked.append({"prompt_id": pid, "chrf": fmt(chrf), "semantic": fmt(row.get("semantic")),
                           "clean_prompt": str(c.get("prompt", "")), "prompt": str(p.get("prompt", "")),
                           "clean_output": str(c.get("text", "")), "output": str(p.get("text", ""))})
        if picked:
            out[kind] = picked
    return out


def _robustness_entry(inp: Input, warnings: list[str]) -> dict[str, Any]:
    from ..evaluate.perturb import PERTURBATIONS

    r = inp.data
    kinds = r.get("kinds") if isinstance(r.get("kinds"), dict) else r.get("robustness")

    def tailored() -> dict[str, Any]:
        rows = []
        primary = (r.get("aggregate") or {}).get("primary_metric")
        for k, d in kinds.items():
            sim = d.get("similarity") or {}
            ps = d.get("perplexity_shift") or {}
            ref = d.get("reference") or {}
            ans = d.get("answers") or {}
            pdr = (d.get("pdr") or {}).get(primary or "", {})
            rows.append([_cell(k), {"text": PERTURBATIONS[k].description if k in PERTURBATIONS else "", "verbatim": False},
                         _cell(d.get("rate")), _cell(d.get("changed_share")),
                         _cell(ps.get("delta_bits_per_byte") if ps.get("measured") else "not measured"),
                         _cell(sim.get("bleu")), _cell(sim.get("chrf")), _cell(sim.get("semantic")),
                         _cell(f"{fmt_ci_n(ans.get('accuracy'))} / flip {fmt_ci_n(ans.get('flip_rate'))}" if ans.get("measured") else "-"),
                         _cell(f"{fmt(ref['chrf']['clean'])} → {fmt(ref['chrf']['perturbed'])}" if ref.get("measured") else "-"),
                         _cell(f"{fmt(pdr.get('pdr'))} [{fmt(pdr.get('ci_low'))}, {fmt(pdr.get('ci_high'))}]" if pdr else "-")])
        return {"type": "table", "more": 0, "rows": rows,
                "columns": ["kind", "description", "rate", "changed", "Δ bits/byte", "BLEU to clean", "chrF to clean",
                            "semantic to clean", "accuracy / flip rate", "reference chrF clean → perturbed",
                            f"PDR ({primary or '-'})"]}

    table = _safely(f"{inp.label}: robustness per kind", warnings, tailored, lambda: _dict_table(kinds, "kind")[0])
    adv = r.get("adversarial") if isinstance(r.get("adversarial"), dict) else None
    adv_examples = []
    if adv and isinstance(adv.get("examples"), list):
        for e in adv["examples"][:5]:
            if isinstance(e, dict) and isinstance(e.get("greedy"), dict):
                adv_examples.append({"prompt_id": e.get("prompt_id"), "objective": e.get("objective"),
                                     "scores": f"clean {fmt(e.get('clean_score'))}, greedy {fmt(e['greedy'].get('score'))}, "
                                               f"random {fmt((e.get('random') or {}).get('score'))}",
                                     "edits": ", ".join(map(str, e["greedy"].get("edits") or [])),
                                     "clean_prompt": str(e.get("clean_prompt", "")), "prompt": str(e["greedy"].get("prompt", "")),
                                     "clean_output": str(e.get("clean_output", "")), "output": str(e["greedy"].get("output", ""))})
    skip = {"signature", "kinds", "robustness", "per_prompt"}
    rest = {k: v for k, v in r.items() if k not in skip}
    if adv is not None and isinstance(rest.get("adversarial"), dict):
        rest["adversarial"] = {k: v for k, v in adv.items() if k != "examples"}
    return {"label": inp.label, "path": str(inp.path), "signature": inp.signature, "table": table,
            "worst": _safely(f"{inp.label}: worst examples", warnings,
                                                     lambda: _worst_examples(inp, list(kinds), warnings), dict),
            "adversarial": adv_examples, "rest": generic(rest)}


# --------------------------------------------------------------------------- ensembles


def _backend(r: dict[str, Any]) -> dict[str, Any]:
    sig = r.get("signature")
    b = sig.get("backend") if isinstance(sig, dict) else None
    return b if isinstance(b, dict) else {}


def _ensemble_entries(gen_inputs: list[Input], others: list[Input]) -> list[dict[str, Any]]:
    from .tables import generation_rows

    by_hash = {}
    for inp in gen_inputs:
        h = _backend(inp.data).get("model_hash")
        if h and _backend(inp.data).get("backend") != "ensemble":
            by_hash.setdefault(h, inp)
    out = []
    for inp in gen_inputs:
        b = _backend(inp.data)
        if b.get("backend") != "ensemble":
            continue
        members = [m for m in b.get("members") or [] if isinstance(m, dict)]
        cols: list[tuple[str, dict[str, Any]]] = []
        missing = []
        for m in members:
            found = by_hash.get(m.get("model_hash"))
            if found is not None:
                cols.append((f"member {found.label}", found.data))
            else:
                missing.append(str(m.get("model") or m.get("model_hash")))
        cols.append((f"ensemble {inp.label}", inp.data))
        order: dict[tuple[str, str], dict[str, str]] = {}
        for label, r in cols:
            for g, m, v in generation_rows(r):
                if m != "not measured":
                    order.setdefault((g, m), {})[label] = v
        out.append({"label": inp.label, "path": str(inp.path), "signature": inp.signature,
                    "mode": b.get("mode"), "members": [(str(m.get("model")), fmt(m.get("weight")), str(m.get("model_hash")))
                                                       for m in members],
                    "missing": missing, "columns": ["group", "metric"] + [c for c, _ in cols],
                    "rows": [[_cell(g), _cell(m)] + [_cell(vals.get(c, "-")) for c, _ in cols] for (g, m), vals in order.items()],
                    "generic": []})
    for inp in others:  # ensemble results of a kind not known here: members beside ensembles as given
        d = inp.data
        nodes = []
        for key in ("members", "ensembles", "ensemble"):
            v = d.get(key)
            if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
                nodes += [{"type": "group", "title": key, "children": _dict_table(v, "name")}]
            elif v is not None:
                nodes += [{"type": "group", "title": key, "children": generic(v)}]
        rest = {k: v for k, v in d.items() if k not in ("members", "ensembles", "ensemble", "signature")}
        out.append({"label": inp.label, "path": str(inp.path), "signature": inp.signature, "mode": None, "members": [],
                    "missing": [], "columns": [], "rows": [], "generic": nodes + generic(rest)})
    return out


def _is_ensemble_other(inp: Input) -> bool:
    return any(k in inp.data for k in ("members", "ensembles", "ensemble")) or \
        "ensemble" in json.dumps(inp.data.get("signature", ""))[:2000]


# --------------------------------------------------------------------------- human ratings


def _human_entry(inp: Input) -> dict[str, Any]:
    d = inp.data
    crit = list((d.get("signature") or {}).get("criteria") or ["fluency", "consistency", "logic"])
    rows = []
    for name, s in (d.get("systems") or {}).items():
        rows.append([_cell(name)] + [_cell(s.get(c)) for c in crit + ["overall"]] + [_cell(s.get("items"))])
    agreement = d.get("agreement") or {}
    if agreement.get("measured") is False:
        agree_rows: list[list[dict[str, Any]]] = []
        agree_note = agreement.get("reason", "")
    else:
        agree_note = ""
        agree_rows = [[_cell(c), _cell(a.get("ordinal")), _cell(a.get("interval")), _cell(a.get("units")),
                       _cell(a.get("pairable_values")), _cell(a.get("reason", ""))]
                      for c, a in agreement.items() if isinstance(a, dict)]
    raters = [[_cell(r.get("name")), _cell(r.get("kind")), _cell(r.get("rated")), _cell(r.get("missing", "-")),
               _cell(r.get("file") or r.get("endpoint") or "")] for r in d.get("raters") or [] if isinstance(r, dict)]
    judge = d.get("kind") == "llm-judge"
    missing = (d.get("judge") or {}).get("missing") if judge else None
    return {"label": inp.label, "path": str(inp.path), "signature": inp.signature, "judge": judge,
            "title": ("LLM judge, not human: " + ", ".join(r.get("name", "") for r in d.get("raters") or [])) if judge
            else f"{len(raters)} human rater(s)",
            "columns": ["model / setting"] + crit + ["overall", "items"], "rows": rows,
            "agreement": agree_rows, "agreement_note": agree_note, "raters": raters,
            "missing": ", ".join(f"{k} {v}" for k, v in missing.items()) if isinstance(missing, dict) else ""}


# --------------------------------------------------------------------------- versions


def _version_warnings(inputs: list[Input]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for inp in inputs:
        if inp.version:
            mm = ".".join(inp.version.split(".")[:2])
            groups.setdefault(mm, []).append(f"{inp.label} ({inp.version})")
    here = ".".join(__version__.split(".")[:2])
    if len(groups) <= 1 and (not groups or here in groups):
        return []
    parts = "; ".join(f"steadylm {mm}: {', '.join(names)}" for mm, names in groups.items())
    return [f"incompatible steadylm versions: {parts}; this report is steadylm {__version__}. Numbers made by "
            f"different versions may not be comparable"]


def _library_versions() -> list[tuple[str, str]]:
    out = [("steadylm", __version__), ("python", platform.python_version())]
    for mod in ("matplotlib", "jinja2", "numpy"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except ImportError:
                continue
        out.append((mod, getattr(m, "__version__", "?")))
    return out


# --------------------------------------------------------------------------- the report


def build_context(paths: Sequence[str | Path], *, title: str | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain data; ``context["warnings"]`` lists the problems."""
    flat = collect_inputs(list(paths))
    warnings: list[str] = []
    for inp in flat:
        warnings.extend(inp.notes)
        if inp.kind == "generation" and isinstance(inp.data, dict):  # what the evaluation itself warned about
            warnings.extend(f"{inp.label}: {w}" for w in inp.data.get("warnings") or [] if isinstance(w, str))
    warnings = _version_warnings(flat) + warnings

    runs = [i for i in flat if i.kind == "training"]
    gens = [i for i in flat if i.kind == "generation"]
    others = [i for i in flat if i.kind == "other"]
    ens_others = [i for i in others if _is_ensemble_other(i)]
    ctx: dict[str, Any] = {"title": title or "steadylm report", "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                           "sections": SECTIONS, "no_inputs": NO_INPUTS, "versions": _library_versions(),
                           "inputs": [{"label": i.label, "kind": i.kind, "path": str(i.path), "version": i.version or "-",
                                       "signature": i.signature} for i in flat]}
    with tempfile.TemporaryDirectory(prefix="steadylm-report-") as tmp:
        tmpdir = Path(tmp)
        ctx["training"] = [_training_entry(r, tmpdir / f"run{k}", warnings) for k, r in enumerate(runs)]
        ctx["comparison"] = None
        if len(runs) >= 2:
            from .plots import plot_comparison

            try:
                p = plot_comparison({r.label: r.path for r in runs}, tmpdir / "comparison.png")
                ctx["comparison"] = {"uri": _png_uri(p), "title": "Training loss of every run on one axis"}
            except SteadyError as e:
                warnings.append(f"comparison plot could not be drawn ({e})")
        ctx["sweeps"] = [_safely(f"{i.label}: sweep", warnings,
                                 (lambda i=i: _sweep_entry(i)) if i.kind == "sweep" else (lambda i=i: _study_entry(i, warnings)),
                                 lambda i=i: {"label": i.label, "path": str(i.path), "signature": i.signature,
                                              "columns": [], "rows": [], "plot": None, "extra": [],
                                              "others": generic(i.data)}) for i in flat if i.kind in ("sweep", "study")]
    ctx["generations"] = [_safely(f"{i.label}: generation results", warnings, lambda i=i: _generation_entry(i),
                                  lambda i=i: {"label": i.label, "path": str(i.path), "signature": i.signature, "rows": [],
                                               "metric_signatures": [], "counts": "", "settings": generic(i.data)})
                          for i in gens]
    ctx["perplexities"] = [_perplexity_entry(i) for i in flat if i.kind == "perplexity"]
    ctx["gen_comparison"] = _safely("generation comparison", warnings,
                                    lambda: _comparison([(i.label, i.data) for i in gens]), lambda: None)
    ctx["robustness"] = [_robustness_entry(i, warnings) for i in flat if i.kind == "robustness"]
    ctx["ensembles"] = _safely("ensembles", warnings, lambda: _ensemble_entries(gens, ens_others), list)
    ctx["human"] = [_safely(f"{i.label}: human ratings", warnings, lambda i=i: _human_entry(i),
                            lambda i=i: {"label": i.label, "path": str(i.path), "signature": i.signature, "judge": False,
                                         "title": "", "columns": [], "rows": [], "agreement": [], "agreement_note": "",
                                         "raters": [], "missing": "", "generic": generic(i.data)})
                    for i in flat if i.kind == "human"]
    ctx["others"] = [{"label": i.label, "path": str(i.path), "signature": i.signature,
                      "nodes": generic(i.data, skip=("signature",))} for i in others if i not in ens_others]
    ctx["warnings"] = warnings
    ctx["n_images"] = sum(len(r["plots"]) for r in ctx["training"]) + (1 if ctx["comparison"] else 0) + \
        sum(1 for s in ctx["sweeps"] if s.get("plot"))
    return ctx


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("steadylm.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env


def build_report(paths: Sequence[str | Path], out: str | Path, *, md: str | Path | None = None,
                 title: str | None = None) -> dict[str, Any]:
    """Write the HTML report ``out`` (and the Markdown summary ``md``) over ``paths``.
    Returns ``{"html", "md", "warnings", "inputs"}``; warnings also go to stderr."""
    from .markdown import markdown_summary

    out = check_out_file(out, "-o", inputs=paths)
    if md is not None:
        check_out_file(md, "--md", inputs=paths)
    ctx = build_context(paths, title=title)
    page = _env().get_template("report.html.j2").render(**ctx)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    if md is not None:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(md, markdown_summary(ctx, html_name=out.name))
    for w in ctx["warnings"]:
        sys.stderr.write(f"steadylm: warning: {w}\n")
    return {"html": str(out), "md": str(md) if md is not None else None, "warnings": ctx["warnings"],
            "inputs": [(i["label"], i["kind"]) for i in ctx["inputs"]]}
