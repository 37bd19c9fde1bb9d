"""TREAD self-guidance ("sparse guidance"): sampling extrapolates from a routed towards a dense
conditional prediction of the same model. The plain functions below work without prx;
``prx_tread_guidance.plugin`` registers the "tread_guidance" technique (see CARD.md)."""
from prx_tread_guidance.config import TreadGuidanceConfig
from prx_tread_guidance.guidance import SAMPLING_STEP, SparseGuidance, sparse_guidance

__all__ = ["SAMPLING_STEP", "SparseGuidance", "TreadGuidanceConfig", "sparse_guidance"]
