"""Arguments and loading shared by the commands that take a recipe."""
from __future__ import annotations

import argparse

from prx_core import registry as plugin_registry
from prx_core.recipe.loader import load_recipe
from prx_core.recipe.schema import Recipe

SET_HELP = (
    "override one recipe value, e.g. --set train.steps=100 or --set 'plugins=[\"tread\",\"repa\"]' "
    "(the value is read as TOML, else as plain text; repeatable; wins over the recipe file)"
)


def add_set_argument(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """``--set TABLE.KEY=VALUE`` (repeatable) into ``args.overrides``, as every recipe command takes it."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE", help=help)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe TOML file, e.g. recipes/quickstart.toml")
    add_set_argument(parser)


def load_from_args(args: argparse.Namespace) -> tuple[Recipe, plugin_registry.Registry]:
    registry = plugin_registry.discover()  # looked up at call time, so that tests can substitute it
    return load_recipe(args.recipe, args.overrides, registry), registry
