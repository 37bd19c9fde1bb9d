"""Loading a teacher by its spec: the loader of its kind, frozen, in the device's dtype and layout."""
from __future__ import annotations

import torch

from prx_core.teachers.hf import hf_teacher
from prx_core.teachers.interface import ConvTeacher, FeatureTeacher
from prx_core.teachers.lpips_vgg import lpips_teacher
from prx_core.teachers.spec import TeacherSpec, parse_teacher_spec
from prx_core.teachers.timm_cnn import timm_teacher

LOADERS = {"hf": hf_teacher, "timm": timm_teacher, "lpips": lpips_teacher}
"""Spec kind -> ``loader(spec, weights)``: the teacher with its weights, or only its architecture
(on the current default device) when ``weights`` is False."""


def build_teacher(spec: TeacherSpec, weights: bool) -> FeatureTeacher:
    """The teacher named by ``spec``, with or without its weights, not yet frozen or moved."""
    return LOADERS[spec.kind](spec, weights)


def teacher_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU, fp32 elsewhere (CPU bf16 convolutions are slow and imprecise)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def teacher_memory_format(device: torch.device | str) -> torch.memory_format:
    """channels_last on GPU, where cuDNN's bf16 convolutions run NHWC natively (NCHW tensors are
    transposed around every convolution); convolutions given channels_last weights return
    channels_last features, so a CNN teacher's whole pass stays NHWC. The CPU keeps the default."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def load_teacher(spec: str, device: torch.device | str = "cpu") -> FeatureTeacher:
    """Load the frozen teacher named by ``spec`` (see :mod:`prx_core.teachers`) onto ``device``.

    Raises :class:`~prx_core.errors.WeightsNotFoundError` naming the weights and how to provide
    them when they are not on this machine; never returns random weights. (With ``[train]
    compile`` the training step compiles each auxiliary loss as a whole, its teacher passes
    included.)
    """
    teacher = build_teacher(parse_teacher_spec(spec), weights=True)
    teacher = teacher.to(device=device, dtype=teacher_dtype(device)).eval().requires_grad_(False)
    if isinstance(teacher, ConvTeacher):
        teacher = teacher.to(memory_format=teacher_memory_format(device))
    return teacher
