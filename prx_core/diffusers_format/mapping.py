"""The one correspondence between prx's denoiser and diffusers' ``PRXTransformer2DModel``.

Both are the same network (Photoroom's PRX): the pixel-space variant of diffusers' class has
``in_channels = 3``, a two-layer ``img_in`` bottleneck (``bottleneck_size``) and 2-D RoPE split
evenly between rows and columns (``axes_dim = [head_dim / 2, head_dim / 2]``). Only names differ,
so export and import are a key rename and a config translation, both defined here and nowhere
else. Nothing in this module imports diffusers: reading a diffusers checkpoint needs only its
``config.json`` and safetensors files.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from prx_core.errors import CheckpointError
from prx_core.model.config import DenoiserConfig

DIFFUSERS_CLASS = "PRXTransformer2DModel"

# Values diffusers' class hard-codes or defaults that prx's denoiser has fixed as well.
TIME_FACTOR = 1000.0  # prx_core.model.layers.timestep_embedding embeds 1000 * t
TIME_MAX_PERIOD = 10_000
TIME_DIM = 256  # diffusers' time_in takes a 256-d sinusoidal embedding
NORM_EPS = 1e-6  # every LayerNorm and RMSNorm of diffusers' PRX blocks

# prx name -> diffusers name: whole prefixes, then per-block suffixes.
_TOP_LEVEL = {
    "patch_in.": "img_in.0.",
    "patch_up.": "img_in.1.",
    "text_in.": "txt_in.",
    "time_in.0.": "time_in.in_layer.",
    "time_in.2.": "time_in.out_layer.",
    "final_modulation.": "final_layer.adaLN_modulation.1.",
    "final.": "final_layer.linear.",
}
_IN_BLOCK = {
    "qkv.weight": "attention.img_qkv_proj.weight",
    "text_kv.weight": "attention.txt_kv_proj.weight",
    "q_norm.scale": "attention.norm_q.weight",
    "k_norm.scale": "attention.norm_k.weight",
    "text_k_norm.scale": "attention.norm_added_k.weight",
    "attn_out.weight": "attention.to_out.0.weight",
    "gate.weight": "gate_proj.weight",
    "up.weight": "up_proj.weight",
    "down.weight": "down_proj.weight",
    "modulation.weight": "modulation.lin.weight",
    "modulation.bias": "modulation.lin.bias",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _rename(name: str, top: Mapping[str, str], block: Mapping[str, str], pattern: re.Pattern) -> str | None:
    match = pattern.fullmatch(name)
    if match:
        inner = block.get(match[2])
        return None if inner is None else f"blocks.{match[1]}.{inner}"
    for prefix, replacement in top.items():
        if name.startswith(prefix) and name.count(".") == prefix.count("."):
            return replacement + name[len(prefix):]
    return None


def diffusers_name(name: str) -> str:
    """The diffusers name of one of the denoiser's parameters (``extras.`` are not part of it)."""
    renamed = _rename(name, _TOP_LEVEL, _IN_BLOCK, _BLOCK)
    if renamed is None:
        raise KeyError(f"{name} is not a parameter of the PRX denoiser")
    return renamed


_TOP_LEVEL_BACK = {v: k for k, v in _TOP_LEVEL.items()}
_IN_BLOCK_BACK = {v: k for k, v in _IN_BLOCK.items()}


def prx_name(name: str) -> str | None:
    """The prx name of a diffusers ``PRXTransformer2DModel`` parameter, None if prx has none."""
    return _rename(name, _TOP_LEVEL_BACK, _IN_BLOCK_BACK, _BLOCK)


def to_diffusers_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The denoiser's tensors under diffusers' names (technique ``extras.`` are left out)."""
    return {diffusers_name(k): v for k, v in state.items() if not k.startswith("extras.")}


def from_diffusers_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A diffusers state dict under prx's names; a tensor prx has no place for is an error."""
    renamed, foreign = {}, []
    for name, value in state.items():
        ours = prx_name(name)
        if ours is None:
            foreign.append(name)
        else:
            renamed[ours] = value
    if foreign:
        raise CheckpointError(
            f"{source} holds tensors the PRX pixel denoiser has no place for (e.g. {sorted(foreign)[:3]}): it is "
            "another variant of PRXTransformer2DModel (resolution embeddings, or a single-layer img_in) that prx "
            "cannot fine-tune."
        )
    return renamed


def to_diffusers_config(config: DenoiserConfig) -> dict:
    """``PRXTransformer2DModel`` constructor arguments for ``config`` (pixel space)."""
    return {
        "in_channels": 3,
        "patch_size": config.patch,
        "context_in_dim": config.text_dim,
        "hidden_size": config.hidden,
        "mlp_ratio": config.mlp_ratio,
        "num_heads": config.heads,
        "depth": config.depth,
        "axes_dim": [config.head_dim // 2, config.head_dim // 2],
        "theta": int(config.rope_theta) if float(config.rope_theta).is_integer() else config.rope_theta,
        "time_factor": TIME_FACTOR,
        "time_max_period": TIME_MAX_PERIOD,
        "bottleneck_size": config.bottleneck,
        "resolution_embeds": False,
    }


def denoiser_config_of(diffusers_config: Mapping, source: str) -> DenoiserConfig:
    """The prx :class:`DenoiserConfig` of a diffusers ``config.json``; a checkpoint prx cannot
    represent (latent space, no bottleneck, resolution embeddings, another RoPE split or time
    embedding) is refused naming the value."""
    c = dict(diffusers_config)
    cls = c.get("_class_name", DIFFUSERS_CLASS)
    if cls != DIFFUSERS_CLASS:
        raise CheckpointError(f"{source}: config.json describes a {cls}, not a {DIFFUSERS_CLASS}.")
    in_channels = c.get("in_channels", 16)
    if in_channels != 3:
        raise CheckpointError(
            f"{source}: in_channels = {in_channels}, so this is a latent-space PRX (it denoises VAE latents, "
            f"16 channels for Flux's VAE, 32 for DC-AE); prx trains in pixel space and needs in_channels = 3. Use a "
            "pixel-space checkpoint (for example one written by `prx export --format diffusers`)."
        )
    if c.get("bottleneck_size") is None:
        raise CheckpointError(f"{source}: bottleneck_size is unset (a single-layer img_in); prx's pixel denoiser "
                              "has a two-layer patch bottleneck and cannot load it.")
    if c.get("resolution_embeds", False):
        raise CheckpointError(f"{source}: resolution_embeds = true (the PRX-7B resolution conditioning), which "
                              "prx's denoiser does not have.")
    hidden, heads = c.get("hidden_size", 1792), c.get("num_heads", 28)
    head_dim = hidden // heads
    axes = list(c.get("axes_dim") or [32, 32])
    if axes != [head_dim // 2, head_dim // 2]:
        raise CheckpointError(f"{source}: axes_dim = {axes}; prx's 2-D RoPE splits each head evenly between rows "
                              f"and columns ([{head_dim // 2}, {head_dim // 2}] for head dim {head_dim}).")
    for key, fixed in (("time_factor", TIME_FACTOR), ("time_max_period", TIME_MAX_PERIOD)):
        if float(c.get(key, fixed)) != fixed:
            raise CheckpointError(f"{source}: {key} = {c[key]}; prx's time embedding uses {key} = {fixed:g}.")
    return DenoiserConfig(
        hidden=hidden, depth=c.get("depth", 16), heads=heads, mlp_ratio=float(c.get("mlp_ratio", 3.5)),
        patch=c.get("patch_size", 2), bottleneck=c["bottleneck_size"], text_dim=c.get("context_in_dim", 2304),
        rope_theta=float(c.get("theta", 10_000)),
    )


# Recipe [model] key and the diffusers config key of every shape value a recipe sets.
SHAPE_KEYS = (
    ("hidden", "hidden_size"), ("depth", "depth"), ("heads", "num_heads"), ("mlp_ratio", "mlp_ratio"),
    ("patch", "patch_size"), ("bottleneck", "bottleneck_size"), ("rope_theta", "theta"),
)


def shape_differences(checkpoint: DenoiserConfig, recipe: DenoiserConfig, text_dim_known: bool = True) -> list[str]:
    """Each value where the checkpoint's shape and the recipe's ``[model]`` disagree, as
    ``"hidden_size = 1024 in the checkpoint, hidden = 1792 in the recipe"``."""
    found = [
        f"{theirs} = {getattr(checkpoint, ours):g} in the checkpoint, [model] {ours} = {getattr(recipe, ours):g} "
        "in the recipe"
        for ours, theirs in SHAPE_KEYS if getattr(checkpoint, ours) != getattr(recipe, ours)
    ]
    if text_dim_known and checkpoint.text_dim != recipe.text_dim:
        found.append(f"context_in_dim = {checkpoint.text_dim} in the checkpoint, a {recipe.text_dim}-wide text "
                     "encoder in the recipe ([text] encoder / dim)")
    return found
