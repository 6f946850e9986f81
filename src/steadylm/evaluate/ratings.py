"""Ratings of generated outputs on a 1-5 rubric, by people or by an LLM judge: the rubric, the
outputs to rate (read from ``eval generation`` folders), and the ``human.json`` both write - per
system and criterion the mean with a percentile-bootstrap CI over items (`steadylm.stats.summarize`;
an item's score is the mean of its raters, so the CI is over what was sampled: the items), and
inter-rater agreement as Krippendorff's alpha (`steadylm.stats.krippendorff_alpha`; ordinal, the
natural level for a 1-5 scale, and interval beside it).

Shared by the rating page and its import (`steadylm.report.human`) and the LLM judge
(`steadylm.evaluate.judge`); it runs no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import SteadyError
from ..io import iter_jsonl, read_json_object_or_empty

__all__ = ["CRITERIA", "HUMAN_FORMAT", "RUBRIC", "SCALE", "aggregate", "check_counts", "human_doc", "load_outputs",
           "pool_outputs", "score"]

CRITERIA = ("fluency", "consistency", "logic")
SCALE = (1, 5)
#: What each criterion asks; shown on the rating page and sent to the LLM judge, word for word.
RUBRIC = {
    "fluency": "Is it grammatical, natural, readable text?",
    "consistency": "Does it stay consistent with itself and with the prompt, without contradicting either?",
    "logic": "Does it make sense: is its reasoning coherent and its content plausible?",
}
HUMAN_FORMAT = "steadylm-human/1"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, obj in iter_jsonl(path, error=SteadyError):
        if not isinstance(obj, dict):
            raise SteadyError(f"{path}:{i}: expected a JSON object")
        rows.append(obj)
    return rows


def _prompt_text(p: dict[str, Any]) -> str:
    if isinstance(p.get("messages"), list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in p["messages"] if isinstance(m, dict))
    return str(p.get("prompt", ""))


def load_outputs(results_dir: str | Path, *, per_prompt: int = 1, max_prompts: int | None = None) -> dict[str, Any]:
    """The outputs of one ``eval generation`` folder: ``{"signature": str, "outputs": [{"prompt_id",
    "seed", "sample", "prompt", "text"}, ...]}`` - the first ``per_prompt`` outputs (by seed, then
    sample) of each of the first ``max_prompts`` prompts, in prompt order."""
    d = Path(results_dir)
    if not d.is_dir():
        raise SteadyError(f"{d}: no such folder; expected a folder written by steadylm eval generation")
    gens, prompts = d / "generations.jsonl", d / "prompts.jsonl"
    for f in (gens, prompts):
        if not f.is_file():
            raise SteadyError(f"{d}: no {f.name}; expected a folder written by steadylm eval generation")
    items = _read_jsonl(prompts)
    by_id = {str(p.get("id")): p for p in items}
    order = [str(p.get("id")) for p in items][: max_prompts if max_prompts else None]
    per: dict[str, list[dict[str, Any]]] = {}
    for g in _read_jsonl(gens):
        pid = str(g.get("prompt_id"))
        if pid in by_id and isinstance(g.get("text"), str):  # "@turn" requests are not rated
            per.setdefault(pid, []).append(g)
    outputs = []
    for pid in order:
        for g in sorted(per.get(pid, []), key=lambda g: (g.get("seed", 0), g.get("sample", 0)))[:per_prompt]:
            outputs.append({"prompt_id": pid, "seed": g.get("seed"), "sample": g.get("sample"),
                            "prompt": _prompt_text(by_id[pid]), "text": g["text"]})
    if not outputs:
        raise SteadyError(f"{gens}: no outputs for the prompts in {prompts.name}")
    sig = read_json_object_or_empty(d / "results.json").get("signature", {})
    sig = sig.get("string", "") if isinstance(sig, dict) else ""
    return {"signature": sig, "outputs": outputs}


def _labels(dirs: Sequence[str | Path]) -> list[str]:
    """A short, unique name per results folder: its own name, else its path."""
    paths = [Path(p) for p in dirs]
    if len({p.resolve() for p in paths}) != len(paths):
        raise SteadyError("the same results folder is given twice")
    names = [p.resolve().name or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def check_counts(per_prompt: int, max_prompts: int | None) -> None:
    """`SteadyError` unless ``--per-prompt`` and ``--max-prompts`` are counts."""
    if per_prompt < 1:
        raise SteadyError(f"--per-prompt must be >= 1, got {per_prompt}")
    if max_prompts is not None and max_prompts < 1:
        raise SteadyError(f"--max-prompts must be >= 1, got {max_prompts}")


def pool_outputs(results_dirs: Sequence[str | Path], *, per_prompt: int = 1,
                 max_prompts: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The outputs to rate from several ``eval generation`` folders, one *system* each:
    ``(outputs, each with its "system" label, {label: {"results", "signature"}})``."""
    pool, systems = [], {}
    for label, d in zip(_labels(results_dirs), results_dirs):
        loaded = load_outputs(d, per_prompt=per_prompt, max_prompts=max_prompts)
        systems[label] = {"results": str(Path(d).resolve()), "signature": loaded["signature"]}
        pool += [dict(o, system=label) for o in loaded["outputs"]]
    return pool, systems


def score(v: Any) -> int | None:
    """An integer rating 1-5 from a JSON value (4, 4.0, "4"), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int) and SCALE[0] <= v <= SCALE[1]:
        return v
    return None


def aggregate(ratings: dict[str, dict[str, dict[str, int | None]]], item_system: dict[str, str],
              systems: Sequence[str], *, bootstrap: int) -> dict[str, Any]:
    """Per system and criterion: mean over items (an item's score = mean of its raters) with a
    bootstrap CI; per criterion: Krippendorff's alpha over raters x items."""
    from ..stats import krippendorff_alpha, summarize

    per_sys: dict[str, Any] = {}
    missing: dict[str, dict[str, int]] = {}
    raters = list(ratings)
    for s in systems:
        ids = [i for i, sys_ in item_system.items() if sys_ == s]
        row: dict[str, Any] = {}
        overall = []
        miss = {}
        for c in CRITERIA:
            item_means = []
            for i in ids:
                vals = [ratings[r].get(i, {}).get(c) for r in raters]
                vals = [v for v in vals if v is not None]
                item_means.append(sum(vals) / len(vals) if vals else None)
            row[c] = summarize(item_means, n_resamples=bootstrap, seed=0)
            miss[c] = sum(1 for v in item_means if v is None)
        for i in ids:
            per_c = []
            for c in CRITERIA:
                vals = [ratings[r].get(i, {}).get(c) for r in raters]
                vals = [v for v in vals if v is not None]
                if vals:
                    per_c.append(sum(vals) / len(vals))
            overall.append(sum(per_c) / len(per_c) if len(per_c) == len(CRITERIA) else None)
        row["overall"] = summarize(overall, n_resamples=bootstrap, seed=0)
        row["items"] = len(ids)
        per_sys[s] = row
        missing[s] = miss
    agreement: dict[str, Any]
    if len(raters) < 2:
        agreement = {"measured": False, "reason": "needs two or more raters"}
    else:
        agreement = {}
        item_ids = sorted(item_system)
        for c in CRITERIA:
            data = [[ratings[r].get(i, {}).get(c) for i in item_ids] for r in raters]
            o = krippendorff_alpha(data, "ordinal")
            iv = krippendorff_alpha(data, "interval")
            agreement[c] = {"ordinal": o["alpha"], "interval": iv["alpha"], "units": o["units"],
                            "pairable_values": o["pairable_values"]}
            if o.get("reason"):
                agreement[c]["reason"] = o["reason"]
    return {"systems": per_sys, "missing": missing, "agreement": agreement}


def human_doc(kind: str, raters: list[dict[str, Any]], export_id: str, systems: dict[str, Any],
              agg: dict[str, Any], n_items: int, bootstrap: int, extra_sig: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``human.json`` document: `aggregate`'s numbers with the raters and the signature."""
    names = ",".join(r["name"] for r in raters)
    sig = {"steadylm": __version__, "export_id": export_id, "criteria": list(CRITERIA), "scale": list(SCALE),
           "bootstrap_resamples": bootstrap, "ci": 0.95, "ci_over": "items (item score = mean of its raters)",
           "agreement": "Krippendorff's alpha (Krippendorff 2011), ordinal and interval", **(extra_sig or {})}
    sig["string"] = "|".join([f"steadylm:{__version__}", f"kind:{kind}", f"export:{export_id}",
                              f"raters:{len(raters)}", f"items:{n_items}", f"boot:{bootstrap}",
                              "scale:1-5"] + ([f"judge:{extra_sig['judge_model']}"] if extra_sig and "judge_model" in extra_sig else []))
    return {"format": HUMAN_FORMAT, "kind": kind, "signature": sig, "raters": raters,
            "rater_names": names, "systems": agg["systems"], "missing": agg["missing"],
            "agreement": agg["agreement"], "system_sources": systems, "items": n_items}
