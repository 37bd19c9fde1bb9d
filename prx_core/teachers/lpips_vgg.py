"""The LPIPS teacher: lpips' VGG16 trunk and calibrated linear heads (``lpips:vgg[@<vgg16 weights file>]``)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from prx_core.errors import WeightsNotFoundError
from prx_core.teachers.interface import ConvTeacher
from prx_core.teachers.spec import TeacherSpec, weights_file
from prx_core.weights import load_state_dict_file

TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
TORCHVISION_VGG16_URL = "https://download.pytorch.org/models/" + TORCHVISION_VGG16_FILE
# lpips scales [-1, 1] inputs with these before VGG (lpips.ScalingLayer).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class _VggStages(nn.Module):
    """The five slices of lpips' VGG16 (relu1_2 ... relu5_3)."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.slices = nn.ModuleList([vgg.slice1, vgg.slice2, vgg.slice3, vgg.slice4, vgg.slice5])

    def forward(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        outputs = []
        for stage in self.slices[: last + 1]:
            x = stage(x)
            outputs.append(x)
        return outputs


def lpips_teacher(spec: TeacherSpec, weights: bool) -> ConvTeacher:
    """lpips' VGG16 trunk and calibrated linear heads (v0.1), built on the meta device and filled
    from files: the trunk from torchvision's VGG16 weights (the given file or the torch hub
    cache; never through torch.hub's downloader), the heads from the file inside the lpips
    package. Building on meta also skips initialising VGG16's unused 100 M-weight classifier."""
    import lpips

    if weights:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG16_FILE
        how = (
            f"LPIPS needs torchvision's ImageNet VGG16 weights: run `python -c \"import torchvision; "
            f"torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` (saves {cache}), or download "
            f"{TORCHVISION_VGG16_URL} and set the teacher to 'lpips:vgg@/path/to/{TORCHVISION_VGG16_FILE}'."
        )
        path = weights_file(spec, how) if spec.weights else cache
        if not path.is_file():
            raise WeightsNotFoundError(f"Teacher '{spec}': {path} not found. {how}")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips calls torchvision with the deprecated `pretrained=`
        metric = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    slices = [getattr(metric.net, f"slice{s}") for s in range(1, 6)]
    stage_weights = None
    if weights:
        state = load_state_dict_file(path)
        # lpips keeps torchvision's layer numbers as child names: "24.weight" is features.24.weight
        absent = [f"features.{key}" for part in slices for key in part.state_dict() if f"features.{key}" not in state]
        if absent:
            raise WeightsNotFoundError(
                f"Teacher '{spec}': {path} is not a torchvision VGG16 state dict (no {absent[:2]}). {how}"
            )
        for part in slices:
            part.to_empty(device="cpu").load_state_dict({key: state[f"features.{key}"] for key in part.state_dict()})
        heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                           weights_only=True)
        stage_weights = [heads[f"lin{i}.model.1.weight"].flatten() for i in range(len(slices))]
    mean = tuple((1 + shift) / 2 for shift in _LPIPS_SHIFT)
    std = tuple(scale / 2 for scale in _LPIPS_SCALE)
    return ConvTeacher(str(spec), _VggStages(metric.net), channels=list(metric.chns), strides=[1, 2, 4, 8, 16],
                       ceil_grid=False, mean=mean, std=std, stage_weights=stage_weights)
