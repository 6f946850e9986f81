"""Recipes: named presets of training options, merged over `TrainConfig`'s defaults.

A recipe is a plain dict in the shape of a ``--config`` TOML file (``{"clip": {"method": ...}}``).
The built-in ones:

* ``baseline`` - what a careful plain run does: global-norm clipping at 1.0 and AdamW with
  decoupled weight decay 0.1; no spike/NaN guard, no z-loss, no QK-norm;
* ``stabilized`` - steadylm's best recipe: the QK-norm variant of the sweep's preset
  (``tiny`` -> ``tiny-qknorm``, the fix Wortsman et al. 2023 give for attention-logit growth),
  z-loss 1e-4 (their fix for output-logit divergence, after PaLM), ZClip (Kumar et al. 2025) and
  the spike/NaN guard skipping bad steps (OLMo-core's defaults), with the same weight decay.

Anything else is read as a TOML (or JSON) file with `load_config_file`; its name in results is the
file's stem. The string ``{preset}`` in a recipe's ``model.preset`` stands for the sweep's
``--preset``, so one recipe serves every model size.

Precedence, lowest first: `TrainConfig`'s defaults < the sweep's common settings (data, context,
vocabulary, batch size, ``--preset``, ``--steps``) < the recipe < the grid (``--lrs``, ``--seeds``,
``--set``). A recipe file may not set ``out``, ``seed`` or ``optim.lr``: the sweep decides those.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig, load_config_file, merge
from ..errors import ConfigError

#: name -> (one-line description, options)
BUILTIN_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": (
        "global-norm clipping at 1.0, AdamW weight decay 0.1; no guard, no z-loss, no QK-norm",
        {"model": {"preset": "{preset}"}, "clip": {"method": "norm", "max_norm": 1.0},
         "optim": {"weight_decay": 0.1}, "guard": {"action": "off"}, "z_loss": 0.0},
    ),
    "stabilized": (
        "QK-norm preset, z-loss 1e-4, ZClip, spike/NaN guard (skip), AdamW weight decay 0.1",
        {"model": {"preset": "{preset}-qknorm"}, "clip": {"method": "zclip"},
         "optim": {"weight_decay": 0.1}, "guard": {"action": "skip"}, "z_loss": 1e-4},
    ),
}


@dataclass
class Recipe:
    """A named set of training options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "builtin"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source, "options": self.options}


def base_preset(preset: str) -> str:
    """The plain preset of a size: ``tiny-qknorm`` -> ``tiny``."""
    return preset.removesuffix("-qknorm")


def _fill_preset(options: dict[str, Any], preset: str, name: str) -> dict[str, Any]:
    from ..models.presets import PRESETS

    out = copy.deepcopy(options)
    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("preset"), str) and "{preset}" in model["preset"]:
        wanted = model["preset"].replace("{preset}", base_preset(preset))
        if wanted not in PRESETS:
            variants = [p for p in PRESETS if p.endswith(model["preset"].replace("{preset}", ""))]
            raise ConfigError(f"recipe {name!r} needs preset {wanted!r}, which does not exist; "
                              f"use --preset {' or '.join(base_preset(v) for v in variants) or 'another size'}")
        model["preset"] = wanted
    elif not (isinstance(model, dict) and (model.get("preset") or model.get("path"))):
        out.setdefault("model", {})["preset"] = preset  # a recipe file that names no model trains the sweep's
    return out


def load_recipe(spec: str, preset: str = "tiny",
                extra: dict[str, tuple[str, dict[str, Any]]] | None = None) -> Recipe:
    """A built-in recipe by name (or one of ``extra``, a named study's own recipes, in the same
    shape as `BUILTIN_RECIPES`), or a TOML/JSON file by path; ``{preset}`` filled in."""
    if extra and spec in extra:
        desc, options = extra[spec]
        recipe = Recipe(spec, _fill_preset(options, preset, spec), desc, "study")
    elif spec in BUILTIN_RECIPES:
        desc, options = BUILTIN_RECIPES[spec]
        recipe = Recipe(spec, _fill_preset(options, preset, spec), desc, "builtin")
    else:
        p = Path(spec)
        if p.suffix.lower() in (".toml", ".json") or p.is_file():
            if not p.is_file():
                raise ConfigError(f"--recipes {spec}: no such file")
            try:
                options = load_config_file(p)
            except ConfigError as e:
                raise ConfigError(f"--recipes {e}".replace("--config ", "")) from None
            for key in ("out", "seed"):
                if key in options:
                    raise ConfigError(f"recipe {spec}: sets {key!r}, which the sweep decides; remove it")
            if "lr" in options.get("optim", {}):
                raise ConfigError(f"recipe {spec}: sets optim.lr, which the sweep's --lrs decides; remove it")
            recipe = Recipe(p.stem, _fill_preset(options, preset, p.stem), f"from {spec}", str(p))
        else:
            close = difflib.get_close_matches(spec, list(BUILTIN_RECIPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown recipe {spec!r}{hint} (built-in: {', '.join(BUILTIN_RECIPES)}; "
                              "or give a .toml file)")
    try:  # fail now, naming the recipe, rather than in a worker
        TrainConfig.from_dict(merge({}, recipe.options), origin=f"recipe {recipe.name}")
    except ConfigError as e:
        raise ConfigError(str(e)) from None
    return recipe


def load_recipes(specs: list[str], preset: str = "tiny",
                 extra: dict[str, tuple[str, dict[str, Any]]] | None = None) -> list[Recipe]:
    if not specs:
        raise ConfigError("--recipes needs at least one recipe")
    recipes = [load_recipe(s, preset, extra) for s in specs]
    names = [r.name for r in recipes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"--recipes names {dup[0]!r} twice (recipe files are named by their stem)")
    return recipes


__all__ = ["BUILTIN_RECIPES", "Recipe", "base_preset", "load_recipe", "load_recipes"]
