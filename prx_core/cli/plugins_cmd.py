"""``prx plugins``: the installed techniques, where they come from, what each declares (effects,
roles, conflicts, requirements) and implements (hooks), and the plugins that failed to load; the
exit code says whether every plugin loaded."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prx_core import registry as plugin_registry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list installed techniques, their declarations and hooks, and plugins that failed to load",
        description="List every technique found through the 'prx.plugins' entry-point group (restrict with "
        "PRX_PLUGINS=name,name): where it comes from, the effects it declares (what the interference matrix "
        "checks), its roles (the exclusive hooks it implements), the techniques it conflicts with or requires, "
        "and its hooks. A technique's name is what a recipe puts in `plugins = [...]` and the name of its "
        "settings table. Plugins that failed to load are listed with the reason; the exit code is then 2 "
        "(0 when every plugin loaded), so a CI job can check an installation with this command.",
        epilog="Example: prx plugins --json",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.set_defaults(func=_plugins)


def plugins_report(registry: plugin_registry.Registry) -> dict[str, Any]:
    """What ``prx plugins --json`` prints."""
    techniques = []
    for name in sorted(registry.techniques):
        technique = registry.techniques[name]
        entry_point, module, version = registry.origins[name]
        techniques.append(
            {
                "name": name,
                "entry_point": entry_point,
                "module": module,
                "version": version,
                "summary": technique.summary,
                "roles": list(registry.roles(name)),
                "effects": list(technique.effects),
                "conflicts": list(technique.conflicts),
                "requires": list(technique.requires),
                "hooks": list(registry.hooks_by_technique[name]),
            }
        )
    broken = [{"entry_point": b.entry_point, "module": b.module, "error": b.error} for b in registry.broken]
    return {"techniques": techniques, "broken": broken}


def _plugins(args: argparse.Namespace) -> int:
    report = plugins_report(plugin_registry.discover())
    if args.json:
        print(json.dumps(report, indent=2))
    elif sys.stdout.isatty():
        _print_rich(report)
    else:
        _print_plain(report)
    return 2 if report["broken"] else 0


def _origin(item: dict[str, Any]) -> str:
    source = f"{item['entry_point']} -> {item['module']}" if item["entry_point"] else item["module"]
    return f"{source} {item['version']}".strip()


def _print_plain(report: dict[str, Any]) -> None:
    if not report["techniques"]:
        print("No techniques installed.")
    for item in report["techniques"]:
        print(f"{item['name']}  ({_origin(item)})")
        if item["summary"]:
            print(f"  {item['summary']}")
        for label in ("effects", "roles", "conflicts", "requires", "hooks"):
            if item[label]:
                print(f"  {label}: {', '.join(item[label])}")
    if report["broken"]:
        print("\nFailed to load:")
        for item in report["broken"]:
            print(f"  {item['entry_point']} ({item['module'] or 'not installed'}): {item['error']}")


def _print_rich(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain Text, so "[tread]" in a message is not read as markup

    console = Console()
    table = Table(title="Installed techniques")
    for column in ("technique", "from", "summary", "effects", "roles", "conflicts / requires", "hooks"):
        table.add_column(column, overflow="fold")
    for item in report["techniques"]:
        relations = [f"conflicts: {name}" for name in item["conflicts"]] + [f"requires: {name}" for name in item["requires"]]
        cells = (item["name"], _origin(item), item["summary"], "\n".join(item["effects"]), ", ".join(item["roles"]),
                 "\n".join(relations), "\n".join(item["hooks"]))
        table.add_row(*map(Text, cells))
    console.print(table)
    if report["broken"]:
        failed = Table(title="Plugins that failed to load", style="red")
        for column in ("entry point", "module", "error"):
            failed.add_column(column, overflow="fold")
        for item in report["broken"]:
            failed.add_row(*map(Text, (item["entry_point"], item["module"], item["error"])))
        console.print(failed)
