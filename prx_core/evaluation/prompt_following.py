"""Evaluating a model on held-out scene prompts: the prompt-following score of the checker, and
distribution metrics of the same images against the scene generator's renders of the prompts."""
from __future__ import annotations

import numpy as np
import torch

from prx_core.data.scenes import render_scene
from prx_core.evaluation.checker import prompt_following_score
from prx_core.evaluation.frechet import distribution_metrics, load_feature_network
from prx_core.evaluation.prompts import evaluation_scenes
from prx_core.generate import generate
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.schema import EvalConfig, SampleConfig
from prx_core.text import TextEncoder
from prx_core.types import Guidance


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 arrays -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def evaluate(
    model: PRXDenoiser,
    text_encoder: TextEncoder,
    eval_config: EvalConfig,
    sample_config: SampleConfig,
    resolution: int,
    guidance: Guidance | None = None,
    autocast: torch.dtype | None = None,
) -> dict:
    """``{"prompts": "held-out" | "training", "prompt_following": {"overall", "color", ...},
    "distribution": {"fd_efficientnet", ...}}``."""
    scenes = evaluation_scenes(eval_config)
    images = generate(model, text_encoder, [s.caption() for s in scenes], (resolution, resolution), sample_config,
                      steps=eval_config.steps, guidance=guidance, seed=eval_config.seed, autocast=autocast)
    result = {"prompts": eval_config.prompts, "prompt_following": prompt_following_score(images, scenes)}
    if eval_config.distribution_metrics:
        reference = [render_scene(s, resolution, resolution, index=i, seed=eval_config.seed)
                     for i, s in enumerate(scenes)]
        device = next(model.parameters()).device
        networks = [load_feature_network(spec, device) for spec in eval_config.distribution_metrics]
        result["distribution"] = distribution_metrics(to_tensor(images), to_tensor(reference), networks)
    return result
