"""Terminal tables (rich) for ``eval generation`` and ``compare`` results."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_ci(d: Any) -> str:
    if not isinstance(d, dict) or d.get("mean") is None:
        return "-"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    if lo is None or hi is None:
        return fmt(d["mean"])
    return f"{fmt(d['mean'])}  [{fmt(lo)}, {fmt(hi)}]"


def generation_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(group, metric, value) rows for a results.json of ``eval generation``."""
    rows: list[tuple[str, str, str]] = []

    def not_measured(group: str, d: dict[str, Any]) -> bool:
        if isinstance(d, dict) and d.get("measured") is False:
            rows.append((group, "not measured", d.get("reason", "")))
            return True
        return False

    c = r.get("consistency", {})
    for scope in ("across_samples", "across_seeds"):
        d = c.get(scope, {})
        if not not_measured(f"consistency {scope.replace('_', ' ')}", d):
            for k in ("self_bleu", "self_chrf", "semantic"):
                rows.append((f"consistency {scope.replace('_', ' ')}", k, fmt_ci(d.get(k))))
    a = c.get("answers", {})
    if not not_measured("answers", a):
        for k in ("agreement", "majority_share", "accuracy"):
            rows.append(("answers", k, fmt_ci(a.get(k))))
    ct = r.get("contradiction", {})
    if not not_measured("contradiction", ct):
        rows.append(("contradiction", "SelfCheckGPT-NLI", fmt_ci(ct.get("score"))))
    dg = r.get("degeneration", {})
    for k in ("seq_rep_1", "seq_rep_2", "seq_rep_4", "distinct_1", "distinct_2", "loop_share"):
        if k in dg:
            rows.append(("degeneration", k, fmt(dg[k])))
    nt = dg.get("next_token", {})
    if not not_measured("degeneration next-token", nt):
        rows.append(("degeneration", "next-token rep / wrep", f"{fmt(nt.get('rep'))} / {fmt(nt.get('wrep'))}"))
    rel = r.get("relevance", {})
    if "prompt_response" in rel:
        rows.append(("relevance", "prompt-response similarity", fmt_ci(rel["prompt_response"])))
    rq = rel.get("repeated_question", {})
    if rq.get("measured"):
        rows.append(("relevance", "same question, later turn: similarity", fmt_ci(rq.get("semantic"))))
        rows.append(("relevance", "same question, later turn: same answer", fmt_ci(rq.get("same_answer"))))
    ref = r.get("reference", {})
    if not not_measured("reference", ref):
        for k in ("bleu", "chrf", "ter"):
            if k in ref:
                rows.append(("reference", k.upper() if k != "chrf" else "chrF", fmt(ref[k]["score"])))
    det = r.get("determinism", {})
    if not not_measured("determinism", det):
        g = det.get("greedy_repeat", {})
        rows.append(("determinism", f"greedy x{det.get('runs')}: unique completions (mean/max)",
                     f"{fmt(g.get('unique_completions_mean'))} / {fmt(g.get('unique_completions_max'))}"))
        rows.append(("determinism", "same seed, sampled: same output", fmt(det.get("same_seed_sampled", {}).get("same_output_share"))))
        bi = det.get("batch_invariance", {})
        if not not_measured("batch invariance", bi):
            if "max_logit_diff" in bi:
                rows.append(("batch invariance", "max logit diff (alone vs batch)", fmt(bi["max_logit_diff"])))
            rows.append(("batch invariance", "identical greedy outputs", fmt(bi.get("identical_share"))))
            rows.append(("batch invariance", "first divergence (min)", fmt(bi.get("first_divergence_min"))))
        env = det.get("environments", {})
        if not not_measured("environments", env):
            for k, v in env.items():
                if isinstance(v, dict) and "identical_share" in v:
                    rows.append(("environments", f"{k}: identical", fmt(v["identical_share"])))
                elif isinstance(v, dict) and v.get("measured") is False:
                    rows.append(("environments", k, v.get("reason", "")))
    return rows


def console():
    import sys

    from rich.console import Console

    # a pipe gets rich's 80 columns by default, which wraps every row; files are read wide
    return Console(width=None if sys.stdout.isatty() else 160)


def print_generation_summary(r: dict[str, Any], out: str | Path) -> None:
    from rich.table import Table

    sig = r.get("signature", {})
    t = Table(title="eval generation", caption=sig.get("string", ""), show_lines=False)
    t.add_column("group")
    t.add_column("metric")
    t.add_column("value (mean [95% CI])")
    for row in generation_rows(r):
        t.add_row(*row)
    con = console()
    con.print(t)
    ref = r.get("reference", {})
    for k in ("bleu", "chrf", "ter"):
        if isinstance(ref.get(k), dict):
            con.print(f"{k}: {ref[k]['signature']}")
    cnt = r.get("counts", {})
    con.print(f"{cnt.get('prompts')} prompts, {cnt.get('generations')} generations ({cnt.get('from_cache')} from cache) "
              f"in {r.get('elapsed_s')} s -> {Path(out) / 'results.json'}, {Path(out) / 'generations.jsonl'}")


def print_comparison(res: dict[str, Any]) -> None:
    from rich.table import Table

    con = console()
    g = res["generations"]
    con.print(f"[bold]{res['a']}[/] vs [bold]{res['b']}[/]: {g['matched']} generations matched "
              f"({g['only_a']} only in A, {g['only_b']} only in B); identical {fmt(g['identical_share'])}; "
              f"first divergence mean {fmt(g['first_divergence_mean'])}, min {fmt(g['first_divergence_min'])} "
              f"({g['position_unit']})")
    for w in res["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")
    t = Table(title="metrics")
    for c in ("metric", "A", "B", "B - A"):
        t.add_column(c)
    for k, v in res["metrics"].items():
        t.add_row(k, fmt(v["a"]), fmt(v["b"]), fmt(v["diff"]))
    con.print(t)
    if res["signature_differences"]:
        s = Table(title="settings that differ")
        for c in ("setting", "A", "B"):
            s.add_column(c)
        for k, v in res["signature_differences"].items():
            s.add_row(k, fmt(v["a"]), fmt(v["b"]))
        con.print(s)
