"""The synthetic scene generator, its train/eval prompt split and the prompt-following checker."""
from __future__ import annotations

import collections
import itertools

import attrs
import numpy as np
import pytest
from PIL import Image, ImageFilter

from prx_core.data.scenes import (
    BACKGROUNDS,
    COLORS,
    COUNTS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    is_eval_combination,
    render_scene,
    scene_for_index,
)
from prx_core.errors import DataError
from prx_core.evaluation.checker import ATTRIBUTES, CHANCE, CheckResult, check_image, prompt_following_score
from prx_core.evaluation.prompts import eval_scenes, evaluation_scenes, train_scenes
from prx_core.recipe.schema import EvalConfig

VOCABULARY = {
    "background": BACKGROUNDS,
    "color": COLORS,
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
    "count": COUNTS,
}


def _render_all(scenes: list[Scene], height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    return [render_scene(scene, height, width, index=i, seed=seed) for i, scene in enumerate(scenes)]


def test_scenes_and_images_are_deterministic_by_index_and_seed():
    assert [scene_for_index(i, "train", 3) for i in range(50)] == train_scenes(50, seed=3)
    assert train_scenes(50, seed=3) != train_scenes(50, seed=4)
    assert eval_scenes(50, seed=3) == eval_scenes(50, seed=3)
    scene = scene_for_index(7)
    assert np.array_equal(render_scene(scene, 64, 48, index=7, seed=1), render_scene(scene, 64, 48, index=7, seed=1))
    # The jitter makes images of one caption differ by index and by seed.
    assert not np.array_equal(render_scene(scene, 64, 64, index=7), render_scene(scene, 64, 64, index=8))
    assert not np.array_equal(render_scene(scene, 64, 64, seed=0), render_scene(scene, 64, 64, seed=1))


def test_captions_name_every_attribute_and_every_value_is_used():
    phrases = {"top left": "at the top left", "top": "at the top on", "left": "on the left", "center": "in the center"}
    count_words = {1: "one ", 2: "two ", 3: "three "}
    for split in ("train", "eval"):
        scenes = [scene_for_index(i, split) for i in range(200)]
        for scene in scenes:
            caption = scene.caption()
            assert caption.startswith(count_words[scene.count])
            assert f" {scene.size} {scene.color} {scene.shape}" in caption
            assert caption.endswith(f"on a {scene.background} background")
            assert phrases.get(scene.position, scene.position) in caption
            assert (scene.shape + "s" in caption) == (scene.count > 1)
        for name, values in VOCABULARY.items():
            assert {getattr(s, name) for s in scenes} == set(values), (split, name)
    assert Scene("gray", "red", "circle", "small", "top left", 2).caption() == (
        "two small red circles at the top left on a gray background"
    )


def test_every_attribute_is_balanced_in_any_prefix():
    for n in (12, 37, 200):
        for scenes in (eval_scenes(n, seed=5), train_scenes(n, seed=5)):
            for name, values in VOCABULARY.items():
                counts = collections.Counter(getattr(s, name) for s in scenes)
                expected = n / len(values)
                spread = 3 if name in ("color", "shape") else 1  # colour and shape come as a pair
                assert all(abs(counts[v] - expected) <= spread for v in values), (n, name, counts)


def test_eval_split_holds_out_colour_shape_pairs_and_its_captions_are_never_trained_on():
    held_out = [(c, s) for c in COLORS for s in SHAPES if is_eval_combination(Scene("white", c, s, "small", "top", 1))]
    assert len(held_out) == len(COLORS)  # one shape per colour ...
    assert collections.Counter(s for _, s in held_out) == {s: len(COLORS) // len(SHAPES) for s in SHAPES}  # ... evenly
    assert not any(is_eval_combination(s) for s in train_scenes(1000, seed=0))
    assert all(is_eval_combination(s) for s in eval_scenes(1000, seed=0))
    every_training_caption = {
        Scene(*values).caption()
        for values in itertools.product(BACKGROUNDS, COLORS, SHAPES, SIZES, POSITIONS, COUNTS)
        if not is_eval_combination(Scene(*values))
    }
    assert len(every_training_caption) == 4 * 6 * 2 * 2 * 9 * 3
    assert not {s.caption() for s in eval_scenes(1000, seed=0)} & every_training_caption


def test_eval_prompts_setting_picks_held_out_or_training_pairs():
    held_out = evaluation_scenes(EvalConfig(num_prompts=60, seed=3))
    seen = evaluation_scenes(EvalConfig(num_prompts=60, seed=3, prompts="training"))
    assert held_out == eval_scenes(60, seed=3) and seen == train_scenes(60, seed=3)
    assert all(map(is_eval_combination, held_out)) and not any(map(is_eval_combination, seen))
    # both sets cover each shape evenly, so a shape score on either has the same chance level
    for scenes in (held_out, seen):
        assert collections.Counter(s.shape for s in scenes) == {shape: 20 for shape in SHAPES}


def test_invalid_requests_raise():
    with pytest.raises(ValueError):
        Scene("pink", "red", "circle", "small", "top", 1)
    with pytest.raises(ValueError):
        scene_for_index(0, split="test")
    with pytest.raises(DataError, match="resolution"):
        render_scene(scene_for_index(0), 8, 64)
    with pytest.raises(ValueError):
        check_image(np.zeros((32, 32, 3), dtype=np.float32), scene_for_index(0))
    with pytest.raises(ValueError):
        prompt_following_score([np.zeros((32, 32, 3), dtype=np.uint8)], [])


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (32, 64), (48, 24), (256, 256)])
def test_renders_at_any_size_and_aspect_ratio(height, width):
    scenes = eval_scenes(60, seed=1)
    images = _render_all(scenes, height, width, seed=1)
    for scene, image in zip(scenes, images):
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        # The background fills most of the canvas, and the object's colour is drawn solid somewhere.
        assert np.all(image == PALETTE[scene.background], axis=-1).mean() > 0.6
        assert np.all(image == PALETTE[scene.color], axis=-1).any()
    # Positions follow the canvas, so the checker reads every attribute at every aspect ratio.
    assert prompt_following_score(images, scenes)["overall"] == 1.0


@pytest.mark.parametrize(("side", "split"), [(32, "eval"), (64, "train")])
def test_checker_reads_generator_images(side, split):
    scenes = [scene_for_index(i, split, seed=11) for i in range(500)]
    scores = prompt_following_score(_render_all(scenes, side, side, seed=11), scenes)
    # Measured: 1.0 on every attribute, at 32 and 64 px, both splits.
    assert scores["overall"] >= 0.95
    assert all(scores[name] >= 0.95 for name in ATTRIBUTES), scores


def test_checker_reads_blurred_noisy_images():
    """Model samples are soft: a Gaussian blur of 1 px and noise of std 10 / 255 keep the reading."""
    rng = np.random.default_rng(0)
    scenes = eval_scenes(200, seed=2)
    images = []
    for image in _render_all(scenes, 64, 64, seed=2):
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
        images.append(np.clip(np.rint(blurred + rng.normal(0, 10, blurred.shape)), 0, 255).astype(np.uint8))
    scores = prompt_following_score(images, scenes)
    assert scores["overall"] >= 0.95, scores  # measured 0.996
    assert all(scores[name] >= 0.9 for name in ATTRIBUTES), scores


def test_checker_scores_noise_and_flat_images_at_or_below_chance():
    rng = np.random.default_rng(0)
    scenes = eval_scenes(200, seed=3)
    uniform = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in scenes]
    gaussian = [np.clip(127.5 + 127.5 * rng.normal(size=(48, 64, 3)), 0, 255).astype(np.uint8) for _ in scenes]
    for images in (uniform, gaussian):
        scores = prompt_following_score(images, scenes)
        assert all(scores[name] <= CHANCE[name] for name in scores), scores  # measured: 0 everywhere
    scenes = eval_scenes(36, seed=3)  # every background exactly 9 times
    for name, rgb in PALETTE.items():
        flat = [np.full((32, 32, 3), rgb, dtype=np.uint8)] * len(scenes)
        scores = prompt_following_score(flat, scenes)
        # A flat background-coloured image is right about the background of a quarter of the
        # (evenly spread) prompts, exactly chance, and finds no object.
        assert scores["background"] == (CHANCE["background"] if name in BACKGROUNDS else 0.0), name
        assert all(scores[a] == 0.0 for a in ATTRIBUTES if a != "background"), (name, scores)
    assert CHANCE["overall"] == pytest.approx(np.mean([1 / len(VOCABULARY[a]) for a in ATTRIBUTES]))


def test_checker_scores_images_that_ignore_the_prompt_at_chance():
    """Well-drawn scenes of other prompts (a model that ignores its text) score chance per attribute."""
    images = _render_all(train_scenes(500, seed=20), 32, 32)
    scores = prompt_following_score(images, eval_scenes(500, seed=0))
    assert all(abs(scores[name] - CHANCE[name]) < 0.06 for name in scores), scores  # measured within 0.04


def test_recoloured_object_fails_only_the_colour_check():
    for index, scene in enumerate(eval_scenes(30, seed=4)):
        image = render_scene(scene, 64, 64, index=index, seed=4)
        other = COLORS[(COLORS.index(scene.color) + 1 + index % (len(COLORS) - 1)) % len(COLORS)]
        solid = np.all(image == PALETTE[scene.color], axis=-1)
        image[solid] = PALETTE[other]  # pixel-level recolouring: the anti-aliased rim keeps the old colour
        result = check_image(image, scene)
        assert attrs.asdict(result) == {name: name != "color" for name in ATTRIBUTES}, (scene, result)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_checker_detects_a_change_of_each_attribute_alone(attribute):
    """An image of a scene that differs from the caption in one attribute fails that check only."""
    values = VOCABULARY[attribute]
    for index, scene in enumerate(train_scenes(40, seed=6)):
        current = values.index(getattr(scene, attribute))
        changed = attrs.evolve(scene, **{attribute: values[(current + 1 + index) % len(values)]})
        if changed == scene:
            changed = attrs.evolve(scene, **{attribute: values[(current + 1) % len(values)]})
        result = check_image(render_scene(changed, 64, 64, index=index), scene)
        expected = {name: name != attribute for name in ATTRIBUTES}
        assert attrs.asdict(result) == expected, (scene, changed, result)


def test_scores_are_means_of_the_checks():
    scenes = eval_scenes(6, seed=0)
    images = _render_all(scenes, 32, 32)
    images[0] = np.full_like(images[0], PALETTE[scenes[0].background])  # only the background right
    results = [check_image(i, s) for i, s in zip(images, scenes)]
    assert results[0] == CheckResult(True, False, False, False, False, False)
    assert results[0].score == pytest.approx(1 / 6)
    scores = prompt_following_score(images, scenes)
    assert scores["overall"] == pytest.approx(np.mean([r.score for r in results]))
    assert scores["color"] == pytest.approx(5 / 6) and scores["background"] == 1.0
