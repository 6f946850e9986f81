"""Studies of training and decoding: learning-rate sensitivity and seed variance over recipes
(`sweep`), the clipping threshold (`clip`), and the temperature / top-p trade-off (`decoding`).

Each writes one JSON result with a signature and a PNG plot into its ``--out`` folder, runs its
cells in parallel worker processes (`executor`), and resumes: running the same command again
redoes nothing that finished.
"""

from .recipes import BUILTIN_RECIPES, Recipe, load_recipe, load_recipes
from .sweep import LRSweep, capped_loss, run_sweep, summarize_runs

__all__ = ["BUILTIN_RECIPES", "LRSweep", "Recipe", "capped_loss", "load_recipe", "load_recipes", "run_sweep",
           "summarize_runs"]
