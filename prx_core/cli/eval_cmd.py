"""``prx eval CHECKPOINT``: the prompt-following score on held-out scene prompts."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prx_core.cli.common import add_set_argument


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score a checkpoint's prompt following on held-out prompts",
        description="Generate the held-out evaluation scenes ([eval] num_prompts) with the checkpoint's EMA\n"
                    "weights and score colour, shape, size, position, count and background with the automatic\n"
                    "checker, and the Fréchet distance to the scene generator's renders\n"
                    "([eval] distribution_metrics). Writes eval.json into the run folder (or --out).\n\n"
                    "With --set eval.prompts=training it scores colour x shape pairs that training shows\n"
                    "instead, into eval_training.json: an attribute low on both cannot be rendered yet, one\n"
                    "low only on the held-out pairs cannot be combined with the others yet.",
        epilog="Example: prx eval runs/quickstart --set eval.num_prompts=128\n"
               "(and on pairs training shows: add --set eval.prompts=training)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="run folder (runs/NAME), its checkpoints/ folder or one step folder")
    p.add_argument("--out", type=Path, default=None, help="where to write the JSON (default: RUN/eval.json, or RUN/eval_training.json)")
    add_set_argument(p, "override the run's recipe, e.g. --set eval.steps=50")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prx_core.evaluation.prompt_following import evaluate
    from prx_core.inference import load_for_sampling, run_folder_of
    from prx_core.runfolder import EVAL, EVAL_TRAINING

    inf = load_for_sampling(args.checkpoint, tuple(args.overrides))
    result = {"step": inf.step, **evaluate(inf.model, inf.text_encoder, inf.recipe.eval, inf.recipe.sample,
                                           inf.resolution, inf.guidance, inf.autocast)}
    name = EVAL if inf.recipe.eval.prompts == "held-out" else EVAL_TRAINING
    out = args.out or run_folder_of(args.checkpoint) / name
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"{inf.recipe.eval.num_prompts} {inf.recipe.eval.prompts} prompts, step {inf.step}")
    for key, value in {**result["prompt_following"], **result.get("distribution", {})}.items():
        print(f"{key:16s} {value:.3f}")
    print(f"wrote {out}")
    return 0
