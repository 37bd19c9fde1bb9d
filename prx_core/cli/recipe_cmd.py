"""``prx recipe show|validate``: print a recipe as the run will see it, or check it without running."""
from __future__ import annotations

import argparse
import sys

from prx_core import registry as plugin_registry
from prx_core.cli.common import add_set_argument
from prx_core.plan import model_config
from prx_core.recipe.annotate import annotated_toml
from prx_core.recipe.loader import dump_recipe_toml, load_recipe
from prx_core.techniques import TechniqueSet
from prx_core.types import RunContext


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipe",
        help="show or check a recipe (TOML) with its extends and --set overrides applied",
        description="Work with recipes: TOML files with one table per core part and per technique.",
        epilog="Example: prx recipe show recipes/quickstart.toml --set train.steps=100",
    )
    actions = parser.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="print the resolved recipe: every setting, defaults included",
        description="Print the recipe as a run will use it: files it extends merged, --set applied, every "
        "default filled in. The output is itself a recipe: save it and run it to repeat the exact settings. "
        "With --constraints, each key is followed by a comment saying what its value may be (the rules the "
        "recipe is checked against), and each table by its cross-field rules.",
        epilog="Example: prx recipe show recipes/quickstart.toml --constraints",
    )
    show.add_argument("recipe", metavar="RECIPE", help="path to a recipe file, e.g. recipes/quickstart.toml")
    add_set_argument(show)
    show.add_argument("--constraints", action="store_true",
                      help="add each key's allowed values and each table's rules as TOML comments")
    show.set_defaults(func=_show)

    validate = actions.add_parser(
        "validate",
        help="check a recipe without training: keys, types, plugins, conflicts, and this machine",
        description="Load the recipe, build its techniques and run their checks, then check that this machine "
        "has what the run needs (the device, the data sources, the text encoder, the evaluation's metric "
        "networks), without any training compute. Exit code 0 when the recipe can run here, 2 with the problems "
        "listed otherwise.",
        epilog="Example: prx recipe validate recipes/quickstart.toml   (a recipe for another machine: prx recipe "
        "validate recipes/speedrun.toml --skip-local-checks)",
    )
    validate.add_argument("recipe", metavar="RECIPE", help="path to a recipe file, e.g. recipes/speedrun.toml")
    add_set_argument(validate)
    validate.add_argument("--skip-local-checks", action="store_true",
                          help="check the recipe for another machine: leave out the device, data paths, text "
                          "encoder and metric weights of this one")
    validate.set_defaults(func=_validate)


def _show(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    text = annotated_toml(recipe) if args.constraints else dump_recipe_toml(recipe)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "toml", background_color="default"))
    else:
        sys.stdout.write(text)
    return 0


def _validate(args: argparse.Namespace) -> int:
    registry = plugin_registry.discover()
    recipe = load_recipe(args.recipe, args.overrides, registry=registry)
    techniques = TechniqueSet(recipe, registry, RunContext(recipe=recipe, seed=recipe.seed), model_config(recipe))
    selected = ", ".join(techniques.names) or "no techniques"
    if args.skip_local_checks:
        print(f"{args.recipe}: ok ({selected}; this machine not checked)")
        return 0
    from prx_core.train.preflight import check_local

    check_local(recipe)
    print(f"{args.recipe}: ok ({selected}; this machine has its device, data, text encoder and metric networks)")
    return 0
