"""Recipes: a YAML file from data and a baseline to named variants (chains of cached
steps), measured side by side with a constraint-driven choice. See docs/recipes.md."""

from edgeopt.recipe.runner import plan, run_recipe
from edgeopt.recipe.schema import (
           BaselineConfig,
           Recipe,
           StepSpec,
           TargetConfig,
           load_recipe,
           parse_recipe,
)
from edgeopt.recipe.steps import STEPS

__all__ = ["STEPS", "BaselineConfig", "Recipe", "StepSpec", "TargetConfig", "load_recipe", "parse_recipe",
           "plan", "run_recipe"]
