"""``steadylm compare A B``: line up two ``eval generation`` runs (two machines, two dtypes, two
library versions) output by output and metric by metric.

Generations are matched on ``(prompt_id, seed, sample)``. For each pair: identical or not, and the
first position (whitespace word / CJK character) where they differ. Metrics: every number that
both ``results.json`` files have at the same path (``consistency.across_samples.self_bleu.mean``
...) with its difference. Signatures: the settings that differ, so a reader sees whether the runs
were comparable at all (different prompts or decoding settings are flagged, not refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..io import iter_jsonl, read_json
from .generation import first_divergence


def _load_run(path: str | Path) -> tuple[Path, dict[str, Any], dict[tuple[str, int, int], str]]:
    p = Path(path)
    folder = p.parent if p.is_file() else p
    res_path = folder / "results.json"
    gen_path = folder / "generations.jsonl"
    for f in (res_path, gen_path):
        if not f.is_file():
            raise DataError(f"{path}: no {f.name} (expected a folder written by steadylm eval generation)")
    results = read_json(res_path)
    gens: dict[tuple[str, int, int], str] = {}
    for i, o in iter_jsonl(gen_path):
        try:
            gens[(str(o["prompt_id"]), int(o["seed"]), int(o["sample"]))] = o["text"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{gen_path}:{i}: not a generation line (needs prompt_id, seed, sample, text)") from None
    return folder, results, gens


def _numbers(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("signature", "per_prompt", "examples", "elapsed_s", "counts", "ci_low", "ci_high", "n"):
                continue
            out.update(_numbers(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = float(d)
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    else:
        out[prefix] = d
    return out


def compare_runs(a: str | Path, b: str | Path) -> dict[str, Any]:
    from .degeneration import units

    fa, ra, ga = _load_run(a)
    fb, rb, gb = _load_run(b)
    keys = sorted(set(ga) & set(gb))
    pairs = []
    for k in keys:
        d = first_divergence(units(ga[k]), units(gb[k]))
        pairs.append({"prompt_id": k[0], "seed": k[1], "sample": k[2], "identical": d is None, "first_divergence": d})
    diverged = [p["first_divergence"] for p in pairs if p["first_divergence"] is not None]
    na, nb = _numbers({k: v for k, v in ra.items() if k != "determinism"}), _numbers({k: v for k, v in rb.items() if k != "determinism"})
    metrics = {k: {"a": na[k], "b": nb[k], "diff": nb[k] - na[k]} for k in sorted(set(na) & set(nb))}
    sa, sb = _flat(ra.get("signature", {})), _flat(rb.get("signature", {}))
    sig_diff = {k: {"a": sa.get(k), "b": sb.get(k)} for k in sorted(set(sa) | set(sb))
                if sa.get(k) != sb.get(k) and k != "string"}
    warnings = []
    for k in ("prompts.sha256", "decoding.temperature", "decoding.top_p", "decoding.top_k", "decoding.max_new_tokens", "samples"):
        if k in sig_diff:
            warnings.append(f"{k} differs ({sig_diff[k]['a']} vs {sig_diff[k]['b']}): the runs did not ask the same thing")
    return {
        "a": str(fa), "b": str(fb),
        "generations": {"matched": len(keys), "only_a": len(set(ga) - set(gb)), "only_b": len(set(gb) - set(ga)),
                        "identical_share": (len(keys) - len(diverged)) / len(keys) if keys else None,
                        "first_divergence_mean": sum(diverged) / len(diverged) if diverged else None,
                        "first_divergence_min": min(diverged) if diverged else None,
                        "position_unit": "whitespace word / CJK character"},
        "metrics": metrics,
        "signature_differences": sig_diff,
        "warnings": warnings,
        "pairs": pairs,
    }
