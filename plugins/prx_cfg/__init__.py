"""Classifier-free guidance (Ho & Salimans 2022) with an optional guidance interval. The plain
functions below work without prx; ``prx_cfg.plugin`` registers the "cfg" technique (see CARD.md)."""
from prx_cfg.config import CFGConfig
from prx_cfg.guidance import ClassifierFreeGuidance, classifier_free, in_interval

__all__ = ["CFGConfig", "ClassifierFreeGuidance", "classifier_free", "in_interval"]
