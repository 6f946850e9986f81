"""Human ratings of generated outputs: a blinded rating page, joining the ratings, and an LLM judge.

The seed names human judgement as the final word on fluency, consistency and logic. Three steps:

* ``export_ratings`` (``steadylm human export RESULTS... -o ratings.html``) reads the outputs of one
  or several ``eval generation`` folders (each a model or a setting: a *system*), takes the first
  ``per_prompt`` outputs of every prompt, shuffles them all with a seeded ``random.Random`` and
  writes one static, offline HTML page that shows prompt and output only - no model, folder,
  prompt id or seed - and asks for a 1-5 rating of each criterion. Its "Save ratings" button
  downloads a JSON file. Beside the page goes ``ratings.key.json``: the export id and, per item id,
  which system, prompt, seed and sample it was. Raters never need the key.
* ``import_ratings`` (``steadylm human import FILES... --key KEY``) checks every ratings file against
  the key (same export id, known item ids, integer ratings in 1-5; anything else is refused with
  the reason) and writes ``human.json``: per system and criterion the mean with a percentile-
  bootstrap CI over items (`steadylm.evaluate.stats.summarize`; an item's score is the mean of its
  raters, so the CI is over what was sampled: the items), and inter-rater agreement as
  Krippendorff's alpha (`report.krippendorff`; ordinal, the natural level for a 1-5 scale, and
  interval beside it).
* ``judge_outputs`` (``steadylm human judge RESULTS... --judge openai:URL#MODEL``) puts the same
  rubric to an LLM on an OpenAI-compatible endpoint and writes the same ``human.json`` format,
  labelled ``llm-judge:<model>`` throughout. An answer that does not hold a labelled integer 1-5
  for a criterion counts as *missing* for it - never guessed, never clamped - and the raw answer is
  kept for audit. In the spirit of MT-Bench's single-answer grading (Zheng et al. 2023, "Judging
  LLM-as-a-Judge with MT-Bench and Chatbot Arena"), with JSON output instead of ``[[rating]]``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import SteadyError
from ..fsutil import check_out_file, write_json_atomic, write_text_atomic
from ..io import iter_jsonl, read_json, read_json_object_or_empty

__all__ = ["CRITERIA", "RUBRIC", "export_ratings", "import_ratings", "judge_outputs", "parse_judgement",
           "load_outputs", "KEY_FORMAT", "RATINGS_FORMAT", "HUMAN_FORMAT"]

CRITERIA = ("fluency", "consistency", "logic")
SCALE = (1, 5)
#: What each criterion asks; shown on the rating page and sent to the LLM judge, word for word.
RUBRIC = {
    "fluency": "Is it grammatical, natural, readable text?",
    "consistency": "Does it stay consistent with itself and with the prompt, without contradicting either?",
    "logic": "Does it make sense: is its reasoning coherent and its content plausible?",
}
KEY_FORMAT = "steadylm-human-key/1"
RATINGS_FORMAT = "steadylm-human-ratings/1"
HUMAN_FORMAT = "steadylm-human/1"


# --------------------------------------------------------------------------- reading eval folders


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


def _check_counts(per_prompt: int, max_prompts: int | None) -> None:
    if per_prompt < 1:
        raise SteadyError(f"--per-prompt must be >= 1, got {per_prompt}")
    if max_prompts is not None and max_prompts < 1:
        raise SteadyError(f"--max-prompts must be >= 1, got {max_prompts}")


# --------------------------------------------------------------------------- export


def export_ratings(results_dirs: Sequence[str | Path], out: str | Path, *, per_prompt: int = 1, seed: int = 0,
                   max_prompts: int | None = None, title: str | None = None) -> dict[str, Any]:
    """Write the blinded rating page ``out`` and its key ``<out stem>.key.json`` beside it.
    Returns ``{"html", "key", "export_id", "items", "systems"}``."""
    if not results_dirs:
        raise SteadyError("human export needs at least one eval generation folder")
    _check_counts(per_prompt, max_prompts)
    out = check_out_file(out, "-o", inputs=results_dirs)
    key_path = check_out_file(out.with_name(out.stem + ".key.json"), "-o (its key file)", inputs=results_dirs)
    labels = _labels(results_dirs)
    pool = []
    systems = {}
    for label, d in zip(labels, results_dirs):
        loaded = load_outputs(d, per_prompt=per_prompt, max_prompts=max_prompts)
        systems[label] = {"results": str(Path(d).resolve()), "signature": loaded["signature"]}
        pool += [dict(o, system=label) for o in loaded["outputs"]]
    random.Random(seed).shuffle(pool)
    h = hashlib.sha256(json.dumps([seed, [[o["system"], o["prompt_id"], o["seed"], o["sample"], o["text"]]
                                          for o in pool]], ensure_ascii=False).encode())
    export_id = h.hexdigest()[:12]
    width = max(3, len(str(len(pool))))
    items = []
    key_items = {}
    for i, o in enumerate(pool, 1):
        iid = f"item-{i:0{width}d}"
        items.append({"id": iid, "prompt": o["prompt"], "text": o["text"]})
        key_items[iid] = {"system": o["system"], "prompt_id": o["prompt_id"], "seed": o["seed"], "sample": o["sample"]}
    key = {"format": KEY_FORMAT, "export_id": export_id, "steadylm": __version__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": seed, "per_prompt": per_prompt,
           "criteria": list(CRITERIA), "scale": list(SCALE), "systems": systems, "items": key_items}
    page = _env().get_template("human.html.j2").render(
        title=title or "Rate the outputs", export_id=export_id, items=items, criteria=CRITERIA, rubric=RUBRIC,
        scale=list(range(SCALE[0], SCALE[1] + 1)),
        meta={"export_id": export_id, "items": [it["id"] for it in items], "criteria": list(CRITERIA),
              "format": RATINGS_FORMAT, "scale": list(SCALE)})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(key_path, key)
    write_text_atomic(out, page)
    return {"html": str(out), "key": str(key_path), "export_id": export_id, "items": len(items),
            "systems": list(systems)}


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("steadylm.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


# --------------------------------------------------------------------------- import


def _load_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise SteadyError(f"{path}: no such {what}")
    obj = read_json(path, error=SteadyError, what=what)
    if not isinstance(obj, dict):
        raise SteadyError(f"{path}: not a {what} (expected a JSON object)")
    return obj


def _load_key(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    key = _load_json(path, "ratings key file")
    if key.get("format") != KEY_FORMAT or not isinstance(key.get("items"), dict) or not key.get("export_id"):
        raise SteadyError(f"{path}: not a ratings key (expected the .key.json that steadylm human export wrote)")
    # a key edited by hand (or cut short) is named here, not met as a TypeError while joining
    if not isinstance(key["export_id"], str):
        raise SteadyError(f"{path}: malformed ratings key: 'export_id' must be a string")
    if not isinstance(key.get("systems", {}), dict):
        raise SteadyError(f"{path}: malformed ratings key: 'systems' must be an object")
    for iid, item in key["items"].items():
        if not isinstance(item, dict) or not isinstance(item.get("system"), str):
            raise SteadyError(f"{path}: malformed ratings key: item {iid!r} has no 'system' name")
    return key


def _score(v: Any) -> int | None:
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


def _check_ratings(path: Path, doc: dict[str, Any], key: dict[str, Any], key_path: Path) -> dict[str, dict[str, int | None]]:
    """The ratings of one file as ``{item id: {criterion: 1-5 or None}}``, or a `SteadyError`
    saying why the file does not belong to this export."""
    if doc.get("format") != RATINGS_FORMAT or not isinstance(doc.get("items"), dict):
        raise SteadyError(f"{path}: not a ratings file saved from a steadylm rating page (format {RATINGS_FORMAT})")
    if doc.get("export_id") != key["export_id"]:
        raise SteadyError(f"{path}: ratings are for export {doc.get('export_id')!r}, but {key_path} is the key of "
                          f"export {key['export_id']!r}; use the key written beside that export's page")
    unknown = [i for i in doc["items"] if i not in key["items"]]
    if unknown:
        raise SteadyError(f"{path}: {len(unknown)} item id(s) not in export {key['export_id']}, e.g. {unknown[0]!r}")
    out: dict[str, dict[str, int | None]] = {}
    for iid, r in doc["items"].items():
        if r is None:
            r = {}
        if not isinstance(r, dict):
            raise SteadyError(f"{path}: item {iid!r}: expected an object of ratings, got {type(r).__name__}")
        extra = [c for c in r if c not in CRITERIA]
        if extra:
            raise SteadyError(f"{path}: item {iid!r}: unknown criterion {extra[0]!r} (expected {', '.join(CRITERIA)})")
        row: dict[str, int | None] = {}
        for c in CRITERIA:
            v = r.get(c)
            if v is None:
                row[c] = None
                continue
            s = _score(v) if not isinstance(v, str) else None  # a saved page writes numbers
            if s is None:
                raise SteadyError(f"{path}: item {iid!r}: {c} = {v!r} is not an integer rating from {SCALE[0]} to {SCALE[1]}")
            row[c] = s
        out[iid] = row
    if not any(v is not None for r in out.values() for v in r.values()):
        raise SteadyError(f"{path}: holds no ratings at all")
    return out


def _aggregate(ratings: dict[str, dict[str, dict[str, int | None]]], item_system: dict[str, str],
               systems: Sequence[str], *, bootstrap: int) -> dict[str, Any]:
    """Per system and criterion: mean over items (an item's score = mean of its raters) with a
    bootstrap CI; per criterion: Krippendorff's alpha over raters x items."""
    from ..evaluate.stats import summarize
    from .krippendorff import krippendorff_alpha

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


def _human_doc(kind: str, raters: list[dict[str, Any]], export_id: str, systems: dict[str, Any],
               agg: dict[str, Any], n_items: int, bootstrap: int, extra_sig: dict[str, Any] | None = None) -> dict[str, Any]:
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


def import_ratings(files: Sequence[str | Path], key: str | Path, *, out: str | Path | None = None,
                   bootstrap: int = 1000) -> dict[str, Any]:
    """Join ratings files against their export's key; write and return ``human.json``'s content."""
    if not files:
        raise SteadyError("human import needs at least one ratings file")
    if out is not None:
        check_out_file(out, "-o", inputs=[*files, key])
    key_path = Path(key)
    k = _load_key(key_path)
    ratings: dict[str, dict[str, dict[str, int | None]]] = {}
    raters = []
    seen_files = set()
    for f in files:
        p = Path(f)
        if p.resolve() in seen_files:
            raise SteadyError(f"{p}: given twice")
        seen_files.add(p.resolve())
        doc = _load_json(p, "ratings file")
        r = _check_ratings(p, doc, k, key_path)
        name = str(doc.get("rater") or "").strip() or p.stem
        base, n = name, 2
        while name in ratings:  # two people who typed the same name are still two raters
            name = f"{base} ({n})"
            n += 1
        ratings[name] = r
        raters.append({"name": name, "kind": "human", "file": str(p),
                       "rated": sum(1 for row in r.values() for v in row.values() if v is not None),
                       "saved": doc.get("saved")})
    item_system = {iid: v["system"] for iid, v in k["items"].items()}
    systems = list(k.get("systems") or dict.fromkeys(item_system.values()))
    agg = _aggregate(ratings, item_system, systems, bootstrap=bootstrap)
    doc = _human_doc("human", raters, k["export_id"], k.get("systems", {}), agg, len(item_system), bootstrap)
    if out is not None:
        write_json_atomic(out, doc)
    return doc


# --------------------------------------------------------------------------- LLM judge


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
                found[c] = _score(low[c])
    for c in CRITERIA:
        if found.get(c) is None:
            m = re.search(rf"(?<![a-z]){c}(?![a-z])[\"'*\s]*[:=][\"'*\s]*(\d+(?:\.\d+)?)(?![\d.])", text or "", re.I)
            if m:
                found[c] = _score(float(m.group(1)))
    return {c: found.get(c) for c in CRITERIA}


def judge_outputs(results_dirs: Sequence[str | Path], judge: str, *, out: str | Path | None = None,
                  per_prompt: int = 1, max_prompts: int | None = None, max_new_tokens: int = 64,
                  bootstrap: int = 1000, backend_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rate the outputs with an LLM judge on an OpenAI-compatible endpoint (``openai:URL#MODEL``);
    write and return a ``human.json`` whose only rater is ``llm-judge:<model>``."""
    from ..evaluate.backends import DecodingSettings, Request, open_backend

    if not results_dirs:
        raise SteadyError("human judge needs at least one eval generation folder")
    if not judge.startswith("openai:"):
        raise SteadyError(f"--judge {judge!r}: expected openai:http://HOST:PORT/v1#MODEL (an OpenAI-compatible endpoint)")
    _check_counts(per_prompt, max_prompts)
    if out is not None:
        check_out_file(out, "-o", inputs=results_dirs)
    labels = _labels(results_dirs)
    pool, systems = [], {}
    for label, d in zip(labels, results_dirs):
        loaded = load_outputs(d, per_prompt=per_prompt, max_prompts=max_prompts)
        systems[label] = {"results": str(Path(d).resolve()), "signature": loaded["signature"]}
        pool += [dict(o, system=label) for o in loaded["outputs"]]
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
    agg = _aggregate({name: ratings}, item_system, list(systems), bootstrap=bootstrap)
    export_id = hashlib.sha256(json.dumps([[o["system"], o["prompt_id"], o["seed"], o["sample"], o["text"]] for o in pool],
                                          ensure_ascii=False).encode()).hexdigest()[:12]
    raters = [{"name": name, "kind": "llm-judge", "endpoint": backend.base_url, "model": backend.model,
               "rated": sum(1 for r in ratings.values() for v in r.values() if v is not None),
               "missing": sum(missing.values())}]
    doc = _human_doc("llm-judge", raters, export_id, systems, agg, len(pool), bootstrap,
                     extra_sig={"judge_model": backend.model, "judge_url": backend.base_url,
                                "judge_decoding": settings.as_dict(),
                                "judge_prompt_sha256": hashlib.sha256(judge_prompt("", "").encode()).hexdigest()[:12]})
    doc["judge"] = {"label": "LLM judge - not human ratings", "model": backend.model, "url": backend.base_url,
                    "missing": missing, "answers": answers}
    if out is not None:
        write_json_atomic(out, doc)
    return doc
