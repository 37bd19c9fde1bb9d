"""Shared test set-up: offline hub, few threads, the tiny recipe every end-to-end test can extend,
and teachers with random weights (built by prx_core.testing.teachers, the one place that does)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from prx_core.teachers import TORCHVISION_VGG16_FILE  # noqa: E402
from prx_core.testing import TINY_RECIPE, save_random_lpips_vgg, save_random_timm, save_random_vit  # noqa: E402
from prx_core.testing.teachers import TINY_VITS  # noqa: E402

torch.set_num_threads(1)  # tests run two at a time on 2 cores (pytest -n 2)


@pytest.fixture
def tiny_recipe() -> Path:
    """A recipe that trains the 4-block prx-test model on 32 px scenes in about a second a step."""
    return TINY_RECIPE


@pytest.fixture(scope="session")
def random_vits(tmp_path_factory) -> dict[str, tuple[str, torch.nn.Module]]:
    """Model type ("dinov3_vit", "dinov2_with_registers", "dinov2") -> (teacher spec, the saved
    model): tiny ViTs with random weights."""
    return {model_type: save_random_vit(model_type, tmp_path_factory.mktemp(model_type)) for model_type in TINY_VITS}


@pytest.fixture(scope="session")
def random_effnet(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    """(teacher spec, model): timm's EfficientNet-Lite0 (the quickstart teacher's architecture) with random weights."""
    return save_random_timm("tf_efficientnet_lite0", tmp_path_factory.mktemp("effnet") / "lite0.pth")


@pytest.fixture(scope="session")
def random_lpips_vgg(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """(weights file, reference ``lpips.LPIPS``): a random VGG16 trunk saved under torchvision's
    names and file name, as the LPIPS teacher loader expects it."""
    path = tmp_path_factory.mktemp("vgg") / TORCHVISION_VGG16_FILE
    _, reference = save_random_lpips_vgg(path)
    return path, reference
