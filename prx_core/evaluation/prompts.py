"""Evaluation and training prompt sets of the scene generator.

Evaluation prompts are the generator's held-out colour x shape pairs (``is_eval_combination``), so
no evaluation caption is ever a training caption and the prompt-following score measures
generalisation to new combinations of seen words. Both lists are the first ``n`` scenes of their
split, which the generator balances: each value of each attribute appears ``n / values`` times,
give or take one.
"""
from __future__ import annotations

from prx_core.data.scenes import Scene, scene_for_index
from prx_core.recipe.schema import EvalConfig


def eval_scenes(n: int, seed: int) -> list[Scene]:
    """The first ``n`` held-out scenes for ``seed``: deterministic and evenly spread."""
    return [scene_for_index(index, "eval", seed) for index in range(n)]


def train_scenes(n: int, seed: int) -> list[Scene]:
    """The first ``n`` training scenes for ``seed`` (what the training data starts with)."""
    return [scene_for_index(index, "train", seed) for index in range(n)]


def evaluation_scenes(config: EvalConfig) -> list[Scene]:
    """The scenes ``[eval] prompts`` names: held-out pairs, or pairs training shows."""
    split = eval_scenes if config.prompts == "held-out" else train_scenes
    return split(config.num_prompts, config.seed)
