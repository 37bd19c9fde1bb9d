"""Arguments and loading shared by the commands that take a recipe."""
from __future__ import annotations

import argparse

from prx_core.plugins import Registry, discover
from prx_core.recipe.loader import load_recipe
from prx_core.recipe.schema import Recipe


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe TOML file, e.g. recipes/quickstart.toml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
        help="override a recipe value (repeatable), e.g. --set train.steps=100 --set 'plugins=[\"tread\"]'",
    )


def load_from_args(args: argparse.Namespace) -> tuple[Recipe, Registry]:
    registry = discover()
    return load_recipe(args.recipe, args.overrides, registry), registry
