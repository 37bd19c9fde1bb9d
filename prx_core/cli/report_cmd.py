"""``prx report ABLATION_DIR``: rebuild an ablation's results, tables and plots from its folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from prx_core.ablation.report import build_report


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="rebuild an ablation's report (results.csv/json, report.md, plots/) from its folder",
        description="Read ablation.json and every finished run's summary.json and metrics.jsonl in the folder "
                    "and write results.csv, results.json, report.md and plots/*.png next to them.",
        epilog="Example: prx report runs/ablate-quickstart-one-at-a-time",
    )
    p.add_argument("folder", type=Path, help="the ablation folder that `prx ablate` wrote")
    p.add_argument("--quiet", action="store_true", help="print only the report's path")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    path = build_report(args.folder)
    console = Console(highlight=False)
    if not args.quiet:
        console.print(Markdown(path.read_text()))
    console.print(f"report: {path}", markup=False)
    return 0
