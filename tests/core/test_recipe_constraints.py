"""Every value of every table has a declared constraint, and every malformed recipe fails before
anything exists: exit code 2, one paragraph naming the recipe file and the key, no run folder (and
no other file), the same under ``--dry-run``. ``prx recipe show --constraints`` prints the
constraints and is still the recipe."""
from __future__ import annotations

import copy
import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w

from prx_core.cli import main
from prx_core.recipe.constraints import METADATA_KEY, field_description, rules_of
from prx_core.recipe.loader import load_recipe, recipe_to_dict
from prx_core.recipe.schema import Recipe
from prx_core.registry import discover
from prx_core.testing import TINY_RECIPE

QUICKSTART = Path(__file__).parents[2] / "recipes" / "quickstart.toml"
DELETE = object()
CNN = "efficientnet-lite0"  # a teacher that loads offline; the bad value fails before it would load
TECHNIQUES = {  # tables that make each built-in technique valid on the tiny model (4 blocks, patch 8)
    "tread": {"routes": [{"start": 1, "end": 2, "keep": 0.5}]},
    "repa": {"teacher": CNN, "block": 1, "projector_dim": 16},
    "lpips": {"teacher": CNN, "min_side": 16},
    "dino_perceptual": {"teacher": CNN, "size": 32},
    "multires": {"phases": [{"name": "a", "resolution": 32, "batch_size": 8, "steps": 2}]},
}

# (id, {dotted key: value or DELETE}, text the message must contain: the key as the user finds it)
CASES: list[tuple[str, dict[str, Any], str]] = [
    # top level
    ("name-empty", {"name": ""}, "name"),
    ("name-slash", {"name": "a/b"}, "name"),
    ("seed-negative", {"seed": -1}, "seed"),
    ("plugins-repeated", {"plugins": ["cfg", "cfg"]}, "plugins"),
    ("plugins-unknown", {"plugins": ["tred"]}, "plugins"),
    ("unknown-key", {"train.stepz": 3}, "stepz"),
    ("unknown-table", {"trian": {"steps": 3}}, "trian"),
    # [model]
    ("model-preset", {"model.preset": "prx-huge"}, "[model] preset"),
    ("model-init-unknown", {"model.init": "kaiming"}, "[model] init"),
    ("model-init-diffusers-missing", {"model.init": "diffusers:/no/such/folder"}, "[model] init"),
    ("model-hidden-zero", {"model.hidden": 0}, "[model] hidden"),
    ("model-depth-zero", {"model.depth": 0}, "[model] depth"),
    ("model-heads-zero", {"model.heads": 0}, "[model] heads"),
    ("model-heads-not-divisor", {"model.heads": 3}, "[model] heads"),
    ("model-head-width", {"model.heads": 32}, "[model] heads"),
    ("model-mlp-ratio-zero", {"model.mlp_ratio": 0.0}, "[model] mlp_ratio"),
    ("model-mlp-ratio-nan", {"model.mlp_ratio": math.nan}, "[model] mlp_ratio"),
    ("model-patch-zero", {"model.patch": 0}, "[model] patch"),
    ("model-bottleneck-zero", {"model.bottleneck": 0}, "[model] bottleneck"),
    ("model-checkpointing-type", {"model.activation_checkpointing": "yes"}, "[model] activation_checkpointing"),
    # [text]
    ("text-encoder-empty", {"text.encoder": ""}, "[text] encoder"),
    ("text-encoder-not-cached", {"text.encoder": "no-such-org/no-such-encoder"}, "[text] encoder"),
    ("text-encoder-no-directory", {"text.encoder": "/no/such/encoder"}, "[text] encoder"),
    ("text-encoder-no-package", {"text.encoder": "package:no_such_package/model"}, "[text] encoder"),
    ("text-none-without-dim", {"text.dim": DELETE}, '[text] encoder = "none": random embeddings need their width'),
    ("text-max-length-zero", {"text.max_length": 0}, "[text] max_length"),
    ("text-dtype", {"text.dtype": "fp16"}, "[text] dtype"),
    ("text-autocast-type", {"text.autocast": "yes"}, "[text] autocast"),
    ("text-clean", {"text.clean": "all"}, "[text] clean"),
    ("text-dim-zero", {"text.dim": 0}, "[text] dim"),
    # [data]
    ("data-resolution-zero", {"data.resolution": 0}, "[data] resolution"),
    ("data-resolution-not-patch-multiple", {"data.resolution": 30}, "[data] resolution"),
    ("data-sources-empty", {"data.sources": []}, "[data] sources"),
    ("data-parquet-missing", {"data.sources": [{"kind": "parquet", "path": "/no/such/shards/*.parquet"}]},
     "[data] sources[0]"),
    ("data-folder-missing", {"data.sources": [{"kind": "folder", "path": "/no/such/folder"}]}, "[data] sources[0]"),
    ("data-tars-missing", {"data.sources": [{"kind": "webdataset", "path": "/no/such/shard-{000..003}.tar"}]},
     "[data] sources[0]"),
    ("data-source-without-path", {"data.sources": [{"kind": "folder"}]}, "[data] sources[0].path"),
    ("data-source-kind", {"data.sources": [{"kind": "csv", "path": "x"}]}, "[data] sources[0].kind"),
    ("data-mds-missing", {"data.sources": [{"kind": "mds", "path": "/no/such/mds"}]}, "[data] sources[0]"),
    ("data-hf-directory-missing", {"data.sources": [{"kind": "hf", "path": "/no/such/dataset"}]}, "[data] sources[0]"),
    ("data-source-split", {"data.sources": [{"kind": "scenes", "split": "test"}]}, "[data] sources[0].split"),
    ("data-source-split-empty", {"data.sources": [{"kind": "scenes", "split": ""}]}, "[data] sources[0].split"),
    ("data-source-streaming-not-hf", {"data.sources": [{"kind": "scenes", "streaming": True}]},
     "[data] sources[0].streaming"),
    ("data-source-weight-zero", {"data.sources": [{"kind": "scenes", "weight": 0.0}]}, "[data] sources[0].weight"),
    ("data-source-weight-nan", {"data.sources": [{"kind": "scenes", "weight": math.nan}]}, "[data] sources[0].weight"),
    ("data-source-caption-key", {"data.sources": [{"kind": "scenes", "caption_key": ""}]},
     "[data] sources[0].caption_key"),
    ("data-source-names-repeated", {"data.sources": [{"kind": "scenes", "weight": 1.0},
                                                     {"kind": "scenes", "weight": 2.0}]}, "[data] sources"),
    ("data-scenes-mixture-unweighted", {"data.sources": [{"kind": "scenes"}, {"kind": "scenes", "name": "b"}]},
     "[data] sources"),
    ("data-buckets-type", {"data.buckets": "no"}, "[data] buckets"),
    ("data-bucket-sizes", {"data.bucket_sizes": "square"}, "[data] bucket_sizes"),
    ("data-workers-negative", {"data.workers": -1}, "[data] workers"),
    ("data-prefetch-zero", {"data.prefetch": 0}, "[data] prefetch"),
    ("data-min-side-negative", {"data.min_side": -1}, "[data] min_side"),
    ("data-bad-share-one", {"data.max_bad_share": 1.0}, "[data] max_bad_share"),
    ("data-bad-share-negative", {"data.max_bad_share": -0.1}, "[data] max_bad_share"),
    ("data-bad-window-zero", {"data.bad_window": 0}, "[data] bad_window"),
    ("data-row-groups-zero", {"data.shuffle_row_groups": 0}, "[data] shuffle_row_groups"),
    ("data-shuffle-window-zero", {"data.shuffle_window": 0}, "[data] shuffle_window"),
    ("data-text-cache-scenes", {"data.text_cache": True}, "[data] text_cache"),
    # [objective]
    ("objective-time-sampling", {"objective.time_sampling": "uniform"}, "[objective] time_sampling"),
    ("objective-shift-zero", {"objective.shift": 0.0}, "[objective] shift"),
    ("objective-logit-mean-nan", {"objective.logit_mean": math.nan}, "[objective] logit_mean"),
    ("objective-logit-std-negative", {"objective.logit_std": -1.0}, "[objective] logit_std"),
    ("objective-uniform-fraction", {"objective.uniform_fraction": 1.5}, "[objective] uniform_fraction"),
    ("objective-t-min-negative", {"objective.t_min": -0.1}, "[objective] t_min"),
    ("objective-t-min-one", {"objective.t_min": 1.0}, "[objective] t_min"),
    ("objective-t-max-zero", {"objective.t_max": 0.0}, "[objective] t_max"),
    ("objective-t-max-above-one", {"objective.t_max": 1.5}, "[objective] t_max"),
    ("objective-t-min-above-t-max", {"objective.t_min": 0.5, "objective.t_max": 0.4}, "[objective] t_min"),
    ("objective-floor-zero", {"objective.loss_t_floor": 0.0}, "[objective] loss_t_floor"),
    ("objective-dropout-negative", {"objective.caption_dropout": -0.1}, "[objective] caption_dropout"),
    ("objective-dropout-above-one", {"objective.caption_dropout": 1.5}, "[objective] caption_dropout"),
    # [optim]
    ("optim-lr-nan", {"optim.lr": math.nan}, "[optim] lr"),
    ("optim-lr-inf", {"optim.lr": math.inf}, "[optim] lr"),
    ("optim-lr-negative", {"optim.lr": -1e-3}, "[optim] lr"),
    ("optim-beta-one", {"optim.betas": [0.9, 1.0]}, "[optim] betas[1]"),
    ("optim-betas-length", {"optim.betas": [0.9]}, "[optim] betas"),
    ("optim-eps-zero", {"optim.eps": 0.0}, "[optim] eps"),
    ("optim-weight-decay-negative", {"optim.weight_decay": -0.1}, "[optim] weight_decay"),
    ("optim-warmup-negative", {"optim.warmup_steps": -1}, "[optim] warmup_steps"),
    ("optim-grad-clip-zero", {"optim.grad_clip": 0.0}, "[optim] grad_clip"),
    ("optim-ema-decay", {"optim.ema_decay": 1.5}, "[optim] ema_decay"),
    ("optim-ema-every-zero", {"optim.ema_every": 0}, "[optim] ema_every"),
    # [train]
    ("train-steps-zero", {"train.steps": 0}, "[train] steps"),
    ("train-steps-negative", {"train.steps": -5}, "[train] steps"),
    ("train-batch-zero", {"train.batch_size": 0}, "[train] batch_size"),
    ("train-micro-zero", {"train.micro_batch_size": 0}, "[train] micro_batch_size"),
    ("train-micro-not-divisor", {"train.micro_batch_size": 3}, "micro_batch_size"),
    ("train-device-unknown", {"train.device": "gpu"}, "[train] device"),
    ("train-device-absent", {"train.device": "cuda:99"}, "[train] device"),
    ("train-precision", {"train.precision": "fp16"}, "[train] precision"),
    ("train-compile-type", {"train.compile": "yes"}, "[train] compile"),
    ("train-log-every-zero", {"train.log_every": 0}, "[train] log_every"),
    ("train-sample-every-negative", {"train.sample_every": -1}, "[train] sample_every"),
    ("train-checkpoint-every-zero", {"train.checkpoint_every": 0}, "[train] checkpoint_every"),
    ("train-keep-zero", {"train.keep_checkpoints": 0}, "[train] keep_checkpoints"),
    ("train-keep-negative", {"train.keep_checkpoints": -1}, "[train] keep_checkpoints"),
    ("train-nonfinite-zero", {"train.max_nonfinite_in_row": 0}, "[train] max_nonfinite_in_row"),
    ("train-weight-growth", {"train.max_weight_growth": 0.5}, "[train] max_weight_growth"),
    ("train-spike-factor", {"train.spike_factor": 1.0}, "[train] spike_factor"),
    ("train-spike-window", {"train.spike_window": 1}, "[train] spike_window"),
    ("train-spike-steps", {"train.spike_steps": -1}, "[train] spike_steps"),
    ("train-wall-zero", {"train.max_wall_s": 0.0}, "[train] max_wall_s"),
    ("train-phase-steps-zero", {"train.phase_steps": [0]}, "[train] phase_steps[0]"),
    ("train-phase-steps-empty", {"train.phase_steps": []}, "[train] phase_steps"),
    ("train-phase-steps-count", {"train.phase_steps": [2, 2]}, "[train] phase_steps"),
    ("train-runs-dir-empty", {"train.runs_dir": ""}, "[train] runs_dir"),
    # [sample]
    ("sample-sampler", {"sample.sampler": "ddim"}, "[sample] sampler"),
    ("sample-steps-zero", {"sample.steps": 0}, "[sample] steps"),
    ("sample-preview-zero", {"sample.preview_steps": 0}, "[sample] preview_steps"),
    ("sample-shift-zero", {"sample.shift": 0.0}, "[sample] shift"),
    ("sample-prompts-zero", {"sample.num_prompts": 0}, "[sample] num_prompts"),
    ("sample-columns-zero", {"sample.columns": 0}, "[sample] columns"),
    ("sample-seed-negative", {"sample.seed": -1}, "[sample] seed"),
    # [eval]
    ("eval-prompts-zero", {"eval.num_prompts": 0}, "[eval] num_prompts"),
    ("eval-one-prompt-with-metric", {"eval.num_prompts": 1, "eval.distribution_metrics": [CNN]}, "[eval] num_prompts"),
    ("eval-steps-zero", {"eval.steps": 0}, "[eval] steps"),
    ("eval-seed-negative", {"eval.seed": -1}, "[eval] seed"),
    ("eval-every-negative", {"eval.every": -1}, "[eval] every"),
    ("eval-pixels-location", {"eval.distribution_metrics": ["pixels:x"]}, "[eval] distribution_metrics[0]"),
    ("eval-metric-unknown", {"eval.distribution_metrics": ["fid"]}, "[eval] distribution_metrics[0]"),
    ("eval-metric-location", {"eval.distribution_metrics": [f"{CNN}:x"]}, "[eval] distribution_metrics[0]"),
    ("eval-metric-repeated", {"eval.distribution_metrics": [CNN, CNN]}, "[eval] distribution_metrics"),
    ("eval-inception-missing", {"eval.distribution_metrics": ["inception:/no/such/inception.pth"]},
     "[eval] distribution_metrics[0]"),
    ("eval-clip-missing", {"eval.distribution_metrics": ["clip:no-such-org/no-such-clip"]},
     "[eval] distribution_metrics[0]"),
    # [distributed]
    ("distributed-strategy", {"distributed.strategy": "deepspeed"}, "[distributed] strategy"),
    ("distributed-backend", {"distributed.backend": "mpi"}, "[distributed] backend"),
    # technique tables
    ("tread-routes-empty", {"plugins": ["tread"], "tread.routes": []}, "[tread] routes"),
    ("tread-keep-zero", {"plugins": ["tread"], "tread.routes": [{"start": 1, "end": 2, "keep": 0.0}]},
     "[tread] routes[0].keep"),
    ("tread-keep-above-one", {"plugins": ["tread"], "tread.routes": [{"start": 1, "end": 2, "keep": 1.5}]},
     "[tread] routes[0].keep"),
    ("tread-start-negative", {"plugins": ["tread"], "tread.routes": [{"start": -1, "end": 2}]},
     "[tread] routes[0].start"),
    ("tread-beyond-depth", {"plugins": ["tread"], "tread.routes": [{"start": 1, "end": 9}]}, "tread"),
    ("tread-overlap", {"plugins": ["tread"], "tread.routes": [{"start": 0, "end": 2}, {"start": 2, "end": 3}]},
     "tread"),
    ("tread-guidance-scale", {"plugins": ["tread", "tread_guidance"], "tread_guidance.scale": -1.0},
     "[tread_guidance] scale"),
    ("tread-guidance-alone", {"plugins": ["tread_guidance"]}, "plugins"),
    ("cfg-scale-nan", {"plugins": ["cfg"], "cfg.scale": math.nan}, "[cfg] scale"),
    ("cfg-interval-order", {"plugins": ["cfg"], "cfg.interval": [0.9, 0.1]}, "[cfg] interval"),
    ("cfg-interval-range", {"plugins": ["cfg"], "cfg.interval": [0.0, 2.0]}, "[cfg] interval[1]"),
    ("cfg-and-tread-guidance", {"plugins": ["cfg", "tread", "tread_guidance"]}, "plugins"),
    ("repa-block-beyond-depth", {"plugins": ["repa"], "repa.block": 9}, "repa"),
    ("repa-block-negative", {"plugins": ["repa"], "repa.block": -1}, "[repa] block"),
    ("repa-projector-zero", {"plugins": ["repa"], "repa.projector_dim": 0}, "[repa] projector_dim"),
    ("repa-weight-negative", {"plugins": ["repa"], "repa.weight": -0.5}, "[repa] weight"),
    ("repa-input-scale-zero", {"plugins": ["repa"], "repa.input_scale": 0.0}, "[repa] input_scale"),
    ("repa-teacher-empty", {"plugins": ["repa"], "repa.teacher": ""}, "[repa] teacher"),
    ("repa-resize", {"plugins": ["repa"], "repa.resize": "bicubic"}, "[repa] resize"),
    ("repa-teacher-unknown", {"plugins": ["repa"], "repa.teacher": "dinov9"}, "repa"),
    ("lpips-scale-zero", {"plugins": ["lpips"], "lpips.scale": 0.0}, "[lpips] scale"),
    ("lpips-min-side-zero", {"plugins": ["lpips"], "lpips.min_side": 0}, "[lpips] min_side"),
    ("lpips-gate", {"plugins": ["lpips"], "lpips.gate_t_clean": 2.0}, "[lpips] gate_t_clean"),
    ("lpips-weight-nan", {"plugins": ["lpips"], "lpips.weight": math.nan}, "[lpips] weight"),
    ("lpips-resize", {"plugins": ["lpips"], "lpips.resize": "bicubic"}, "[lpips] resize"),
    ("lpips-vit-teacher", {"plugins": ["lpips"], "lpips.teacher": "hf:facebook/dinov2-small"}, "lpips"),
    ("dino-teacher-empty", {"plugins": ["dino_perceptual"], "dino_perceptual.teacher": ""},
     "[dino_perceptual] teacher"),
    ("dino-weight-negative", {"plugins": ["dino_perceptual"], "dino_perceptual.weight": -1.0},
     "[dino_perceptual] weight"),
    ("dino-resize", {"plugins": ["dino_perceptual"], "dino_perceptual.resize": "area"}, "[dino_perceptual] resize"),
    ("dino-clamp-type", {"plugins": ["dino_perceptual"], "dino_perceptual.clamp": 1}, "[dino_perceptual] clamp"),
    ("dino-size-zero", {"plugins": ["dino_perceptual"], "dino_perceptual.size": 0}, "[dino_perceptual] size"),
    ("dino-gate", {"plugins": ["dino_perceptual"], "dino_perceptual.gate_t_clean": -0.1},
     "[dino_perceptual] gate_t_clean"),
    ("muon-lr-negative", {"plugins": ["muon"], "muon.lr": -1.0}, "[muon] lr"),
    ("muon-momentum-one", {"plugins": ["muon"], "muon.momentum": 1.0}, "[muon] momentum"),
    ("muon-ns-steps-zero", {"plugins": ["muon"], "muon.ns_steps": 0}, "[muon] ns_steps"),
    ("muon-weight-decay", {"plugins": ["muon"], "muon.weight_decay": -1.0}, "[muon] weight_decay"),
    ("muon-coefficients-nan", {"plugins": ["muon"], "muon.ns_coefficients": [3.4, math.nan, 2.0]},
     "[muon] ns_coefficients[1]"),
    ("multires-empty", {"plugins": ["multires"], "multires.phases": []}, "[multires] phases"),
    ("multires-steps-zero", {"plugins": ["multires"], "multires.phases": [
        {"name": "a", "resolution": 32, "batch_size": 8, "steps": 0}]}, "[multires] phases[0].steps"),
    ("multires-batch-zero", {"plugins": ["multires"], "multires.phases": [
        {"name": "a", "resolution": 32, "batch_size": 0, "steps": 2}]}, "[multires] phases[0].batch_size"),
    ("multires-resolution-zero", {"plugins": ["multires"], "multires.phases": [
        {"name": "a", "resolution": 0, "batch_size": 8, "steps": 2}]}, "[multires] phases[0].resolution"),
    ("multires-name-empty", {"plugins": ["multires"], "multires.phases": [
        {"name": "", "resolution": 32, "batch_size": 8, "steps": 2}]}, "[multires] phases[0].name"),
    ("multires-disabled-repeated", {"plugins": ["multires", "repa"], "multires.phases": [
        {"name": "a", "resolution": 32, "batch_size": 8, "steps": 2, "disabled": ["repa", "repa"]}]},
     "[multires] phases[0].disabled"),
    ("multires-resolution-not-patch-multiple", {"plugins": ["multires"], "multires.phases": [
        {"name": "a", "resolution": 30, "batch_size": 8, "steps": 2}]}, "phases[0]"),
    ("multires-names-repeated", {"plugins": ["multires"], "multires.phases": [
        {"name": "a", "resolution": 32, "batch_size": 8, "steps": 2}] * 2}, "[multires] phases"),
    ("multires-disables-unknown", {"plugins": ["multires"], "multires.phases": [
        {"name": "a", "resolution": 32, "batch_size": 8, "steps": 2, "disabled": ["tred"]}]}, "phases[0]"),
    ("multires-batch-split", {"plugins": ["multires"], "train.micro_batch_size": 3, "multires.phases": [
        {"name": "a", "resolution": 32, "batch_size": 8, "steps": 2}]}, "micro_batch_size"),
]


def malformed(folder: Path, changes: dict[str, Any]) -> Path:
    """The tiny recipe, standalone (no extends, so every key comes from this file), with ``changes``."""
    data = tomllib.loads(TINY_RECIPE.read_text())
    for technique in changes.get("plugins", []):
        if technique in TECHNIQUES:
            data[technique] = copy.deepcopy(TECHNIQUES[technique])
    for dotted, value in changes.items():
        *tables, key = dotted.split(".")
        target = data
        for table in tables:
            target = target.setdefault(table, {})
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    path = folder / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(("changes", "key"), [(c, k) for _, c, k in CASES], ids=[i for i, _, _ in CASES])
def test_a_malformed_recipe_fails_before_anything_exists(changes, key, dry_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a run would create runs/tiny here
    recipe = malformed(tmp_path, changes)
    assert main(["run", "bad.toml", "--plain"] + (["--dry-run"] if dry_run else [])) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.startswith("error: bad.toml: "), err  # the recipe file
    assert key in err, err
    assert "\n\n" not in err.strip(), err  # one paragraph
    assert sorted(p.name for p in tmp_path.iterdir()) == [recipe.name]  # no run folder, nothing else


def test_the_malformed_recipes_cover_every_constrained_key():
    """Each key that declares a constraint, takes part in a rule or holds a number (in the core
    tables and every installed technique's) is broken by at least one case. Keys that take any
    value of their type (a free string, a boolean, a Literal's names) are refused by type alone,
    which tests/core/test_recipe.py checks once for every kind of type."""
    covered = {re.sub(r"\[\d+\]", "", re.sub(r"^\[(\w+)\] ", r"\1.", key)) for _, _, key in CASES}
    covered |= {dotted for _, changes, _ in CASES for dotted in changes}
    keys = set()
    for path, cls in _config_classes():
        hints = typing.get_type_hints(cls)
        keys |= {f"{path}.{key}".lstrip(".") for rule in rules_of(cls) for key in rule.keys}
        for field in attrs.fields(cls):
            numeric = {int, float} & set(typing.get_args(hints[field.name]) or (hints[field.name],))
            if field.metadata.get(METADATA_KEY) or numeric:
                keys.add(f"{path}.{field.name}".lstrip("."))
    free = {"tread.routes.end", "data.sources.path"}  # any integer (negative: from the last block); a path
    assert sorted(keys - covered - free) == []


def _config_classes() -> list[tuple[str, type]]:
    """(dotted path, attrs class) of every table: the core's, the entries of their arrays of tables,
    and each installed technique's."""
    found: list[tuple[str, type]] = [("", Recipe)]
    hints = typing.get_type_hints(Recipe)
    for name in hints:
        if attrs.has(hints[name]):
            found.append((name, hints[name]))
    for name, technique in discover().techniques.items():
        if technique.config is not None:
            found.append((name, technique.config))
    for path, cls in list(found[1:]):
        for field_name, tp in typing.get_type_hints(cls).items():
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            if len(args) == 1 and attrs.has(args[0]):
                found.append((f"{path}.{field_name}", args[0]))
    return found


def test_every_number_of_every_table_declares_a_constraint():
    """Integers and floats (of the core tables and of the built-in techniques) say which values they take."""
    missing = []
    for path, cls in _config_classes():
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            numeric = {int, float} & set(typing.get_args(hints[field.name]) or (hints[field.name],))
            if numeric and not field.metadata.get(METADATA_KEY):
                missing.append(f"{path}.{field.name}".lstrip("."))
    # free numbers: a route's end counts from the last block when negative; the logit-normal mean
    # and Newton-Schulz coefficients may be any finite value (every number must be finite)
    assert sorted(missing) == ["muon.ns_coefficients", "objective.logit_mean", "tread.routes.end"]


def test_recipe_show_constraints_prints_each_key_with_its_constraint_and_is_still_the_recipe(tmp_path, capsys):
    registry = discover()
    assert main(["recipe", "show", str(QUICKSTART), "--constraints"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    steps = lines[[i for i, line in enumerate(lines) if line == "[train]"][0] + 1]
    readme = " ".join((QUICKSTART.parents[1] / "README.md").read_text().split())
    assert " ".join(steps.split()) == "steps = 120000 # an integer >= 1"
    assert "`steps = 120000 # an integer >= 1`" in readme  # the README's example is this output
    assert any(line.startswith("keep_checkpoints = 2") and line.endswith("# an integer >= 1") for line in lines)
    assert any(line.startswith("caption_dropout = 0.1") and line.endswith("# a number in [0, 1]") for line in lines)
    assert any(line.startswith("# micro_batch_size: unset") and "(or unset)" in line for line in lines)
    assert "#   sources[].weight: a number > 0 (or unset)" in lines
    assert "# rule: t_min < t_max" in lines
    assert any(line.startswith("momentum = 0.95") and line.endswith("# a number in [0, 1)") for line in lines)
    assert any(line.startswith("routes = ") for line in lines) and "#   routes[].keep: a number in (0, 1]" in lines
    (tmp_path / "shown.toml").write_text(out)  # still a recipe, the same one
    assert recipe_to_dict(load_recipe(tmp_path / "shown.toml", (), registry)) == recipe_to_dict(
        load_recipe(QUICKSTART, (), registry))
    for field in attrs.fields(Recipe):
        if field.name != "techniques":
            assert field_description(Recipe, field.name)
