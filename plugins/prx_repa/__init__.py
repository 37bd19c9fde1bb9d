"""REPA (representation alignment): a projection of a denoiser block's hidden states is pulled
towards a frozen teacher's patch tokens of the clean image. The plain functions are usable
without the framework; ``prx_repa.plugin`` registers the "repa" technique around them."""
from prx_repa.grid import teacher_input_size, teacher_tokens_on_grid
from prx_repa.loss import build_projector, projector_forward_flops, repa_loss

__all__ = ["build_projector", "projector_forward_flops", "repa_loss", "teacher_input_size", "teacher_tokens_on_grid"]
