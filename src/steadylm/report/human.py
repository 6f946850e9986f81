"""Human ratings of generated outputs: a blinded rating page, and joining the ratings.

The seed names human judgement as the final word on fluency, consistency and logic. Two steps here,
and a third in evaluation:

* ``export_ratings`` (``steadylm human export RESULTS... -o ratings.html``) reads the outputs of one
  or several ``eval generation`` folders (each a model or a setting: a *system*), takes the first
  ``per_prompt`` outputs of every prompt, shuffles them all with a seeded ``random.Random`` and
  writes one static, offline HTML page that shows prompt and output only - no model, folder,
  prompt id or seed - and asks for a 1-5 rating of each criterion. Its "Save ratings" button
  downloads a JSON file. Beside the page goes ``ratings.key.json``: the export id and, per item id,
  which system, prompt, seed and sample it was. Raters never need the key.
* ``import_ratings`` (``steadylm human import FILES... --key KEY``) checks every ratings file against
  the key (same export id, known item ids, integer ratings in 1-5; anything else is refused with
  the reason) and writes ``human.json`` (`steadylm.evaluate.ratings`: means with bootstrap CIs over
  items, Krippendorff's alpha between raters).
* the LLM judge (``steadylm human judge``) runs a model, so it is evaluation work:
  `steadylm.evaluate.judge.judge_outputs`, writing the same ``human.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import SteadyError
from ..evaluate.ratings import (CRITERIA, HUMAN_FORMAT, RUBRIC, SCALE, aggregate, check_counts, human_doc,
                                load_outputs, pool_outputs, score)
from ..fsutil import check_out_file, write_json_atomic, write_text_atomic
from ..io import read_json

__all__ = ["CRITERIA", "RUBRIC", "export_ratings", "import_ratings", "load_outputs", "KEY_FORMAT", "RATINGS_FORMAT",
           "HUMAN_FORMAT"]

KEY_FORMAT = "steadylm-human-key/1"
RATINGS_FORMAT = "steadylm-human-ratings/1"


# --------------------------------------------------------------------------- export


def export_ratings(results_dirs: Sequence[str | Path], out: str | Path, *, per_prompt: int = 1, seed: int = 0,
                   max_prompts: int | None = None, title: str | None = None) -> dict[str, Any]:
    """Write the blinded rating page ``out`` and its key ``<out stem>.key.json`` beside it.
    Returns ``{"html", "key", "export_id", "items", "systems"}``."""
    if not results_dirs:
        raise SteadyError("human export needs at least one eval generation folder")
    check_counts(per_prompt, max_prompts)
    out = check_out_file(out, "-o", inputs=results_dirs)
    key_path = check_out_file(out.with_name(out.stem + ".key.json"), "-o (its key file)", inputs=results_dirs)
    pool, systems = pool_outputs(results_dirs, per_prompt=per_prompt, max_prompts=max_prompts)
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
            s = score(v) if not isinstance(v, str) else None  # a saved page writes numbers
            if s is None:
                raise SteadyError(f"{path}: item {iid!r}: {c} = {v!r} is not an integer rating from {SCALE[0]} to {SCALE[1]}")
            row[c] = s
        out[iid] = row
    if not any(v is not None for r in out.values() for v in r.values()):
        raise SteadyError(f"{path}: holds no ratings at all")
    return out


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
    agg = aggregate(ratings, item_system, systems, bootstrap=bootstrap)
    doc = human_doc("human", raters, k["export_id"], k.get("systems", {}), agg, len(item_system), bootstrap)
    if out is not None:
        write_json_atomic(out, doc)
    return doc
