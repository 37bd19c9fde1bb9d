"""Min-SNR-style loss weighting for prx: plain functions on tensors (``weighting.py``), usable without
prx, and the "minsnr" technique around them (``prx_minsnr.plugin``, see CARD.md)."""
from prx_minsnr.config import MinSnrConfig
from prx_minsnr.weighting import min_snr_correction, min_snr_weight, objective_weight, x0_error

__all__ = ["MinSnrConfig", "min_snr_correction", "min_snr_weight", "objective_weight", "x0_error"]
