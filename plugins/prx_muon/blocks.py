"""Which parameters of the PRX denoiser Muon steps, and what orthogonalising them costs.

Muon steps the 2-D weight matrices inside the denoiser's blocks (qkv, text_kv, attn_out, gate, up,
down and the modulation weight) and nothing else: the embeddings, the final layer, biases, norm
scales and technique extras stay with the core's AdamW.
"""
from __future__ import annotations

from torch import nn

from prx_core.errors import PluginError
from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_muon.newton_schulz import newton_schulz_flops


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
