"""The cost model against hand-computed numbers for the PRX-1.2B shape, with fake technique terms."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from prx_core.errors import PluginError, UserError
from prx_core.measure.cost import (
    REFERENCE,
    estimate_cost,
    format_flops,
    load_measurements,
    render_cost_report,
)
from prx_core.recipe.schema import Recipe
from prx_core.types import CostTerm, Phase

# PRX-1.2B at 512 px (256 image tokens) with 256 text tokens of width 2304, forward FLOPs:
#   per image token per block 2*(1792*5376 + 1792^2 + 3*1792*6272) = 93,126,656
#   block = 256*93,126,656 + text K/V 2*256*1792*3584 + attention 4*256*(256+256)*1792 = 28,068,282,368
#   16 blocks = 449,092,517,888; patch in/out 3,456,106,496; text projection 2,113,929,216
#   forward = 454,662,553,600; training = 3x = 1,363,987,660,800 (the 1.36 TFLOP of docs/recipe.md §9)
DENSE_512 = 1_363_987_660_800.0
# The same at 1024 px (1024 image tokens): block = 1024*93,126,656 + 3,288,334,336 + 4*1024*1280*1792
DENSE_1024 = 3 * (16 * (1024 * 93_126_656 + 3_288_334_336 + 4 * 1024 * 1280 * 1792)
                  + 2 * 1024 * (3072 * 256 + 256 * 1792 + 1792 * 3072) + 2_113_929_216)


class FakeTechniques:
    """The TechniqueSet interface the cost model uses: ``names``, ``model_config`` (PRX-1.2B with
    T5Gemma's 2304-wide text), ``call`` and ``call_one``."""

    def __init__(self, terms: dict[str, list[CostTerm]], phases: list[Phase] | None = None):
        self.model_config = recipe().model.resolve(2304)
        self.terms = terms
        self.phases = phases
        self.names = tuple(sorted(terms))

    def call_one(self, hook, **kwargs):
        assert hook == "prx_resolution_schedule"
        return ("multires", self.phases) if self.phases else ("", None)

    def call(self, hook, phase=None, **kwargs):
        assert hook == "prx_cost" and set(kwargs) == {"model_config", "text_tokens"}
        return [(name, terms) for name, terms in sorted(self.terms.items())
                if phase is None or name not in phase.disabled]


def recipe(**train) -> Recipe:
    r = Recipe(name="speedrun")
    r.text.dim = 2304
    for key, value in train.items():
        setattr(r.train, key, value)
    return r


def test_dense_prx_1_2b_flops_match_hand_count():
    report = estimate_cost(recipe(), FakeTechniques({}), gpu="h100", mfu=0.5)
    (phase,) = report.phases
    assert phase.image_tokens == 256 and phase.text_tokens == 256
    assert phase.flops_per_image == pytest.approx(DENSE_512, rel=1e-12)
    assert DENSE_1024 / 1e12 == pytest.approx(5.234, abs=1e-3)
    at_1024 = estimate_cost(recipe(), FakeTechniques({}, [Phase("hi", 10, 1024, 512)]), mfu=0.5)
    assert at_1024.phases[0].flops_per_image == pytest.approx(DENSE_1024, rel=1e-12)


def test_technique_terms_throughput_hours_and_dollars():
    terms = {
        "tread": [CostTerm("tread", -0.48e12, "denoiser")],
        "repa": [CostTerm("repa_teacher", 0.2e12, "teacher")],
        "muon": [CostTerm("newton_schulz", 50e12, "optimizer")],  # per optimizer step
    }
    report = estimate_cost(recipe(steps=1000, batch_size=1024), FakeTechniques(terms), gpu="h100", gpus=8,
                           price=3.0, mfu=0.4)
    (phase,) = report.phases
    assert phase.flops_in("denoiser") == pytest.approx(DENSE_512 - 0.48e12)
    assert phase.flops_in("teacher") == pytest.approx(0.2e12)
    assert phase.flops_in("optimizer") == pytest.approx(50e12 / 1024)
    total = DENSE_512 - 0.48e12 + 0.2e12 + 50e12 / 1024
    images_per_s = 0.4 * 989e12 / total
    assert phase.images_per_s_per_gpu == pytest.approx(images_per_s)
    seconds = 1000 * 1024 / (images_per_s * 8)
    assert report.wall_hours == pytest.approx(seconds / 3600)
    assert report.gpu_hours == pytest.approx(seconds * 8 / 3600)
    assert report.dollars == pytest.approx(seconds * 8 / 3600 * 3.0)
    assert phase.mfu_source == "given" and report.mfu == pytest.approx(0.4)
    # The reference's 112.64 M images in 768 H200-hours at this recipe's FLOPs per image.
    assert report.reference_mfu == pytest.approx(total * 112.64e6 / (768 * 3600 * 989e12))


def test_phases_from_the_schedule_and_disabled_techniques():
    phases = [Phase("512px", 100_000, 512, 1024), Phase("1024px", 20_000, 1024, 512, disabled=("repa",))]
    terms = {"repa": [CostTerm("teacher", 1e11, "teacher")], "muon": [CostTerm("ns", 1e12, "optimizer")]}
    report = estimate_cost(recipe(), FakeTechniques(terms, phases), gpu="h200", gpus=32, price=2.0, mfu=0.3)
    low, high = report.phases
    assert low.flops_in("teacher") == pytest.approx(1e11) and high.flops_in("teacher") == 0
    assert low.flops_in("optimizer") == pytest.approx(1e12 / 1024)
    assert high.flops_in("optimizer") == pytest.approx(1e12 / 512)
    assert report.images == pytest.approx(REFERENCE.images) == 112_640_000


def test_reference_run_numbers():
    assert REFERENCE.gpu_hours == 768
    assert REFERENCE.dollars == 1536  # "about $1,500"
    assert REFERENCE.images_per_s_per_gpu == pytest.approx(40.74, abs=0.01)


def test_a100_peak_and_default_mfu():
    report = estimate_cost(recipe(), FakeTechniques({}), gpu="A100")
    assert report.phases[0].images_per_s_per_gpu == pytest.approx(0.35 * 312e12 / DENSE_512)
    assert report.phases[0].mfu_source == "assumed"


def test_measured_throughput_sets_the_mfu(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"results": [
        {"plugins": ["tread"], "resolution": 512, "images_per_s": 300.0},
        {"plugins": [], "resolution": 512, "images_per_s": 250.0},
    ]}))
    phases = [Phase("512px", 10, 512, 1024), Phase("1024px", 10, 1024, 512)]
    terms = {"tread": [CostTerm("tread", -0.4e12, "denoiser")]}
    report = estimate_cost(recipe(), FakeTechniques(terms, phases), gpu="h100", measured=load_measurements(bench))
    low, high = report.phases
    assert low.images_per_s_per_gpu == pytest.approx(300.0)
    assert low.mfu == pytest.approx(300.0 * (DENSE_512 - 0.4e12) / 989e12)
    # 1024 px was not measured: the MFU measured at 512 px carries over.
    assert high.mfu == pytest.approx(low.mfu)
    assert high.images_per_s_per_gpu == pytest.approx(low.mfu * 989e12 / (DENSE_1024 - 0.4e12))


def test_reference_json_lines_and_unmatched_plugins(tmp_path):
    lines = tmp_path / "ref.jsonl"
    lines.write_text('{"res": 512, "img_per_s": 132.0}\n{"failed": "--res 1024"}\n')
    (m,) = load_measurements(lines)
    assert (m.resolution, m.images_per_s, m.plugins) == (512, 132.0, None)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([{"plugins": ["repa"], "resolution": 512, "images_per_s": 1.0}]))
    with pytest.raises(UserError, match="no measurement matches"):
        estimate_cost(recipe(), FakeTechniques({}), measured=load_measurements(bench))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"resolution": 512}]))
    with pytest.raises(UserError, match="record 0"):
        load_measurements(bad)


def test_bad_terms_and_arguments_are_errors():
    with pytest.raises(PluginError, match="category 'memory'"):
        estimate_cost(recipe(), FakeTechniques({"x": [CostTerm("x", 1.0, "memory")]}))
    with pytest.raises(PluginError, match="removes more"):
        estimate_cost(recipe(), FakeTechniques({"x": [CostTerm("x", -2e12, "denoiser")]}))
    with pytest.raises(UserError, match="unknown GPU"):
        estimate_cost(recipe(), FakeTechniques({}), gpu="v100")
    with pytest.raises(UserError, match="--mfu"):
        estimate_cost(recipe(), FakeTechniques({}), mfu=35)


def test_renderer_shows_phases_terms_and_reference():
    report = estimate_cost(recipe(), FakeTechniques({"tread": [CostTerm("tread", -0.48e12)]}), gpus=32, mfu=0.3)
    console = Console(record=True, width=250)
    console.print(render_cost_report(report))
    text = console.export_text()
    assert "1.364" in text and "-0.480" in text and "0.884" in text
    assert "reference (32 x H200, 24 h)" in text and "1,536" in text


def test_a_tiny_model_is_shown_in_a_unit_where_every_term_is_non_zero():
    """The quickstart's model costs about a GFLOP per image: in TFLOP with three decimals every
    technique's term would read 0.000."""
    tiny = recipe()
    tiny.model.preset = "prx-tiny"
    terms = {"repa": [CostTerm("repa_teacher", 1.0e7, "teacher")], "muon": [CostTerm("ns", 3.2e9, "optimizer")]}
    techniques = FakeTechniques(terms, [Phase("32px", 10, 32, 32)])
    techniques.model_config = tiny.model.resolve(384)
    report = estimate_cost(tiny, techniques, mfu=0.3)
    console = Console(record=True, width=250)
    console.print(render_cost_report(report))
    text = console.export_text()
    assert "GFLOP/img denoiser" in text and "Cost terms (GFLOP per image" in text
    assert " 0.010 " in text and " 0.100 " in text  # REPA's teacher and Muon per image (3.2 GFLOP / 32)
    assert format_flops(2.1e5, 1e9) == "0.00021" and format_flops(0.0, 1e9) == "0.000"
