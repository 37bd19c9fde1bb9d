"""A resolution schedule: training in phases of fixed resolution and global batch, with techniques
switched off per phase (512 px then 1024 px without REPA in the PRX run). The plain functions
below work without prx; ``prx_multires.plugin`` registers the "multires" technique (see CARD.md)."""
from prx_multires.config import MultiresConfig, PhaseConfig
from prx_multires.schedule import schedule_phases, schedule_problems

__all__ = ["MultiresConfig", "PhaseConfig", "schedule_phases", "schedule_problems"]
