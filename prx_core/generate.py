"""Turning captions into images with a trained denoiser, and images into a captioned grid."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.schema import SampleConfig
from prx_core.sampler import sample
from prx_core.text import TextEncoder
from prx_core.types import Conditioning, Guidance, RoutePlan


def make_predict(model: PRXDenoiser, autocast: torch.dtype | None):
    """``predict(x_t, t, cond, route) -> x0_hat`` for the sampler, in eval mode."""

    def predict(x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, route: RoutePlan) -> torch.Tensor:
        with torch.autocast(x_t.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            x0_hat, _ = model(x_t, t, cond.tokens, cond.mask, route)
        return x0_hat.float()

    return predict


@torch.no_grad()
def generate(
    model: PRXDenoiser,
    text_encoder: TextEncoder,
    captions: list[str],
    size: tuple[int, int],
    config: SampleConfig,
    *,
    steps: int | None = None,
    guidance: Guidance | None = None,
    seed: int = 0,
    batch_size: int = 32,
    autocast: torch.dtype | None = None,
) -> list[np.ndarray]:
    """Sample one image per caption; returns HxWx3 uint8 arrays. Deterministic for a seed."""
    model.eval()
    device = next(model.parameters()).device
    predict = make_predict(model, autocast)
    height, width = size
    empty = text_encoder.encode([""])
    images: list[np.ndarray] = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        generator = torch.Generator(device=device).manual_seed(seed + start)
        noise = torch.randn(len(chunk), 3, height, width, generator=generator, device=device)
        cond = text_encoder.encode(chunk)
        cond = Conditioning(cond.tokens.to(device), cond.mask.to(device))
        uncond = Conditioning(empty.tokens.to(device).expand(len(chunk), -1, -1), empty.mask.to(device).expand(len(chunk), -1))
        x = sample(predict, noise, cond, uncond, steps=steps or config.steps, shift=config.shift,
                   method=config.sampler, guidance=guidance)
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        images.extend(pixels)
    return images


def save_grid(images: list[np.ndarray], captions: list[str], path: Path, columns: int = 4, cell: int = 128) -> None:
    """A PNG grid with each image upscaled (nearest) to ``cell`` px and its caption beneath,
    plus the captions in ``path.with_suffix('.txt')``."""
    rows = (len(images) + columns - 1) // columns
    text_h = 40
    canvas = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions)):
        r, c = divmod(i, columns)
        h, w = image.shape[:2]
        scale = cell / max(h, w)
        tile = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
        canvas.paste(tile, (c * cell, r * (cell + text_h)))
        lines = textwrap.wrap(caption, width=max(10, cell // 6))[:3]
        draw.multiline_text((c * cell + 2, r * (cell + text_h) + cell + 1), "\n".join(lines), fill="black", spacing=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")
