"""An LLM as a rater: ``steadylm human judge RESULTS... --judge openai:URL#MODEL`` puts the rating
rubric (`ratings.RUBRIC`) to an LLM on an OpenAI-compatible endpoint and writes the same
``human.json`` format as the human ratings, labelled ``llm-judge:<model>`` throughout. An answer
that does not hold a labelled integer 1-5 for a criterion counts as *missing* for it - never
guessed, never clamped - and the raw answer is kept for audit. In the spirit of MT-Bench's
single-answer grading (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot
Arena"), with JSON output instead of ``[[rating]]``.

Evaluation work (it runs a model through a backend), so it lives here and not in `steadylm.report`,
which only renders.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import SteadyError
from ..fsutil import check_out_file, write_json_atomic
from .ratings import CRITERIA, RUBRIC, aggregate, check_counts, human_doc, pool_outputs, score

__all__ = ["judge_outputs", "judge_prompt", "parse_judgement"]


def judge_prompt(prompt: str, output: str) -> str:
    """The rubric as one user message; the judge answers with three integers as JSON."""
    crit = "\n".join(f"- {c}: {RUBRIC[c]}" for c in CRITERIA)
    return (f"Rate the RESPONSE to the PROMPT on three criteria, each an integer from 1 (very poor) to 5 (excellent):\n"
            f"{crit}\n\nPROMPT:\n<<<\n{prompt}\n>>>\n\nRESPONSE:\n<<<\n{output}\n>>>\n\n"
            'Answer with JSON only, in exactly this form: {"fluency": N, "consistency": N, "logic": N}')


_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_judgement(text: str) -> dict[str, int | None]:
    """The three ratings in a judge's answer, each an integer 1-5 or None (missing).

    Tolerant of what models wrap around JSON (prose, code fences, single quotes, "4" as a string,
    "Fluency: 4" lines), but strict about what counts: a value must be labelled with its
    criterion and be an integer from 1 to 5. Out of range, fractional or unlabelled -> None."""
    found: dict[str, int | None] = {}
    for m in _OBJECT.finditer(text or ""):
        chunk = m.group(0)
        obj = None
        for candidate in (chunk, chunk.replace("'", '"')):
            try:
                obj = json.loads(candidate)
                break
            except ValueError:
                continue
        if not isinstance(obj, dict):
            continue
        low = {str(k).strip().lower(): v for k, v in obj.items()}
        for c in CRITERIA:
            if c in low and found.get(c) is None:
                found[c] = score(low[c])
    for c in CRITERIA:
        if found.get(c) is None:
            m = re.search(rf"(?<![a-z]){c}(?![a-z])[\"'*\s]*[:=][\"'*\s]*(\d+(?:\.\d+)?)(?![\d.])", text or "", re.I)
            if m:
                found[c] = score(float(m.group(1)))
    return {c: found.get(c) for c in CRITERIA}


def judge_outputs(results_dirs: Sequence[str | Path], judge: str, *, out: str | Path | None = None,
                  per_prompt: int = 1, max_prompts: int | None = None, max_new_tokens: int = 64,
                  bootstrap: int = 1000, backend_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rate the outputs with an LLM judge on an OpenAI-compatible endpoint (``openai:URL#MODEL``);
    write and return a ``human.json`` whose only rater is ``llm-judge:<model>``."""
    from .backends import DecodingSettings, Request, open_backend

    if not results_dirs:
        raise SteadyError("human judge needs at least one eval generation folder")
    if not judge.startswith("openai:"):
        raise SteadyError(f"--judge {judge!r}: expected openai:http://HOST:PORT/v1#MODEL (an OpenAI-compatible endpoint)")
    check_counts(per_prompt, max_prompts)
    if out is not None:
        check_out_file(out, "-o", inputs=results_dirs)
    pool, systems = pool_outputs(results_dirs, per_prompt=per_prompt, max_prompts=max_prompts)
    backend = open_backend(judge, **(backend_options or {}))
    settings = DecodingSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    width = max(3, len(str(len(pool))))
    requests = []
    for i, o in enumerate(pool, 1):
        o["item"] = f"item-{i:0{width}d}"
        requests.append(Request(o["item"], 0, 0, settings, messages=(("user", judge_prompt(o["prompt"], o["text"])),)))
    try:
        gens = backend.generate(requests)
    finally:
        backend.close()
    name = f"llm-judge:{backend.model}"
    ratings: dict[str, dict[str, int | None]] = {}
    answers = []
    for o, g in zip(pool, gens):
        scores = parse_judgement(g.text)
        ratings[o["item"]] = scores
        answers.append({"item": o["item"], "system": o["system"], "prompt_id": o["prompt_id"], "seed": o["seed"],
                        "sample": o["sample"], "scores": scores, "raw": g.text[:2000]})
    missing = {c: sum(1 for r in ratings.values() if r[c] is None) for c in CRITERIA}
    item_system = {o["item"]: o["system"] for o in pool}
    agg = aggregate({name: ratings}, item_system, list(systems), bootstrap=bootstrap)
    export_id = hashlib.sha256(json.dumps([[o["system"], o["prompt_id"], o["seed"], o["sample"], o["text"]] for o in pool],
                                          ensure_ascii=False).encode()).hexdigest()[:12]
    raters = [{"name": name, "kind": "llm-judge", "endpoint": backend.base_url, "model": backend.model,
               "rated": sum(1 for r in ratings.values() for v in r.values() if v is not None),
               "missing": sum(missing.values())}]
    doc = human_doc("llm-judge", raters, export_id, systems, agg, len(pool), bootstrap,
                     extra_sig={"judge_model": backend.model, "judge_url": backend.base_url,
                                "judge_decoding": settings.as_dict(),
                                "judge_prompt_sha256": hashlib.sha256(judge_prompt("", "").encode()).hexdigest()[:12]})
    doc["judge"] = {"label": "LLM judge - not human ratings", "model": backend.model, "url": backend.base_url,
                    "missing": missing, "answers": answers}
    if out is not None:
        write_json_atomic(out, doc)
    return doc
