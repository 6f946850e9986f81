"""Terminal tables (rich) for ``eval generation``, ``eval robustness`` and ``compare`` results;
`generation_rows` also gives the report its evaluation table. Reads only the results dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .format import fmt, fmt_ci

__all__ = ["generation_rows", "console", "print_generation_summary", "print_robustness_summary", "print_comparison"]


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
    for w in r.get("warnings") or []:
        con.print(f"[yellow]warning:[/] {w}")
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


def print_robustness_summary(r: dict[str, Any], out: str | Path) -> None:
    from rich.table import Table

    con = console()
    sig = r.get("signature", {})
    t = Table(title="eval robustness: per perturbation kind", caption=sig.get("string", ""))
    for c in ("kind", "rate", "changed", "Δ bits/byte", "BLEU to clean", "chrF to clean", "semantic",
              "accuracy / flip", "ref chrF", "PDR"):
        t.add_column(c)
    primary = r.get("aggregate", {}).get("primary_metric")
    for kind, d in r.get("kinds", {}).items():
        ps = d.get("perplexity_shift", {})
        ans = d.get("answers", {})
        ref = d.get("reference", {})
        pdr = d.get("pdr", {}).get(primary or "", {}).get("pdr")
        t.add_row(kind, fmt(d.get("rate")), fmt(d.get("changed_share")),
                  fmt(ps.get("delta_bits_per_byte")) if ps.get("measured") else "not measured",
                  fmt_ci(d["similarity"]["bleu"]), fmt_ci(d["similarity"]["chrf"]), fmt_ci(d["similarity"]["semantic"]),
                  f"{fmt(ans['accuracy']['mean'])} / {fmt(ans['flip_rate']['mean'])}" if ans.get("measured") else "-",
                  f"{fmt(ref['chrf']['clean'])} → {fmt(ref['chrf']['perturbed'])}" if ref.get("measured") else "-",
                  fmt(pdr))
    con.print(t)
    agg = r.get("aggregate", {})
    a = Table(title="all kinds")
    for c in ("metric", "value (mean [95% CI])"):
        a.add_column(c)
    for k in ("bleu", "chrf", "semantic", "perplexity_shift_bpb", "flip"):
        if k in agg:
            a.add_row(k, fmt_ci(agg[k]))
    for name, v in agg.get("pdr", {}).items():
        a.add_row(f"PDR {name}", f"{fmt(v['pdr'])}  [{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]")
    for name, v in agg.get("worst_case", {}).items():
        if isinstance(v, dict):
            a.add_row(f"worst case {name}", f"{fmt_ci(v['worst_case'])}  (clean {fmt_ci(v['clean'])})")
    con.print(a)
    adv = r.get("adversarial", {})
    if adv.get("measured"):
        s = Table(title=f"adversarial search: {adv['items']} items, budget {adv['budget']} edits, "
                        f"{adv['queries_per_search']} queries each ({', '.join(adv['objective'])}; lower = worse)")
        for c in ("search", "final score", "after each step"):
            s.add_column(c)
        s.add_row("clean", fmt_ci(adv["clean"]), "")
        for name in ("greedy", "random"):
            s.add_row(name, fmt_ci(adv[name]["final"]), "  ".join(fmt(x) for x in adv[name]["curve"]))
        con.print(s)
        for e in adv["examples"][:2]:
            con.print(f"[bold]{e['prompt_id']}[/] ({e['objective']}: clean {fmt(e['clean_score'])}, "
                      f"greedy {fmt(e['greedy']['score'])}, random {fmt(e['random']['score'])})")
            con.print(f"  clean prompt:       {e['clean_prompt']!r}\n  adversarial prompt: {e['greedy']['prompt']!r}\n"
                      f"  clean output:       {e['clean_output']!r}\n  adversarial output: {e['greedy']['output']!r}",
                      markup=False, highlight=False)
    else:
        con.print(f"adversarial search: {adv.get('reason', 'not measured')}")
    ood = r.get("ood", {})
    if ood.get("measured"):
        o = Table(title=f"domain shift: in-domain vs {ood['source']}")
        for c in ("metric", "in-domain", "OOD", "drop"):
            o.add_column(c)
        i_, d_, dr = ood["in_domain"], ood["ood"], ood["drop"]
        if i_["perplexity"].get("measured"):
            o.add_row("bits per byte (prompt text)", fmt(i_["perplexity"]["bits_per_byte"]),
                      fmt(d_["perplexity"]["bits_per_byte"]), f"perplexity ratio {fmt(dr.get('perplexity_ratio'))}")
        else:
            o.add_row("perplexity", "not measured", "not measured", "")
        if i_["self_bleu"].get("measured"):
            o.add_row("self-BLEU", fmt_ci(i_["self_bleu"]), fmt_ci(d_["self_bleu"]), fmt(dr.get("self_bleu_delta")))
        for k in ("bleu", "chrf"):
            if i_["reference"].get("measured") or d_["reference"].get("measured"):
                o.add_row(f"reference {k}", fmt(i_["reference"].get(k, {}).get("score")),
                          fmt(d_["reference"].get(k, {}).get("score")), fmt(dr.get(f"reference_{k}_delta")))
        if i_["accuracy"].get("measured") or d_["accuracy"].get("measured"):
            o.add_row("accuracy", fmt_ci(i_["accuracy"]), fmt_ci(d_["accuracy"]), fmt(dr.get("accuracy_delta")))
        con.print(o)
    cnt = r.get("counts", {})
    con.print(f"{cnt.get('prompts')} prompts x {cnt.get('kinds')} kinds, {cnt.get('generations')} generations "
              f"({cnt.get('from_cache')} from cache) in {r.get('elapsed_s')} s -> {Path(out) / 'results.json'}, "
              f"{Path(out) / 'generations.jsonl'}")
