"""What ``steadylm report`` reads: every kind of run folder and result file, told apart by its files and keys.

Kinds (``Input.kind``):

* ``training`` - a run folder of ``steadylm train`` (``metrics.jsonl``; ``summary.json``,
  ``config.json`` and ``run.json`` when it finished);
* ``demo`` - the folder of ``steadylm demo`` (``demo.json``): its run folders become ``training``
  inputs;
* ``generation`` - an ``eval generation`` folder or its ``results.json`` (``signature`` plus
  ``consistency`` / ``degeneration`` / ...); one whose backend is an ensemble is also an ensemble;
* ``perplexity`` - the JSON that ``eval perplexity --json`` prints (``token_perplexity``);
* ``robustness`` - an ``eval robustness`` folder or its ``results.json`` (per-perturbation ``kinds``
  with ``aggregate`` / ``adversarial``, or a ``robustness`` key);
* ``sweep`` - a ``steadylm sweep`` folder or its ``sweep.json`` (``recipes``);
* ``study`` - the other studies: ``clip_sweep.json`` (``recommended`` + ``grid``) and
  ``decoding_sweep.json`` (``cells`` + ``factors``), shown beside the LR sweep with their own plot;
* ``human`` - ``human.json`` from ``steadylm human import`` or ``human judge``;
* ``other`` - any other JSON object that carries a steadylm signature: shown as key/value tables,
  so a result kind this module does not know yet never breaks the report.

A folder holding none of these files but whose sub-folders are known kinds (``runs/``) stands for
them all. Anything else is a `SteadyError` that names the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SteadyError
from ..io import read_json, read_json_object_or_empty

__all__ = ["Input", "collect_inputs", "detect", "version_of"]

_GENERATION_KEYS = ("consistency", "degeneration", "determinism", "relevance", "reference", "contradiction")
_EXPECTED = ("expected a training run folder, a steadylm demo folder, an eval results folder or results.json, "
             "a sweep folder or sweep.json / clip_sweep.json / decoding_sweep.json, human.json, "
             "or the output of eval perplexity --json")


@dataclass
class Input:
    """One thing the report shows."""

    path: Path
    kind: str
    label: str
    data: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    signature: str = ""
    notes: list[str] = field(default_factory=list)
    """Problems found while reading (a missing file named by the input): shown as warnings."""
    children: list["Input"] = field(default_factory=list)
    source: Path | None = None
    """The JSON file read (for a folder input: the file inside it)."""


def _read_json(path: Path) -> Any:
    return read_json(path, error=SteadyError)


def version_of(obj: Any) -> str | None:
    """The steadylm version that wrote a result: ``signature.steadylm``, a signature string
    ``steadylm:X|...``, or a top-level ``steadylm`` key."""
    if not isinstance(obj, dict):
        return None
    sig = obj.get("signature")
    if isinstance(sig, dict):
        if isinstance(sig.get("steadylm"), str):
            return sig["steadylm"]
        sig = sig.get("string")
    if isinstance(sig, str):
        m = re.match(r"steadylm:([^|\s]+)", sig)
        if m:
            return m.group(1)
    if isinstance(obj.get("steadylm"), str):
        return obj["steadylm"]
    return None


def _sig_string(obj: dict[str, Any]) -> str:
    sig = obj.get("signature")
    if isinstance(sig, dict):
        return str(sig.get("string") or "")
    return sig if isinstance(sig, str) else ""


def _training(run_dir: Path, label: str | None = None) -> Input:
    run = read_json_object_or_empty(run_dir / "run.json")
    summary = read_json_object_or_empty(run_dir / "summary.json")
    inp = Input(run_dir, "training", label or run_dir.name, data={"summary": summary, "config": read_json_object_or_empty(run_dir / "config.json"),
                                                               "run": run},
                version=run.get("steadylm") if isinstance(run.get("steadylm"), str) else version_of({"signature": summary.get("val_signature")}),
                signature=str(summary.get("val_signature") or ""))
    if not summary:
        inp.notes.append(f"{run_dir / 'summary.json'} is missing: the run did not finish (killed?); showing metrics.jsonl only")
    return inp


def _classify(obj: Any, path: Path, folder: Path | None = None) -> Input:
    """An `Input` for a parsed JSON document, by its keys."""
    where = folder or path
    if not isinstance(obj, dict):
        raise SteadyError(f"{path}: not a steadylm result (a JSON {type(obj).__name__}, not an object); {_EXPECTED}")
    fmt = str(obj.get("format") or "")
    if fmt.startswith("steadylm-human-ratings/"):
        raise SteadyError(f"{path}: a ratings file from a rating page; join ratings files with steadylm human import "
                          f"and report the human.json it writes")
    if fmt.startswith("steadylm-human-key/"):
        raise SteadyError(f"{path}: the key of a human export; steadylm human import reads it with --key")
    if folder is not None:
        label = folder.resolve().name
    elif path.name in _NAMED:
        label = path.parent.resolve().name  # the file name says nothing; its folder does
    else:
        label = path.stem
    ver, sig = version_of(obj), _sig_string(obj)
    if isinstance(obj.get("recipes"), dict):
        return Input(where, "sweep", label, obj, ver, sig, source=path)
    if ("recommended" in obj and isinstance(obj.get("grid"), list)) or \
            (isinstance(obj.get("cells"), list) and isinstance(obj.get("factors"), dict)):
        return Input(where, "study", label, obj, ver, sig, source=path)
    if fmt.startswith("steadylm-human/"):
        return Input(where, "human", label, obj, ver, sig, source=path)
    if isinstance(obj.get("summaries"), dict) and "seconds" in obj:
        return _demo(path.parent, obj)
    if "token_perplexity" in obj:
        return Input(where, "perplexity", label, obj, ver, sig, source=path)
    if isinstance(obj.get("robustness"), dict) or (isinstance(obj.get("kinds"), dict)
                                                   and ("aggregate" in obj or "adversarial" in obj)):
        return Input(where, "robustness", label, obj, ver, sig, source=path)
    if "signature" in obj and any(k in obj for k in _GENERATION_KEYS):
        return Input(where, "generation", label, obj, ver, sig, source=path)
    if "final_loss" in obj and "val_signature" in obj and (path.parent / "metrics.jsonl").is_file():
        return _training(path.parent)
    if ver is not None:
        return Input(where, "other", label, obj, ver, sig, source=path)
    raise SteadyError(f"{path}: not a steadylm result (no signature and none of the known keys); {_EXPECTED}")


def _demo(folder: Path, obj: dict[str, Any]) -> Input:
    inp = Input(folder, "demo", folder.name, obj, version=None, signature="")
    for name in (obj.get("summaries") or {}):
        run_dir = folder / name
        if (run_dir / "metrics.jsonl").is_file():
            child = _training(run_dir, label=name)
            inp.children.append(child)
        else:
            inp.notes.append(f"{run_dir}: run folder named in {folder / 'demo.json'} is missing")
    for p in obj.get("plots") or []:
        if isinstance(p, str) and not _exists_under(folder, p):
            inp.notes.append(f"{p}: plot named in {folder / 'demo.json'} is missing (the report draws its own)")
    return inp


def _exists_under(folder: Path, name: str) -> bool:
    """Whether ``name`` (as written by a command run from some other working folder, e.g.
    ``runs/demo/baseline/plots/loss.png``) exists as given or as any of its tails under ``folder``."""
    p = Path(name)
    if p.is_absolute():
        return p.is_file()
    parts = p.parts
    return p.is_file() or any(folder.joinpath(*parts[k:]).is_file() for k in range(len(parts)))


#: result files a folder may hold, in the order they decide its kind (a sweep folder also holds runs)
_NAMED = ("sweep.json", "clip_sweep.json", "decoding_sweep.json", "human.json", "results.json")


def _known_folder(d: Path) -> bool:
    return any((d / f).is_file() for f in ("metrics.jsonl", "demo.json") + _NAMED)


def detect(path: str | Path) -> list[Input]:
    """The inputs that ``path`` stands for (one, or several for a folder of folders)."""
    p = Path(path)
    if not p.exists():
        raise SteadyError(f"{p}: no such file or folder")
    if p.is_dir():
        for name in _NAMED[:3]:
            if (p / name).is_file():
                return [_classify(_read_json(p / name), p / name, p)]
        if (p / "demo.json").is_file():
            return [_demo(p, _read_json(p / "demo.json"))]
        if (p / "metrics.jsonl").is_file():
            return [_training(p)]
        for name in _NAMED[3:]:
            if (p / name).is_file():
                return [_classify(_read_json(p / name), p / name, p)]
        subs = [d for d in sorted(p.iterdir()) if d.is_dir() and _known_folder(d)]
        if subs:
            return [inp for d in subs for inp in detect(d)]
        raise SteadyError(f"{p}: not a steadylm run or results folder (none of metrics.jsonl, demo.json, "
                          f"{', '.join(_NAMED)} here or one level down); {_EXPECTED}")
    if p.name == "metrics.jsonl":
        return [_training(p.parent)]
    if p.suffix.lower() != ".json":
        raise SteadyError(f"{p}: not a steadylm result (not a .json file or a run folder); {_EXPECTED}")
    return [_classify(_read_json(p), p)]


def collect_inputs(paths: list[str | Path]) -> list[Input]:
    """Every input once, in the order given; a demo is followed by its run folders."""
    if not paths:
        raise SteadyError("report needs at least one run folder or result file")
    out: list[Input] = []
    seen: set[tuple[Path, str]] = set()
    for p in paths:
        for top in detect(p):
            for inp in [top, *top.children]:
                key = (inp.path.resolve(), inp.kind)
                if key not in seen:
                    seen.add(key)
                    out.append(inp)
    labels: dict[str, int] = {}
    for inp in out:  # two folders called "baseline" stay apart in every table
        labels[inp.label] = labels.get(inp.label, 0) + 1
    for inp in out:
        if labels[inp.label] > 1:
            inp.label = str(inp.path)
    return out
