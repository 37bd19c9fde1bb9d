"""Muon for the PRX denoiser: Newton–Schulz orthogonalisation (a plain function), a Muon optimizer
for plain, DDP-replicated and FSDP2-sharded matrices, and the "muon" technique around them."""
from prx_muon.newton_schulz import newton_schulz, newton_schulz_flops
from prx_muon.optimizer import Muon

__all__ = ["Muon", "newton_schulz", "newton_schulz_flops"]
