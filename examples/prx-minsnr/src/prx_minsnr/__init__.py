"""Min-SNR-style loss weighting for prx: plain functions (this module) and the "minsnr"
technique around them (``prx_minsnr.plugin``)."""
from prx_minsnr.weighting import min_snr_correction, min_snr_weight, objective_weight, x0_error

__all__ = ["min_snr_correction", "min_snr_weight", "objective_weight", "x0_error"]
