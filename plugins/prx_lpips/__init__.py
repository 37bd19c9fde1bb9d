"""LPIPS as a training loss on the x0 prediction (Zhang et al. 2018; after PixelGen). The plain
functions below work without prx; ``prx_lpips.plugin`` registers the "lpips" technique (see CARD.md)."""
from prx_lpips.config import LpipsConfig
from prx_lpips.distance import downsampled_size, lpips_distance

__all__ = ["LpipsConfig", "downsampled_size", "lpips_distance"]
