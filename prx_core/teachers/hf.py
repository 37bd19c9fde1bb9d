"""Teachers from ``transformers``: DINOv3 ViT, DINOv2 with registers and DINOv2, by hub id or
local directory (``hf:<id or directory>``)."""
from __future__ import annotations

from pathlib import Path

from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.teachers.interface import VitTeacher
from prx_core.teachers.spec import TeacherSpec
from prx_core.weights import hub_offline

HF_CLASSES = {
    "dinov3_vit": "DINOv3ViTModel",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "dinov2": "Dinov2Model",
}
"""``config.model_type`` -> the ``transformers`` class a teacher of that type is loaded with."""

KNOWN_HF_ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "facebook/dinov3-vitl16-pretrain-lvd1689m": (
        "dinov3_vit",
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
             patch_size=16, num_register_tokens=4),
    ),
    "facebook/dinov2-with-registers-base": (
        "dinov2_with_registers",
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
             num_register_tokens=4, image_size=518),
    ),
    "facebook/dinov2-base": (
        "dinov2", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518)
    ),
}
"""Shapes of the recipes' default teachers (model type, config fields), so that cost estimates
need neither the weights nor the network."""


def _hf_missing(spec: TeacherSpec, what: str) -> WeightsNotFoundError:
    if Path(spec.name).is_absolute() or spec.name.startswith("."):
        how = f"Check the path, or save the model there with `model.save_pretrained('{spec.name}')`."
    else:
        how = (
            f"Download it with `hf download {spec.name}` (gated models: accept the licence on "
            f"huggingface.co/{spec.name} and `hf auth login` first), or copy a downloaded folder here and "
            "set the recipe key to 'hf:/path/to/folder'."
        )
        if hub_offline():
            how += " HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched."
    return WeightsNotFoundError(f"Teacher '{spec}': {what} not found on this machine. {how}")


def _hf_config(spec: TeacherSpec, weights: bool):
    from transformers import CONFIG_MAPPING, AutoConfig

    local = Path(spec.name).is_dir()
    try:
        return AutoConfig.from_pretrained(spec.name, local_files_only=local or hub_offline() or not weights)
    except OSError as error:
        known = KNOWN_HF_ARCHITECTURES.get(spec.name)
        if not weights and known:
            model_type, fields = known
            return CONFIG_MAPPING[model_type](**fields)
        raise _hf_missing(spec, "its config.json") from error


def hf_teacher(spec: TeacherSpec, weights: bool) -> VitTeacher:
    """The ViT named by ``spec``, with its weights (``weights``) or on the current device without."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = _hf_config(spec, weights)
    if config.model_type not in HF_CLASSES:
        raise RecipeError(
            f"Teacher '{spec}' is a '{config.model_type}' model; supported: {', '.join(HF_CLASSES)}."
        )
    cls = getattr(transformers, HF_CLASSES[config.model_type])
    if not weights:
        return VitTeacher(str(spec), cls(config))
    try:
        model, info = cls.from_pretrained(
            spec.name, config=config, output_loading_info=True,
            local_files_only=Path(spec.name).is_dir() or hub_offline(),
        )
    except OSError as error:
        raise _hf_missing(spec, "its weights") from error
    if info["missing_keys"]:
        raise WeightsNotFoundError(
            f"Teacher '{spec}': the weights file lacks {len(info['missing_keys'])} tensors of the model "
            f"(e.g. {sorted(info['missing_keys'])[:3]}); it would run with random weights. "
            "Re-download the model or point the recipe key at a complete folder."
        )
    return VitTeacher(str(spec), model)
