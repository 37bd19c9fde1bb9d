"""Evaluations during training (``[eval] every = N``): quality against training time.

Every N steps the EMA weights are scored on the held-out prompts with the prompt-following
checker (the same prompts, sampler and guidance as the final evaluation, without the
distribution metrics, whose feature networks cost more than the checker). Each evaluation is one
row of ``evals.jsonl``: the step, the phase, ``wall_s`` (seconds of training so far, on the same
clock as ``metrics.jsonl``: the loop stops that clock while it evaluates, so evaluating more often
does not make a run look slower) and ``eval_s`` (what the evaluation took). The final evaluation
stays in ``eval.json``; the run summary lists every row and the final one under ``evals``.

Evaluation draws its noise from its own generator and builds the sampling model without touching
the training random streams, so a run with periodic evaluations trains exactly as one without.
"""
from __future__ import annotations

import time
from typing import Any

import attrs

from prx_core.evaluation.prompt_following import evaluate
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.schema import Recipe
from prx_core.runfolder import EVALS, RunFolder
from prx_core.types import Guidance


def eval_due(every: int, step: int, total_steps: int) -> bool:
    """Whether the step just finished gets a periodic evaluation (the last step has the final one)."""
    return every > 0 and step % every == 0 and step < total_steps


def evaluate_during_training(model: PRXDenoiser, text_encoder: Any, guidance: Guidance | None, recipe: Recipe,
                             step: int, phase: str, resolution: int, autocast: Any, training_s: float,
                             folder: RunFolder) -> dict[str, Any]:
    """Score ``model`` at ``resolution`` and append the row to ``evals.jsonl``; returns the row."""
    started = time.monotonic()
    config = attrs.evolve(recipe.eval, distribution_metrics=[])
    result = evaluate(model, text_encoder, config, recipe.sample, resolution, guidance, autocast)
    row = {"step": step, "phase": phase, "wall_s": round(training_s, 3),
           "eval_s": round(time.monotonic() - started, 3), **result}
    folder.append_row(EVALS, row)
    return row


def evaluation_curve(folder: RunFolder, final: dict[str, Any], wall_s: float) -> list[dict[str, Any]]:
    """The periodic rows and the final evaluation as one more row (step, wall_s, scores)."""
    last = {"step": final["step"], "phase": "final", "wall_s": round(wall_s, 3),
            **{k: v for k, v in final.items() if k != "step"}}
    return [*(row for row in folder.read_rows(EVALS) if row["step"] < final["step"]), last]


def curve_line(curve: list[dict[str, Any]]) -> dict[str, str]:
    """The summary table's line for the curve: ``step: score`` for each evaluation."""
    if not curve:
        return {}
    points = ", ".join(f"{row['step']}: {row['prompt_following']['overall']:.2f}" for row in curve)
    return {"prompt following by step": points}
