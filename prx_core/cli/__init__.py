"""The ``prx`` command. Each sub-command lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``func``; errors a user can fix exit with code 2 and one
paragraph, never a traceback. A plugin's failure is one paragraph too, its traceback in the run's
log.txt (or a file it names); an interrupted command exits with 128 + the signal (130 for Ctrl-C).

This module imports nothing heavy when it loads, so that Ctrl-C while torch is still importing is
an interruption like any other, not a traceback."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import tempfile

from prx_core.errors import PluginFailure, RunInterrupted, UserError

INTERRUPTED = 128 + signal.SIGINT

COMMANDS = ("run", "sample", "eval", "recipe", "plugins", "data", "ablate", "report", "cost", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prx",
        description="Train pixel-space text-to-image diffusion transformers from composable techniques.",
        epilog="Start with: prx run recipes/quickstart.toml   (see README.md)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"prx_core.cli.{name}_cmd").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except PluginFailure as failure:
        if failure.details and not failure.details_at:  # no run log to hold the traceback: a file of its own
            with tempfile.NamedTemporaryFile("w", prefix="prx-plugin-failure-", suffix=".txt", delete=False) as file:
                file.write(f"error: {failure}\n{failure.details}")
            failure.details_at = file.name
        print(f"error: {failure}", file=sys.stderr)
        return failure.exit_code
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:  # the run said what it saved
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def entry() -> None:
    """The ``prx`` console script and ``python -m prx_core``: :func:`main`, then the exit that
    is safe under torchrun (:func:`prx_core.distributed.exit_process`)."""
    try:
        from prx_core.distributed import exit_process
    except KeyboardInterrupt:  # Ctrl-C while torch imports
        print("interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    exit_process(main)
