"""Parsing a sweep's grid from the command line: ``--lrs``, ``--seeds`` and ``--set KEY=V1,V2``.

``--set`` takes any field of `TrainConfig` by its dotted TOML path - ``optim.batch_size``,
``model.dropout``, ``clip.method``, ``z_loss``, and ``model.overrides.FIELD`` for the preset's
``transformers`` config (width, depth) - reads each value as TOML would and checks it against the
field's type exactly as a config file is checked (`steadylm.config.check_value`), so a typo or a
wrong type fails before anything trains, with the flag in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from ..config import SECTIONS, TrainConfig, check_value, field_types
from ..errors import ConfigError

#: fields the sweep itself sets per cell
RESERVED = {"optim.lr": "--lrs", "seed": "--seeds", "out": "--out", "threads": "--workers"}


def parse_floats(text: str, flag: str, *, positive: bool = True) -> tuple[float, ...]:
    """``"1e-3,3e-3"`` -> ``(0.001, 0.003)``; refuses empty lists, repeats, and non-positive values."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one number, got {text!r}")
    out = []
    for x in items:
        try:
            v = float(x)
        except ValueError:
            raise ConfigError(f"{flag}: {x!r} is not a number (give comma-separated numbers, e.g. 1e-3,3e-3)") from None
        if not math.isfinite(v) or (positive and v <= 0):
            raise ConfigError(f"{flag}: {x!r} must be a positive number")
        out.append(v)
    if len(set(out)) != len(out):
        raise ConfigError(f"{flag} repeats a value: {text}")
    return tuple(out)


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one integer, got {text!r}")
    try:
        out = tuple(int(x) for x in items)
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in out):
        raise ConfigError(f"{flag} must be zero or more, got {text!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{flag} repeats a value: {text}")
    return out


def _literal(text: str, hint: Any) -> Any:
    """A ``--set`` value as a TOML file would hold it: ``true``/``false``, an integer, a number,
    ``none``/``null`` (None), else the text. A field that takes text keeps the text as typed; a float
    field turns an integer into a float (``0`` -> ``0.0``), as a flag would."""
    text = text.strip()
    low = text.lower()
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if low in ("none", "null") and type(None) in options:
        return None
    if str in options:
        return text
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            value = conv(text)
        except ValueError:
            continue
        return float(value) if float in options and int not in options else value
    return text


def parse_set(spec: str) -> tuple[str, tuple[Any, ...]]:
    """``"optim.batch_size=8,16"`` -> ``("optim.batch_size", (8, 16))``, typed by the field."""
    where = f"--set {spec}"
    key, eq, values = spec.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"{where}: expected KEY=V1,V2,... (e.g. optim.batch_size=8,16)")
    if key in RESERVED:
        raise ConfigError(f"{where}: {key} is set by {RESERVED[key]}")
    parts = key.split(".")
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    if parts[0] in SECTIONS:
        if len(parts) < 2:
            raise ConfigError(f"{where}: name a field of [{parts[0]}], e.g. {parts[0]}.{dataclasses.fields(SECTIONS[parts[0]])[0].name}")
        cls, name = SECTIONS[parts[0]], parts[1]
    elif parts[0] in top:
        if len(parts) > 1:
            raise ConfigError(f"{where}: {parts[0]} has no sub-fields")
        cls, name = TrainConfig, parts[0]
    else:
        known = sorted(top - set(SECTIONS)) + sorted(SECTIONS)
        close = difflib.get_close_matches(parts[0], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown setting {parts[0]!r}{hint}")
    fields = [f.name for f in dataclasses.fields(cls)]
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown field {name!r} in [{parts[0]}]{hint}")
    ann = field_types(cls)[name]
    if (typing.get_origin(ann) or ann) is dict:  # model.overrides.FIELD: checked against the preset's config
        if len(parts) != 3:
            raise ConfigError(f"{where}: give a field inside it, e.g. {key}.num_hidden_layers=2,4")
        ann = Any
    elif len(parts) > (2 if cls is not TrainConfig else 1):
        raise ConfigError(f"{where}: {'.'.join(parts[:2])} has no sub-fields")
    elif (typing.get_origin(ann) or ann) is list:
        raise ConfigError(f"{where}: {key} is a list and cannot be a sweep factor")

    def convert(t: str) -> Any:
        value = _literal(t, ann)
        check_value(value, ann, where)
        return value

    items = [x.strip() for x in values.split(",")]
    if not any(items) or any(x == "" for x in items):
        raise ConfigError(f"{where}: expected comma-separated values after '='")
    vals = tuple(convert(x) for x in items)
    if len(set(map(repr, vals))) != len(vals):
        raise ConfigError(f"{where}: a value is repeated")
    return key, vals


def parse_sets(specs: list[str] | None) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for spec in specs or []:
        key, vals = parse_set(spec)
        if key in out:
            raise ConfigError(f"--set {key} is given twice")
        out[key] = vals
    return out


def assign(d: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict in place, creating tables on the way."""
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def lookup(d: dict[str, Any], key: str) -> Any:
    for p in key.split("."):
        d = d[p]
    return d


__all__ = ["assign", "lookup", "parse_floats", "parse_ints", "parse_set", "parse_sets"]
