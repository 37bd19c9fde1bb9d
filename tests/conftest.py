"""Shared test set-up: offline hub, few threads, and a tiny recipe every end-to-end test can extend."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)  # tests run two at a time on 2 cores (pytest -n 2)

TINY_RECIPE = Path(__file__).parent / "fixtures" / "tiny.toml"


@pytest.fixture
def tiny_recipe() -> Path:
    """A recipe that trains the 4-block prx-test model on 32 px scenes in about a second a step."""
    return TINY_RECIPE


@pytest.fixture(scope="session")
def random_lpips_vgg(tmp_path_factory):
    """A random-trunk ``lpips.LPIPS`` (the reference) and its VGG16 weights saved under
    torchvision's names and file name, as the LPIPS teacher loader expects them."""
    import warnings

    import lpips

    from prx_core.teachers import TORCHVISION_VGG16_FILE

    with torch.random.fork_rng():
        torch.manual_seed(0)
        with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = {f"features.{key.split('.', 1)[1]}": value for key, value in reference.net.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / TORCHVISION_VGG16_FILE
    torch.save(state, path)
    return path, reference
