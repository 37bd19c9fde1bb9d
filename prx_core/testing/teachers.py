"""Teachers with random weights, saved where the real loaders read them: the one place prx
builds them, for its tests, the interference matrix and the GPU benchmark (machines without the
pretrained weights).

Each function saves a network of a teacher's real architecture with weights drawn from
``seed`` (the caller's global RNG is left as it was) and returns the teacher spec that loads it
through :func:`prx_core.teachers.load_teacher`, with the network it saved as a reference.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from prx_core.teachers.hf import HF_CLASSES, KNOWN_HF_ARCHITECTURES

TINY_VITS: dict[str, dict] = {
    "dinov3_vit": dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                       patch_size=16, num_register_tokens=4, image_size=64),
    "dinov2_with_registers": dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                  patch_size=14, num_register_tokens=4, image_size=28),
    "dinov2": dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                   image_size=28),
}
"""Two-layer, 24-wide ViTs of each supported model type: seconds on a CPU."""

FULL_VITS: dict[str, dict] = {model_type: fields for model_type, fields in KNOWN_HF_ARCHITECTURES.values()}
"""The recipes' default teachers' shapes (DINOv3 ViT-L/16, DINOv2-B/14 with registers, DINOv2-B/14)."""


def save_random_vit(model_type: str, folder: Path, *, full: bool = False, seed: int = 0,
                    device: torch.device | str = "cpu") -> tuple[str, nn.Module]:
    """A ``transformers`` ViT of ``model_type`` (a key of :data:`TINY_VITS`), tiny or at the
    recipes' full size, saved with ``save_pretrained`` into ``folder`` and initialised on
    ``device`` (faster on a GPU for the full sizes). Returns ``("hf:<folder>", model in eval mode)``."""
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = CONFIG_MAPPING[model_type](**(FULL_VITS if full else TINY_VITS)[model_type])
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = getattr(transformers, HF_CLASSES[model_type])(config).eval()
    model.save_pretrained(folder)
    return f"hf:{folder}", model


def save_random_timm(name: str, path: Path, *, seed: int = 0) -> tuple[str, nn.Module]:
    """A ``timm`` model ``name`` with random weights, its state dict saved at ``path``.
    Returns ``("timm:<name>@<path>", model in eval mode)``."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name).eval()
    torch.save(model.state_dict(), path)
    return f"timm:{name}@{path}", model


def save_random_lpips_vgg(path: Path, *, seed: int = 0):
    """``lpips.LPIPS`` with a random VGG16 trunk (and its calibrated linear heads), the trunk saved
    at ``path`` under torchvision's names, as the LPIPS teacher reads VGG16 weights. Returns
    ``("lpips:vgg@<path>", the LPIPS module in eval mode)``: the reference the teacher must match."""
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips calls torchvision with the deprecated `pretrained=`
        torch.manual_seed(seed)
        reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = {f"features.{key.split('.', 1)[1]}": value for key, value in reference.net.state_dict().items()}
    torch.save(state, path)
    return f"lpips:vgg@{path}", reference


def write_tiny_teachers(folder: Path) -> dict[str, str]:
    """The interference matrix's teachers, saved into ``folder``: the teacher spec of each
    placeholder a technique's tiny settings may use (``"{vit}"``: a 2-layer DINOv2; ``"{cnn}"``:
    timm's ``test_efficientnet``, for losses that need a CNN's stages)."""
    folder = Path(folder)
    vit, _ = save_random_vit("dinov2", folder / "vit")
    cnn, _ = save_random_timm("test_efficientnet", folder / "cnn.pth")
    return {"{vit}": vit, "{cnn}": cnn}
