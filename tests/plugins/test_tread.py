"""TREAD routing: the plain functions, the router, the denoiser's routed path, the plugin hooks."""
from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch
from torch import nn

from prx_core.errors import RecipeError
from prx_core.model.config import PRESETS, DenoiserConfig
from prx_core.model.denoiser import patchify, unpatchify
from prx_core.model.flops import block_forward_flops, train_flops_per_image
from prx_core.model.tokens import gather_tokens, scatter_tokens
from prx_core.recipe.constraints import config_problems, describe_violation
from prx_core.recipe.schema import ModelConfig, Recipe
from prx_core.types import CostTerm, Phase, Route, RunContext
from prx_tread.config import RouteSpan, RouteSpec, TreadConfig, resolve_routes
from prx_tread.plugin import Tread, prx_register_techniques
from prx_tread.router import TreadRouter
from prx_tread.routing import kept_count, route_seed, routed_flops_saved, select_tokens, step_generator
from random_denoiser import SMALL, random_denoiser



def model_inputs(batch: int = 2, height: int = 16, width: int = 16, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 3, height, width, generator=generator)
    t = torch.rand(batch, generator=generator)
    text = torch.randn(batch, 5, SMALL.text_dim, generator=generator)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:batch]
    return x_t, t, text, mask


def token_mask(index: torch.Tensor, tokens: int) -> torch.Tensor:
    """(batch, tokens) boolean, True at the positions in ``index``."""
    return torch.zeros(index.shape[0], tokens, dtype=torch.bool).scatter(1, index, True)


def pixels_of(tokens_mask: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """Per-token boolean -> the same boolean over each token's patch vector."""
    return tokens_mask[..., None].expand(-1, -1, channels * patch * patch)


# --- plain functions -----------------------------------------------------------------------


@pytest.mark.parametrize("tokens, keep, kept", [(256, 0.5, 128), (5, 0.5, 3), (10, 0.01, 1), (7, 1.0, 7), (9, 0.34, 3)])
def test_kept_count_rounds_half_up_and_keeps_at_least_one(tokens, keep, kept):
    assert kept_count(tokens, keep) == kept


def test_select_tokens_gives_sorted_distinct_positions_per_sample():
    index = select_tokens(6, 37, 0.3, torch.Generator().manual_seed(0), "cpu")
    assert index.shape == (6, 11) and index.dtype == torch.int64
    assert (index.diff(dim=1) > 0).all()
    assert index.min() >= 0 and index.max() < 37
    assert len({tuple(row.tolist()) for row in index}) == 6


def test_select_tokens_with_keep_one_is_every_token():
    index = select_tokens(3, 20, 1.0, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(index, torch.arange(20).expand(3, -1))


def test_select_tokens_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    select_tokens(4, 64, 0.5, step_generator(0, 3, 0, "cpu"), "cpu")
    TreadRouter((RouteSpan(2, 14, 0.5),), seed=0, rank=0).plan(4, (8, 8), 3, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)


def loop_gather(x, index):
    return torch.stack([x[b, index[b]] for b in range(x.shape[0])])


def loop_scatter(base, index, values):
    rows = []
    for b in range(base.shape[0]):
        row = base[b].clone()
        row[index[b]] = values[b]
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("shape", [(3, 10, 5), (2, 12, 2, 3)])
def test_gather_matches_a_per_sample_loop_in_value_and_gradient(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, requires_grad=True)
    index = select_tokens(shape[0], shape[1], 0.4, generator, "cpu")
    weight = torch.randn(shape[0], index.shape[1], *shape[2:], generator=generator)
    out = gather_tokens(x, index)
    reference = loop_gather(x, index)
    assert torch.equal(out, reference)
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    (grad_reference,) = torch.autograd.grad((reference * weight).sum(), x)
    assert torch.equal(grad, grad_reference)


def test_scatter_matches_a_per_sample_loop_in_value_and_gradient():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(3, 10, 4, generator=generator, requires_grad=True)
    index = select_tokens(3, 10, 0.5, generator, "cpu")
    values = torch.randn(3, 5, 4, generator=generator, requires_grad=True)
    weight = torch.randn(3, 10, 4, generator=generator)
    out = scatter_tokens(base, index, values)
    reference = loop_scatter(base, index, values)
    assert torch.equal(out, reference)
    grads = torch.autograd.grad((out * weight).sum(), (base, values))
    grads_reference = torch.autograd.grad((reference * weight).sum(), (base, values))
    for grad, grad_reference in zip(grads, grads_reference):
        assert torch.equal(grad, grad_reference)
    # Both paths carry gradient: the skipped rows into base, the kept rows into values.
    kept = token_mask(index, 10)[..., None].expand(-1, -1, 4)
    assert (grads[0][kept] == 0).all() and (grads[0][~kept] != 0).all()
    assert (grads[1] != 0).all()


def test_gather_and_scatter_pass_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(2)
    index = select_tokens(2, 6, 0.5, generator, "cpu")
    x = torch.randn(2, 6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    values = torch.randn(2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: gather_tokens(a, index), (x,))
    assert torch.autograd.gradcheck(lambda a, v: scatter_tokens(a, index, v), (x, values))


# --- the router ----------------------------------------------------------------------------


def test_router_is_reproducible_from_seed_step_and_rank():
    router = TreadRouter((RouteSpan(2, 14, 0.5),), seed=7, rank=1)
    device = torch.device("cpu")
    first = router.plan(4, (8, 8), 100, device)[0].index
    assert torch.equal(first, router.plan(4, (8, 8), 100, device)[0].index)
    others = [
        router.plan(4, (8, 8), 101, device)[0].index,
        TreadRouter((RouteSpan(2, 14, 0.5),), seed=7, rank=0).plan(4, (8, 8), 100, device)[0].index,
        TreadRouter((RouteSpan(2, 14, 0.5),), seed=8, rank=1).plan(4, (8, 8), 100, device)[0].index,
    ]
    for other in others:
        assert not torch.equal(first, other)
    assert len({tuple(row.tolist()) for row in first}) == 4  # a different subset per sample
    assert len({route_seed(s, st, r) for s in range(3) for st in range(3) for r in range(3)}) == 27


def test_router_plans_every_route_on_any_grid():
    routes = (RouteSpan(1, 2, 0.5), RouteSpan(4, 6, 0.25))
    plan = TreadRouter(routes, seed=0, rank=0).plan(3, (3, 5), 0, torch.device("cpu"))
    assert [(r.start, r.end) for r in plan] == [(1, 2), (4, 6)]
    assert plan[0].index.shape == (3, 8) and plan[1].index.shape == (3, 4)
    assert all(r.index.max() < 15 for r in plan)
    assert not torch.equal(plan[0].index[:, :4], plan[1].index)


# --- the routed denoiser -------------------------------------------------------------------


def test_routing_with_keep_one_equals_the_dense_forward():
    model = random_denoiser()
    x_t, t, text, mask = model_inputs()
    plan = TreadRouter((RouteSpan(1, 2, 1.0),), seed=0, rank=0).plan(2, (4, 4), 0, torch.device("cpu"))
    dense, _ = model(x_t, t, text, mask)
    routed, _ = model(x_t, t, text, mask, route=plan)
    torch.testing.assert_close(routed, dense, rtol=0, atol=1e-6)


def test_skipped_tokens_keep_their_route_start_values():
    """Route blocks 1..3 (to the last block): the skipped tokens' output must equal that of the
    same model with blocks 1..3 removed, and the kept tokens' must not."""
    model = random_denoiser()
    truncated = copy.deepcopy(model)
    truncated.blocks = nn.ModuleList(list(model.blocks)[:1])
    x_t, t, text, mask = model_inputs()
    index = select_tokens(2, 16, 0.5, torch.Generator().manual_seed(3), "cpu")
    routed, _ = model(x_t, t, text, mask, route=(Route(1, 3, index),))
    reference, _ = truncated(x_t, t, text, mask)
    skipped = pixels_of(~token_mask(index, 16), SMALL.patch)
    routed_tokens, reference_tokens = patchify(routed, SMALL.patch), patchify(reference, SMALL.patch)
    torch.testing.assert_close(routed_tokens[skipped], reference_tokens[skipped], rtol=0, atol=1e-6)
    assert not torch.allclose(routed_tokens[~skipped], reference_tokens[~skipped], atol=1e-3)


def test_rope_positions_follow_the_kept_tokens():
    """Keep the right half of a 4x8 grid through every block. With the text keys masked out,
    attention sees only relative positions, so the kept tokens must come out as a dense forward
    on the right-half crop. Had the positions not been gathered, the kept tokens would sit at
    the grid's first 16 positions (its top half, 2x8), a different layout."""
    model = random_denoiser()
    x_t, t, text, _ = model_inputs(height=16, width=32)
    no_text = torch.zeros(2, text.shape[1], dtype=torch.bool)
    right = torch.arange(32).view(4, 8)[:, 4:].reshape(1, -1).expand(2, -1).contiguous()
    routed, _ = model(x_t, t, text, no_text, route=(Route(0, SMALL.depth - 1, right),))
    crop, _ = model(x_t[..., 16:], t, text, no_text)
    torch.testing.assert_close(routed[..., 16:], crop, rtol=0, atol=1e-5)
    # The premise: the same 16 tokens laid out as a 2x8 grid (row-major order kept) differ.
    tokens = patchify(x_t[..., 16:], SMALL.patch)
    relaid, _ = model(unpatchify(tokens, SMALL.patch, 8, 32), t, text, no_text)
    assert not torch.allclose(patchify(relaid, SMALL.patch), patchify(crop, SMALL.patch), atol=1e-3)


def test_gradients_reach_the_kept_and_the_skipped_path():
    model = random_denoiser()
    x_t, t, text, mask = model_inputs()
    x_t.requires_grad_(True)
    index = select_tokens(2, 16, 0.5, torch.Generator().manual_seed(4), "cpu")
    kept = pixels_of(token_mask(index, 16), SMALL.patch)
    routed_blocks = [p for blk in list(model.blocks)[1:] for p in blk.parameters()]
    for path, mask_of_path in (("kept", kept), ("skipped", ~kept)):
        model.zero_grad()
        x_t.grad = None
        out, _ = model(x_t, t, text, mask, route=(Route(1, 3, index),))
        patchify(out, SMALL.patch)[mask_of_path].pow(2).sum().backward()
        grad_tokens = patchify(x_t.grad, SMALL.patch)
        # Each path's loss reaches the input pixels of its own tokens ...
        assert (grad_tokens[mask_of_path].abs().view(-1, kept.shape[-1]).sum(-1) > 0).all()
        assert model.blocks[0].qkv.weight.grad.abs().sum() > 0
        routed_grad = sum(p.grad.abs().sum() for p in routed_blocks if p.grad is not None)
        # ... and only the kept path goes through the routed blocks.
        assert (routed_grad > 0) if path == "kept" else (routed_grad == 0)


def test_routed_forward_on_a_non_square_grid():
    model = random_denoiser()
    x_t, t, text, mask = model_inputs(height=12, width=20)
    plan = TreadRouter((RouteSpan(1, 2, 0.5),), seed=0, rank=0).plan(2, (3, 5), 0, torch.device("cpu"))
    out, captured = model(x_t, t, text, mask, route=plan, capture=(2,))
    assert out.shape == x_t.shape and torch.isfinite(out).all()
    assert captured[2].hidden.shape == (2, 8, SMALL.hidden) and torch.equal(captured[2].index, plan[0].index)


# --- configuration, validation and the plugin hooks ----------------------------------------


def test_default_route_is_blocks_2_to_penultimate():
    assert resolve_routes(TreadConfig(), 16) == (RouteSpan(2, 14, 0.5),)
    assert resolve_routes(TreadConfig(routes=(RouteSpec(end=12),)), 16) == (RouteSpan(2, 12, 0.5),)
    two = TreadConfig(routes=(RouteSpec(start=9, end=-1, keep=0.25), RouteSpec(start=2, end=8)))
    assert resolve_routes(two, 16) == (RouteSpan(2, 8, 0.5), RouteSpan(9, 15, 0.25))


@pytest.mark.parametrize(
    "routes, words",
    [
        ((), '[tread] routes = []: expected a non-empty array of routes (to train dense, remove "tread" from plugins).'),
        ((RouteSpec(keep=0.0),), "[tread] routes[0].keep = 0.0: expected a number in (0, 1]."),
        ((RouteSpec(keep=1.5),), "[tread] routes[0].keep = 1.5: expected a number in (0, 1]."),
        ((RouteSpec(keep=float("nan")),), "[tread] routes[0].keep = nan: expected a finite number."),
        ((RouteSpec(start=-1),), "[tread] routes[0].start = -1: expected an integer >= 0."),
    ],
)
def test_route_values_are_constrained(routes, words):
    assert [describe_violation(v) for v in config_problems(TreadConfig(routes=routes), ("tread",))] == [words]


@pytest.mark.parametrize(
    "routes, words",
    [
        ((RouteSpec(end=16),), "routes[0]: blocks 2..16"),
        ((RouteSpec(start=-1),), "routes[0]: blocks -1..-2"),
        ((RouteSpec(start=9, end=5),), "routes[0]: blocks 9..5"),
        ((RouteSpec(start=2, end=5), RouteSpec(start=5, end=8)), "blocks 2..5 and 5..8 overlap"),
    ],
)
def test_invalid_routes_are_recipe_errors_naming_the_key(routes, words):
    with pytest.raises(RecipeError) as error:
        resolve_routes(TreadConfig(routes=routes), 16)
    assert str(error.value).startswith("routes") and words in str(error.value)


def test_check_recipe_reports_routes_beyond_the_recipes_model():
    recipe = Recipe(model=ModelConfig(preset="prx-test"))
    context, four_blocks = RunContext(recipe=recipe), recipe.model.resolve(text_dim=8)
    assert Tread(TreadConfig(), context).prx_check_recipe(model_config=four_blocks) == []
    problems = Tread(TreadConfig(routes=(RouteSpec(end=12),)), context).prx_check_recipe(model_config=four_blocks)
    assert len(problems) == 1 and "4 blocks" in problems[0]


def test_routing_hook_gives_a_router_seeded_by_the_run():
    config = DenoiserConfig(**PRESETS["prx-1.2b"])
    phase = Phase("512 px", steps=10, resolution=512, batch_size=4)
    plugin = Tread(TreadConfig(), RunContext(recipe=Recipe(), seed=3, rank=2))
    router = plugin.prx_routing(phase, config)
    assert router == TreadRouter((RouteSpan(2, 14, 0.5),), seed=3, rank=2)
    (route,) = router.plan(4, (16, 16), 5, torch.device("cpu"))
    assert (route.start, route.end, route.index.shape) == (2, 14, (4, 128))


def test_cost_matches_the_recipes_analytic_numbers():
    """docs/recipe.md §9: 1.36 TFLOP/image dense at 512 px, 0.88 with TREAD (256 text tokens)."""
    config = DenoiserConfig(**PRESETS["prx-1.2b"])
    phase = Phase("512 px", steps=10, resolution=512, batch_size=4)
    (term,) = Tread(TreadConfig(), RunContext(recipe=Recipe())).prx_cost(config, phase, 256)
    expected = 3 * 13 * (block_forward_flops(config, 256, 256) - block_forward_flops(config, 128, 256))
    assert term == CostTerm("tread", -expected, "denoiser")
    dense = train_flops_per_image(config, 256, 256)
    assert round(dense / 1e12, 2) == 1.36 and round((dense + term.flops) / 1e12, 2) == 0.88
    two = TreadConfig(routes=(RouteSpec(start=2, end=8), RouteSpec(start=9, end=14, keep=0.25)))
    (term,) = Tread(two, RunContext(recipe=Recipe())).prx_cost(config, phase, 256)
    assert term.flops == -routed_flops_saved(config, 256, 256, [(2, 8, 0.5), (9, 14, 0.25)])


def test_techniques_declare_roles_effects_and_requirements():
    from prx_core.registry import discover

    registry = discover(only=["tread"])
    (technique,) = prx_register_techniques()
    assert registry.roles("tread") == ("routing",)
    assert technique.effects == ("routes_tokens",)
    assert technique.config is TreadConfig
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="prx.plugins")}
    assert entry_points["tread"] == "prx_tread.plugin"


def test_the_plugin_manager_reports_a_route_beyond_the_model():
    from prx_core.registry import discover
    from prx_core.techniques import TechniqueSet

    registry = discover(only=["tread"])
    bad = Recipe(model=ModelConfig(preset="prx-test"), plugins=["tread"],
                 techniques={"tread": TreadConfig(routes=(RouteSpec(end=12),))})
    with pytest.raises(RecipeError, match=r"tread: routes\[0\]: blocks 2..12"):
        TechniqueSet(bad, registry, RunContext(recipe=bad), bad.model.resolve(text_dim=8))
    good = Recipe(model=ModelConfig(preset="prx-test"), plugins=["tread"])
    config = good.model.resolve(text_dim=8)
    techniques = TechniqueSet(good, registry, RunContext(recipe=good, seed=5), config)
    phase = Phase("test", steps=1, resolution=64, batch_size=2)
    [(name, router)] = techniques.call("prx_routing", phase=phase, model_config=config)
    assert name == "tread" and router == TreadRouter((RouteSpan(2, 2, 0.5),), seed=5, rank=0)
