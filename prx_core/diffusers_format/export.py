"""``prx export RUN --format diffusers --out DIR``: a run as diffusers models.

The EMA weights become a ``PRXTransformer2DModel`` (renamed by
:mod:`prx_core.diffusers_format.mapping`). When the run's text encoder is a ``transformers``
encoder that can be saved on its own (an encoder-only model such as all-MiniLM or BERT, or the
encoder half of T5Gemma / T5), the folder is a whole ``PRXPixelPipeline``: diffusers' pixel-space
PRX pipeline, which predicts x0, turns it into a flow velocity and integrates it with a
``FlowMatchEulerDiscreteScheduler`` carrying the run's time shift; ``DiffusionPipeline.
from_pretrained(DIR)`` then generates. Otherwise ``DIR`` holds the transformer alone.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import attrs

from prx_core.diffusers_format.mapping import to_diffusers_config, to_diffusers_state
from prx_core.errors import UserError
from prx_core.inference import load_for_sampling
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.loader import dump_recipe_toml
from prx_core.weights import local_location

RECIPE_FILE = "prx_recipe.toml"
"""The run's resolved recipe, written beside the diffusers files (diffusers ignores it)."""

NUM_TRAIN_TIMESTEPS = 1000
"""The pipeline feeds the transformer ``timestep / num_train_timesteps``: prx's t in [0, 1]."""

# Encoder-decoder text models whose encoder half transformers can load and save on its own.
_ENCODER_ONLY_CLASSES = {
    "t5gemma": "T5GemmaEncoderModel",
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}


@attrs.frozen
class DiffusersExport:
    """What was written: ``pipeline`` is False when only the transformer could be."""

    folder: Path
    step: int
    pipeline: bool
    reason: str = ""
    shift: float = 1.0
    steps: int = 50
    resolution: int = 512


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError("`--format diffusers` needs the diffusers package: pip install 'prx[diffusers]'.") from None
    return diffusers


def to_diffusers_transformer(model: PRXDenoiser):
    """``model`` as a fp32 ``PRXTransformer2DModel`` (every tensor assigned, none left over)."""
    from diffusers import PRXTransformer2DModel

    transformer = PRXTransformer2DModel(**to_diffusers_config(model.config))
    transformer.load_state_dict(to_diffusers_state(model.state_dict()), strict=True)
    return transformer.float().eval()


def text_encoder_class(spec: str):
    """The ``transformers`` class that loads and saves the run's text encoder on its own, or a
    sentence saying why there is none."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    if spec == "none":
        return None, "the run uses random text embeddings ([text] encoder = \"none\"), which no pipeline can encode"
    try:
        config = transformers.AutoConfig.from_pretrained(local_location(spec, f"text encoder '{spec}'"))
    except (OSError, ValueError) as err:
        return None, f"the text encoder '{spec}' could not be read on this machine ({str(err).splitlines()[0]})"
    if getattr(config, "is_encoder_decoder", False):
        name = _ENCODER_ONLY_CLASSES.get(config.model_type)
    else:
        name = MODEL_MAPPING_NAMES.get(config.model_type)
    if name is None or not hasattr(transformers, name):
        return None, f"transformers has no stand-alone encoder class for the '{config.model_type}' text encoder"
    return getattr(transformers, name), ""


def load_encoder_half(encoder_class, location: str):
    """The text encoder alone from its checkpoint (an encoder-decoder's decoder weights are left
    out; transformers' report of them is silenced)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(location)
        extra = {"is_encoder_decoder": False} if getattr(config, "is_encoder_decoder", False) else {}
        return encoder_class.from_pretrained(location, **extra)
    finally:
        transformers.logging.set_verbosity(verbosity)


def export_diffusers(checkpoint: str | os.PathLike, out: str | os.PathLike) -> DiffusersExport:
    """Write the run of ``checkpoint`` to the folder ``out`` (created; it must not hold files).
    Written to a temporary sibling and renamed, so ``out`` is either complete or absent."""
    require_diffusers()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files: export into a new or empty folder.")
    inf = load_for_sampling(checkpoint, device="cpu")
    transformer = to_diffusers_transformer(inf.model)
    encoder_class, reason = text_encoder_class(inf.recipe.text.encoder)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, transformer, encoder_class, inf)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return DiffusersExport(out, inf.step, encoder_class is not None, reason, inf.recipe.sample.shift,
                           inf.recipe.sample.steps, inf.resolution)


def _write(tmp: Path, transformer, encoder_class, inf) -> None:
    """The transformer alone, or the whole pipeline, and the run's recipe, into ``tmp``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPixelPipeline
    from transformers import AutoTokenizer

    if encoder_class is None:
        transformer.save_pretrained(tmp)
    else:
        location = local_location(inf.recipe.text.encoder, f"text encoder '{inf.recipe.text.encoder}'")
        pipeline = PRXPixelPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                                      shift=inf.recipe.sample.shift),
            text_encoder=load_encoder_half(encoder_class, location),
            tokenizer=AutoTokenizer.from_pretrained(location),
            default_sample_size=inf.resolution,
            prompt_max_tokens=inf.recipe.text.max_length,
            noise_scale=1.0,  # prx samples from unit noise
        )
        pipeline.save_pretrained(tmp)
    (tmp / RECIPE_FILE).write_text(dump_recipe_toml(inf.recipe))

