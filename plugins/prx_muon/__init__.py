"""Muon for the PRX denoiser: Newton–Schulz orthogonalisation (a plain function), a Muon optimizer
for plain, DDP-replicated and FSDP2-sharded matrices, the block matrices it steps, and the "muon"
technique around them (``prx_muon.plugin``, see CARD.md)."""
from prx_muon.blocks import block_matrices, block_matrix_shapes, newton_schulz_flops_per_step
from prx_muon.config import MuonConfig
from prx_muon.newton_schulz import newton_schulz, newton_schulz_flops
from prx_muon.optimizer import Muon

__all__ = [
    "Muon",
    "MuonConfig",
    "block_matrices",
    "block_matrix_shapes",
    "newton_schulz",
    "newton_schulz_flops",
    "newton_schulz_flops_per_step",
]
