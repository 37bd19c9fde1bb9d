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
