"""``[model] init = "diffusers:PATH_OR_ID"``: a run that starts from a diffusers PRX checkpoint.

:func:`check_initial_weights` reads only the checkpoint's ``config.json`` and refuses one prx
cannot fine-tune under this recipe (latent space, another shape) with a message naming each
value that differs; ``prx run`` calls it before the run folder is made and ``--dry-run`` for a
checkpoint on this machine. :func:`load_initial_weights` then fills the freshly built denoiser.
"""
from __future__ import annotations

from torch import nn

from prx_core.diffusers_format.checkpoint import DiffusersCheckpoint, is_diffusers_spec, locate
from prx_core.diffusers_format.mapping import shape_differences
from prx_core.errors import CheckpointError, RecipeError
from prx_core.recipe.errors_format import where
from prx_core.recipe.schema import Recipe


def check_initial_weights(recipe: Recipe, text_dim: int | None, download: bool = True) -> DiffusersCheckpoint | None:
    """The checkpoint ``[model] init`` names, checked against the recipe's ``[model]`` (and the
    text width when known); None for an init scheme, or for a Hub id not on this machine when
    ``download`` is False."""
    spec = recipe.model.init
    if not is_diffusers_spec(spec):
        return None
    source = where(recipe, "model.init")
    try:
        checkpoint = locate(spec, download=download)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    if checkpoint is None:
        return None
    expected = recipe.model.resolve(text_dim or checkpoint.config.text_dim)
    differences = shape_differences(checkpoint.config, expected, text_dim_known=text_dim is not None)
    if differences:
        raise RecipeError(
            f'{source}: [model] init = "{spec}" does not fit the recipe\'s [model] (preset {recipe.model.preset}): '
            + "; ".join(differences)
            + ". Set [model] preset (or hidden, depth, heads, mlp_ratio, patch, bottleneck) and the text encoder to "
            "the checkpoint's values."
        )
    return checkpoint


def load_initial_weights(denoiser: nn.Module, recipe: Recipe, text_dim: int) -> None:
    """Copy the checked checkpoint of ``[model] init`` into ``denoiser`` (nothing for a scheme)."""
    checkpoint = check_initial_weights(recipe, text_dim)
    if checkpoint is None:
        return
    state = checkpoint.state_dict()
    own = {name for name, _ in denoiser.named_parameters() if not name.startswith("extras.")}
    missing = sorted(own - set(state))
    if missing:
        raise CheckpointError(f"{checkpoint.folder} lacks {len(missing)} tensors of the denoiser (e.g. {missing[:3]}); "
                              "the file is incomplete.")
    denoiser.load_state_dict(state, strict=False)
