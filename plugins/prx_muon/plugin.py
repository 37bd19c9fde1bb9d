"""The "muon" technique: Muon steps the 2-D weight matrices inside the denoiser's blocks.

It claims, through ``prx_optimizer_groups``, every 2-D parameter under ``blocks`` (qkv, text_kv,
attn_out, gate, up, down and the modulation weight) and nothing else: the embeddings, the final
layer, biases, norm scales and technique extras (e.g. REPA's projector) stay unclaimed and go to
the core's AdamW from ``[optim]`` (docs/recipe.md §7).

On one process with plain parameters the optimizer is ``torch.optim.Muon`` (its arithmetic is
what :class:`prx_muon.optimizer.Muon` is tested against); with several processes, or with
FSDP2-sharded parameters, it is :class:`prx_muon.optimizer.Muon`, which orthogonalises each
matrix on one rank only. ``implementation`` forces one or the other.
"""
from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
import torch.distributed as dist
from attrs import validators as v
from torch import nn
from torch.distributed.tensor import DTensor

from prx_core.errors import PluginError, RecipeError
from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.types import CostTerm, OptimizerClaim, Phase, RunContext, Technique
from prx_muon.newton_schulz import QUINTIC, newton_schulz_flops
from prx_muon.optimizer import Muon


@attrs.define(kw_only=True)
class MuonConfig:
    """``[muon]``: the Muon settings of docs/recipe.md §7.

    ``adjust_lr``: "match_rms_adamw" scales each matrix's update by 0.2·√max(m, n) so that the
    AdamW learning rate carries over; "original" by √max(1, m/n).
    ``implementation``: "auto" and "prx" use this package's optimizer (Newton–Schulz batched over
    same-shape matrices, one owner rank per matrix; equal to ``torch.optim.Muon`` to the bit on
    one process and about 2x faster on a CPU, 6 % on an H200 step); "torch" uses
    ``torch.optim.Muon`` (one process or DDP only).
    """

    lr: float = attrs.field(default=1e-4, validator=v.ge(0.0))
    momentum: float = attrs.field(default=0.95, validator=[v.ge(0.0), v.lt(1.0)])
    nesterov: bool = True
    ns_steps: int = attrs.field(default=5, validator=v.ge(1))
    ns_coefficients: tuple[float, float, float] = QUINTIC
    adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0.0))
    implementation: Literal["auto", "torch", "prx"] = "auto"


def block_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The 2-D parameters inside the denoiser's blocks, named as in ``model.named_parameters()``.

    ``model`` is the denoiser or anything that contains one (a DDP or compile wrapper).
    """
    denoiser = next((m for m in model.modules() if isinstance(m, PRXDenoiser)), None)
    if denoiser is None:
        raise PluginError(
            f"The muon technique claims the weight matrices of a PRXDenoiser's blocks, but the model handed to "
            f"prx_optimizer_groups is a {type(model).__name__} with no PRXDenoiser inside. Build the model with "
            f"prx_core.model.PRXDenoiser or remove 'muon' from the recipe's plugins."
        )
    inside = {id(p) for p in denoiser.blocks.parameters()}
    return [(name, p) for name, p in model.named_parameters() if id(p) in inside and p.ndim == 2]


def block_matrix_shapes(c: DenoiserConfig) -> list[tuple[int, int]]:
    """(out, in) shapes of one block's 2-D weights: qkv, text_kv, attn_out, gate, up, down, modulation."""
    h, f = c.hidden, c.mlp_hidden
    return [(3 * h, h), (2 * h, h), (h, h), (f, h), (f, h), (h, f), (6 * h, h)]


def newton_schulz_flops_per_step(c: DenoiserConfig, steps: int) -> float:
    """Newton–Schulz FLOPs of one optimizer step over all block matrices (summed over ranks)."""
    return c.depth * sum(newton_schulz_flops(shape, steps) for shape in block_matrix_shapes(c))


class MuonTechnique:
    """Claims the block matrices for Muon and reports the Newton–Schulz cost."""

    def __init__(self, config: MuonConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_optimizer_groups(self, model: nn.Module, recipe: Any) -> list[OptimizerClaim]:
        claimed = block_matrices(model)
        ids = {id(p) for _, p in claimed}
        rest = [p for _, p in model.named_parameters() if id(p) not in ids]
        self.context.log(
            f"muon: Muon steps {len(claimed)} block matrices ({sum(p.numel() for _, p in claimed) / 1e6:.2f} M "
            f"parameters); the default AdamW steps the other {len(rest)} tensors "
            f"({sum(p.numel() for p in rest) / 1e6:.2f} M parameters)"
        )
        return [OptimizerClaim(owner="muon", params=tuple(claimed), build=self.build, label="muon")]

    @hookimpl
    def prx_cost(self, model_config: DenoiserConfig, phase: Phase, text_tokens: int) -> list[CostTerm]:
        flops = newton_schulz_flops_per_step(model_config, self.config.ns_steps)
        return [CostTerm(name="muon_newton_schulz", flops=flops, category="optimizer", per="step")]

    def build(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer for the claimed matrices (called by the core once, after wrapping)."""
        c = self.config
        sharded = any(isinstance(p, DTensor) for p in params)
        if c.implementation == "torch" and sharded:
            raise RecipeError(
                "[muon] implementation = \"torch\" cannot step FSDP-sharded (DTensor) parameters: "
                "torch.optim.Muon would orthogonalise every shard on its own. Set [muon] implementation to "
                "\"auto\" or \"prx\"."
            )
        settings = dict(lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, ns_steps=c.ns_steps,
                        ns_coefficients=c.ns_coefficients, weight_decay=c.weight_decay, adjust_lr_fn=c.adjust_lr)
        if c.implementation == "torch":
            return torch.optim.Muon(params, **settings)
        replicated = dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None
        return Muon(params, **settings, replicated_group=replicated)


@hookimpl
def prx_register_techniques() -> list[Technique]:
    return [
        Technique(
            name="muon",
            plugin=MuonTechnique,
            config=MuonConfig,
            summary="Muon (Newton–Schulz orthogonalised momentum) for the blocks' weight matrices; AdamW for the rest",
            effects=("optimizer:muon",),
        )
    ]
