"""The Markdown summary of a report (``steadylm report ... --md summary.md``), for pull requests.

Built from the same context as the HTML page (`report.html.build_context`), with the same section
headings; headline tables only, no images (code hosts strip ``data:`` URIs), and the signatures in
a closing list so every number can be traced. The HTML report holds the rest.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["markdown_summary"]


def _esc(text: Any) -> str:
    s = str(text).replace("\r", " ").replace("\n", " ⏎ ")
    return s.replace("|", "\\|")


def _text(c: Any) -> str:
    if isinstance(c, dict) and "text" in c:
        c = c["text"]
    s = _esc(c)
    return s if len(s) <= 160 else s[:157] + "…"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_esc(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_text(c) for c in r) + " |" for r in rows]
    return out + [""]


def _kv(rows: Sequence[tuple[str, Any]], *, keys: Sequence[str] | None = None) -> dict[str, str]:
    d = {k: _text(v) for k, v in rows}
    return {k: d[k] for k in keys if k in d} if keys is not None else d


def markdown_summary(ctx: dict[str, Any], *, html_name: str = "report.html") -> str:
    """The Markdown summary of a report context."""
    lines = [f"# {ctx['title']}", "",
             f"{len(ctx['inputs'])} input(s), steadylm {ctx['versions'][0][1]}, {ctx['generated']}. "
             f"Plots, every table and the worst examples: `{html_name}`.", ""]
    if ctx["warnings"]:
        lines += ["> **Warnings**"] + [f"> - {_esc(w)}" for w in ctx["warnings"]] + [""]
    none = f"_{ctx['no_inputs']}_"
    sigs: list[tuple[str, str]] = []

    lines += ["## Training", ""]
    if ctx["training"]:
        cols = ["steps", "final loss", "val perplexity", "incidents", "skipped steps", "rollbacks"]
        rows = []
        for r in ctx["training"]:
            f = _kv(r["facts"])
            clip = _kv(r["clip"])
            rows.append([r["label"]] + [f.get(c, "-") for c in cols] + [clip.get("steps clipped", "-")])
            if r["signature"]:
                sigs.append((r["label"], r["signature"]))
        lines += _table(["run"] + cols + ["steps clipped"], rows)
    else:
        lines += [none, ""]

    lines += ["## LR sensitivity", ""]
    if ctx["sweeps"]:
        for s in ctx["sweeps"]:
            lines += [f"**{_esc(s['label'])}**", ""]
            if s["rows"]:
                keep = [i for i, c in enumerate(s["columns"]) if c not in ("description", "learning rates", "seeds")]
                lines += _table([s["columns"][i] for i in keep], [[r[i] for i in keep] for r in s["rows"]])
            else:
                lines += ["(see the HTML report)", ""]
            if s["signature"]:
                sigs.append((s["label"], s["signature"]))
    else:
        lines += [none, ""]

    lines += ["## Evaluation", ""]
    if ctx["generations"] or ctx["perplexities"]:
        if ctx["perplexities"]:
            rows = []
            for p in ctx["perplexities"]:
                d = _kv(p["rows"])
                rows.append([p["label"], p["data"] or "-", d.get("token perplexity", "-"), d.get("bits per byte", "-"),
                             d.get("tokens", "-")])
                sigs.append((p["label"], p["signature"]))
            lines += _table(["input", "data", "token perplexity", "bits per byte", "tokens"], rows)
        if ctx["gen_comparison"]:
            lines += _table(ctx["gen_comparison"]["columns"], ctx["gen_comparison"]["rows"])
        else:
            for g in ctx["generations"]:
                lines += [f"**{_esc(g['label'])}**", ""] + _table(["group", "metric", "value (mean [95% CI])"], g["rows"])
        for g in ctx["generations"]:
            if g["signature"]:
                sigs.append((g["label"], g["signature"]))
    else:
        lines += [none, ""]

    lines += ["## Robustness", ""]
    if ctx["robustness"]:
        for r in ctx["robustness"]:
            lines += [f"**{_esc(r['label'])}**", ""]
            t = r.get("table")
            if t and t.get("type") == "table":
                keep = [i for i, c in enumerate(t["columns"]) if c != "description"][:9]
                lines += _table([t["columns"][i] for i in keep], [[row[i] for i in keep] for row in t["rows"]])
            if r["signature"]:
                sigs.append((r["label"], r["signature"]))
    else:
        lines += [none, ""]

    lines += ["## Ensembles", ""]
    if ctx["ensembles"]:
        for e in ctx["ensembles"]:
            lines += [f"**{_esc(e['label'])}**", ""]
            if e["rows"]:
                lines += _table(e["columns"], e["rows"])
            else:
                lines += ["(see the HTML report)", ""]
            if e["signature"]:
                sigs.append((e["label"], e["signature"]))
    else:
        lines += [none, ""]

    lines += ["## Human ratings", ""]
    if ctx["human"]:
        for h in ctx["human"]:
            lines += [f"**{_esc(h['label'])}**: {_esc(h['title'])}" + (" (LLM judge, not human)" if h["judge"] else ""), ""]
            if h["rows"]:
                lines += _table(h["columns"], h["rows"])
            if h["agreement"]:
                lines += _table(["criterion", "alpha (ordinal)", "alpha (interval)"], [r[:3] for r in h["agreement"]])
            if h["signature"]:
                sigs.append((h["label"], h["signature"]))
    else:
        lines += [none, ""]

    if ctx["others"]:
        lines += ["## Other results", "", "Results of a kind the report does not know: " +
                  ", ".join(f"`{_esc(o['label'])}`" for o in ctx["others"]) + f" (shown in `{html_name}`).", ""]

    if sigs:
        lines += ["<details><summary>Signatures</summary>", ""]
        lines += [f"- {_esc(label)}: `{sig}`" for label, sig in sigs if sig]
        lines += ["", "</details>", ""]
    return "\n".join(lines)
