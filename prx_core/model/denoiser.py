"""The PRX pixel-space x-prediction transformer (docs/recipe.md §1).

The block loop is where routing and capture happen, and it knows neither technique: it is
handed a route plan (which tokens each stretch of blocks sees) and a set of block indices to
capture, both plain data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from prx_core.model.config import INIT_SCHEMES, DenoiserConfig
from prx_core.model.layers import Block, RMSNorm, rope_tables, timestep_embedding
from prx_core.model.tokens import gather_tokens, scatter_tokens
from prx_core.types import Captured, RoutePlan


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(batch, 3, H, W) -> (batch, H/p * W/p, 3*p*p), row-major over the patch grid."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}: both sides must be")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = tokens.shape[0]
    gh, gw = height // patch, width // patch
    x = tokens.reshape(b, gh, gw, 3, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, height, width)


class PRXDenoiser(nn.Module):
    """Predicts the clean image x0 from a noisy image x_t, the noise level t and text tokens."""

    def __init__(self, config: DenoiserConfig, init: str = "pytorch"):
        super().__init__()
        self.config = config
        c = config
        self.patch_in = nn.Linear(c.patch_dim, c.bottleneck)
        self.patch_up = nn.Linear(c.bottleneck, c.hidden)
        self.text_in = nn.Linear(c.text_dim, c.hidden)
        self.time_in = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.blocks = nn.ModuleList(Block(c.hidden, c.heads, c.mlp_hidden, c.norm_eps) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=c.norm_eps)
        self.final_modulation = nn.Linear(c.hidden, 2 * c.hidden)
        self.final = nn.Linear(c.hidden, c.patch_dim)
        # Training-only modules that techniques attach (see hookspecs.prx_configure_model).
        self.extras = nn.ModuleDict()
        self.activation_checkpointing = False
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "pytorch") -> None:
        """Initialise every weight by ``init``, then zero the adaLN-Zero layers.

        ``"pytorch"`` (PRX): PyTorch's default ``nn.Linear`` init (Kaiming-uniform weights with
        a = sqrt(5), biases uniform in +-1/sqrt(fan_in)). ``"xavier"``: Xavier-uniform weights,
        zero biases and N(0, 0.02) for the time MLP (DiT's scheme). In both, every block's
        modulation and the final modulation and projection start at zero, and norm scales at 1.
        """
        if init not in INIT_SCHEMES:
            raise ValueError(f"init = {init!r}: expected one of {INIT_SCHEMES}")
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.scale)
            if isinstance(module, nn.Linear):
                if init == "pytorch":
                    module.reset_parameters()
                    continue
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if init == "xavier":
            for layer in self.time_in:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        zero = [self.final_modulation, self.final] + [blk.modulation for blk in self.blocks]
        for module in zero:  # adaLN-Zero: every block starts as the identity, the output at 0
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def denoiser_parameters(self):
        """Named parameters of the denoiser itself (without technique extras)."""
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("extras."))

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        route: RoutePlan = (),
        capture: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, dict[int, Captured]]:
        """Return ``(x0_hat, captured)``.

        ``x_t`` (batch, 3, H, W) in pixel space with H, W multiples of the patch; ``t`` (batch,);
        ``text`` (batch, length, text_dim) with boolean ``text_mask`` (batch, length).
        ``route``: image tokens kept through each route's blocks; ``capture``: block indices
        whose outputs are returned (with the route index when captured inside a route).
        """
        c = self.config
        b, _, height, width = x_t.shape
        rows, cols = height // c.patch, width // c.patch
        x = self.patch_up(self.patch_in(patchify(x_t, c.patch)))
        text_h = self.text_in(text)
        vec = self.time_in(timestep_embedding(t, c.time_dim))
        cos_full, sin_full = rope_tables(rows, cols, c.head_dim, c.rope_theta, x.device)
        cos, sin = cos_full[None, None], sin_full[None, None]
        text_keys = text_mask[:, None, None, :]
        key_mask = F.pad(text_keys, (0, x.shape[1]), value=True)

        starts = {r.start: r for r in route}
        ends = {r.end: r for r in route}
        saved = index = None
        captured: dict[int, Captured] = {}
        for i, block in enumerate(self.blocks):
            if i in starts:
                index = starts[i].index
                saved = x
                x = gather_tokens(x, index)
                cos = gather_tokens(cos_full.expand(b, -1, -1), index)[:, None]
                sin = gather_tokens(sin_full.expand(b, -1, -1), index)[:, None]
                key_mask = F.pad(text_keys, (0, x.shape[1]), value=True)
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, text_h, vec, cos, sin, key_mask, use_reentrant=False)
            else:
                x = block(x, text_h, vec, cos, sin, key_mask)
            if i in capture:
                captured[i] = Captured(x, index)
            if i in ends:
                x = scatter_tokens(saved, ends[i].index, x)
                saved = index = None
                cos, sin = cos_full[None, None], sin_full[None, None]
                key_mask = F.pad(text_keys, (0, x.shape[1]), value=True)

        shift, scale = self.final_modulation(F.silu(vec))[:, None].chunk(2, dim=-1)
        x = self.final(self.final_norm(x) * (1 + scale) + shift)
        return unpatchify(x, c.patch, height, width), captured
