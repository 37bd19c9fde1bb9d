"""The "muon" technique: the thin plugin around Muon (config in ``config.py``, the parameters it
claims in ``blocks.py``, the optimizer in ``optimizer.py``): Muon steps the 2-D weight matrices
inside the denoiser's blocks.

It claims, through ``prx_optimizer_groups``, every 2-D parameter under ``blocks`` (qkv, text_kv,
attn_out, gate, up, down and the modulation weight) and nothing else: the embeddings, the final
layer, biases, norm scales and technique extras (e.g. REPA's projector) stay unclaimed and go to
the core's AdamW from ``[optim]``.

The optimizer is :class:`prx_muon.optimizer.Muon` (``implementation`` "auto" or "prx"), which
equals ``torch.optim.Muon`` to the bit on one process and orthogonalises each matrix on one rank
only under DDP and FSDP2; ``implementation = "torch"`` uses ``torch.optim.Muon`` itself (one
process or DDP).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from prx_core.errors import RecipeError
from prx_core.hookspecs import hookimpl
from prx_core.model.config import DenoiserConfig
from prx_core.types import CostTerm, OptimizerClaim, Phase, RunContext, Technique
from prx_muon.blocks import block_matrices, newton_schulz_flops_per_step
from prx_muon.config import MuonConfig
from prx_muon.optimizer import Muon


class MuonTechnique:
    """Claims the block matrices for Muon and reports the Newton–Schulz cost."""

    def __init__(self, config: MuonConfig, context: RunContext):
        self.config = config
        self.context = context

    @hookimpl
    def prx_optimizer_groups(self, model: nn.Module) -> list[OptimizerClaim]:
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
