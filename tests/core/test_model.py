"""The PRX denoiser (docs/recipe.md §1): size, FLOPs, shapes, adaLN-Zero init, masking, RoPE, norms,
and one block against a direct re-implementation of the recipe's block formula."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prx_core.model.config import PRESETS, DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser, patchify, unpatchify
from prx_core.model.flops import train_flops_per_image
from prx_core.model.layers import Block, RMSNorm, apply_rope, rope_tables, timestep_embedding
from prx_core.plan import parameter_count
from prx_core.types import StepTensors

SMALL = DenoiserConfig(hidden=32, depth=3, heads=2, mlp_ratio=2.0, patch=4, bottleneck=16, text_dim=8)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Every weight random (adaLN-Zero would otherwise make each block the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            centre = 1.0 if name.endswith(".scale") else 0.0  # norm scales around 1
            p.copy_(centre + torch.randn(p.shape, generator=generator) * std)
    return module


def inputs(batch: int = 2, height: int = 16, width: int = 16, text_len: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 3, height, width, generator=generator)
    t = torch.rand(batch, generator=generator)
    text = torch.randn(batch, text_len, SMALL.text_dim, generator=generator)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[1, 3:] = False
    return x_t, t, text, mask


# --- size and cost --------------------------------------------------------------------------


def test_prx_1_2b_has_1_177_billion_parameters_with_a_2304_wide_text_input():
    config = DenoiserConfig(**PRESETS["prx-1.2b"], text_dim=2304)
    assert config.head_dim == 64 and config.mlp_hidden == 6272
    assert parameter_count(config) == pytest.approx(1.177e9, rel=0.01)


def test_training_flops_of_prx_1_2b_at_512px_with_256_text_tokens_are_1_36_tflop():
    config = DenoiserConfig(**PRESETS["prx-1.2b"], text_dim=2304)
    flops = train_flops_per_image(config, image_tokens=(512 // 32) ** 2, text_tokens=256)
    assert flops == pytest.approx(1.36e12, rel=0.01)


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(16, 16), (32, 48), (8, 20), (4, 4)])
def test_output_has_the_input_image_shape(height, width):
    model = randomize(PRXDenoiser(SMALL))
    x_t, t, text, mask = inputs(height=height, width=width)
    x0_hat, captured = model(x_t, t, text, mask)
    assert x0_hat.shape == (2, 3, height, width)
    assert captured == {}
    assert torch.isfinite(x0_hat).all()


@pytest.mark.parametrize("height, width", [(18, 16), (16, 30)])
def test_a_size_that_is_not_a_multiple_of_the_patch_fails_clearly(height, width):
    model = PRXDenoiser(SMALL)
    x_t, t, text, mask = inputs(height=height, width=width)
    with pytest.raises(ValueError, match=rf"{height}x{width}.*multiple of the patch size {SMALL.patch}"):
        model(x_t, t, text, mask)


def test_patchify_is_row_major_over_the_patch_grid_and_unpatchify_inverts_it():
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    # token 4 = grid row 1, column 1; its vector is the (channel, y, x) patch flattened
    assert torch.equal(tokens[:, 4], x[:, :, 4:8, 4:8].reshape(2, -1))
    assert torch.equal(tokens[:, 2], x[:, :, 0:4, 8:12].reshape(2, -1))
    assert torch.equal(unpatchify(tokens, 4, 8, 12), x)


# --- initialisation -------------------------------------------------------------------------


def test_at_init_the_output_is_zero_and_every_block_is_the_identity():
    torch.manual_seed(0)
    model = PRXDenoiser(SMALL)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append(torch.equal(out, args[0])))
    x0_hat, _ = model(*inputs())
    assert torch.equal(x0_hat, torch.zeros_like(x0_hat))
    assert seen == [True] * SMALL.depth


def zeroed_layers(model: PRXDenoiser) -> list[torch.nn.Linear]:
    return [model.final_modulation, model.final] + [block.modulation for block in model.blocks]


def test_pytorch_init_is_pytorchs_default_linear_init_with_the_adaln_layers_zeroed():
    """PRX's init: Kaiming-uniform (a = sqrt 5) weights and biases, both within +-1/sqrt(fan_in)."""
    torch.manual_seed(0)
    model = PRXDenoiser(SMALL, init="pytorch")
    zeroed = {id(m) for m in zeroed_layers(model)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module) not in zeroed:
            bound = 1 / math.sqrt(module.in_features)
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.9 * bound
            if module.bias is not None:
                assert module.bias.abs().max() <= bound and module.bias.abs().max() > 0
    assert all(not m.weight.any() and not m.bias.any() for m in zeroed_layers(model))


def test_xavier_init_has_xavier_weights_zero_biases_and_a_narrow_time_mlp():
    torch.manual_seed(0)
    model = PRXDenoiser(SMALL, init="xavier")
    zeroed = {id(m) for m in zeroed_layers(model)}
    time_layers = {id(m) for m in model.time_in if isinstance(m, torch.nn.Linear)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module) not in zeroed | time_layers:
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.9 * bound
            if module.bias is not None:
                assert not module.bias.any()
    for layer in model.time_in:
        if isinstance(layer, torch.nn.Linear):
            assert 0.015 < layer.weight.std() < 0.025 and not layer.bias.any()
    assert all(not m.weight.any() and not m.bias.any() for m in zeroed_layers(model))


def test_an_unknown_init_scheme_is_refused():
    with pytest.raises(ValueError, match="init = 'kaiming'"):
        PRXDenoiser(SMALL, init="kaiming")


def test_gradients_reach_every_parameter_once_the_zero_initialised_layers_have_moved():
    """adaLN-Zero: at init only the final projection gets a gradient; each optimizer step opens
    one more stage (final -> modulations and embeddings -> everything inside the blocks)."""
    torch.manual_seed(0)
    model = PRXDenoiser(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x_t, t, text, mask = inputs()
    target = torch.rand_like(x_t)

    def step() -> set[str]:
        optimizer.zero_grad()
        x0_hat, _ = model(x_t, t, text, mask)
        F.mse_loss(x0_hat, target).backward()
        reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
        optimizer.step()
        return reached

    assert step() == {"final.weight", "final.bias"}
    second = step()
    assert {"patch_in.weight", "final_modulation.weight", "blocks.0.modulation.bias"} <= second
    assert "blocks.0.qkv.weight" not in second  # still behind a zero gate
    assert step() == {n for n, _ in model.named_parameters()}


# --- text -----------------------------------------------------------------------------------


def test_text_embeddings_at_masked_positions_do_not_change_the_output():
    model = randomize(PRXDenoiser(SMALL))
    x_t, t, text, mask = inputs()
    reference, _ = model(x_t, t, text, mask)
    changed = text.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), SMALL.text_dim) * 100
    out, _ = model(x_t, t, changed, mask)
    assert torch.allclose(out, reference, rtol=0, atol=1e-6)
    # ... while a change at a kept position does change it (the test can fail)
    changed[0, 0] += 1.0
    out, _ = model(x_t, t, changed, mask)
    assert not torch.allclose(out[0], reference[0], atol=1e-3)


# --- RoPE, time embedding, norms ------------------------------------------------------------


def test_rope_tables_put_rows_in_the_first_half_of_the_pairs_and_columns_in_the_second():
    rows, cols, head_dim, theta = 3, 5, 16, 10_000.0
    cos, sin = rope_tables(rows, cols, head_dim, theta)
    assert cos.shape == sin.shape == (rows * cols, head_dim // 2)
    quarter = head_dim // 4
    for token in range(rows * cols):
        r, c = divmod(token, cols)
        for pair in range(head_dim // 2):
            position, k = (r, pair) if pair < quarter else (c, pair - quarter)
            angle = position * theta ** (-k / quarter)
            assert cos[token, pair].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[token, pair].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_apply_rope_preserves_norms_and_makes_scores_depend_on_relative_position_only():
    head_dim = 16
    cos, sin = rope_tables(4, 4, head_dim, 10_000.0)
    x = torch.randn(2, 3, 16, head_dim)
    rotated = apply_rope(x, cos[None, None], sin[None, None])
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(apply_rope(x[:, :, :1], cos[None, None, :1], sin[None, None, :1]), x[:, :, :1])  # (0, 0)
    # the same q and k at (0,0)-(1,2) and at (2,1)-(3,3) give the same score; at (0,0)-(3,3) another
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(qi: int, ki: int) -> float:
        both = torch.stack([q, k])[None, None]
        c = torch.stack([cos[qi], cos[ki]])[None, None]
        s = torch.stack([sin[qi], sin[ki]])[None, None]
        rq, rk = apply_rope(both, c, s)[0, 0]
        return float(rq @ rk)

    assert score(0, 6) == pytest.approx(score(9, 15), abs=1e-4)
    assert score(0, 6) != pytest.approx(score(0, 15), abs=1e-3)


def test_time_embedding_is_cos_then_sin_of_1000_t_over_geometric_frequencies():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    emb = timestep_embedding(t, dim=256, max_period=1e4)
    assert emb.shape == (4, 256)
    for row, value in enumerate(t.tolist()):
        for i in (0, 1, 17, 64, 127):
            angle = 1000.0 * value * 10_000 ** (-i / 128)
            assert emb[row, i].item() == pytest.approx(math.cos(angle), abs=2e-4)
            assert emb[row, 128 + i].item() == pytest.approx(math.sin(angle), abs=2e-4)


def test_rmsnorm_computes_in_fp32_and_returns_the_input_dtype():
    norm = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.scale.copy_(torch.linspace(0.5, 1.5, 64))
    x = (torch.randn(32, 64) * 3).bfloat16()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    xf = x.float()
    expected = (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.scale).bfloat16()
    assert torch.equal(out, expected)
    # the same formula evaluated in bf16 differs: the test can tell where the maths ran
    scale = norm.scale.detach().bfloat16()
    in_bf16 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale
    assert not torch.equal(out, in_bf16)


def test_qk_norms_inside_a_block_compute_in_fp32_under_bf16_autocast():
    block = randomize(Block(32, 2, 64))
    seen = []
    for norm in (block.q_norm, block.k_norm, block.text_k_norm):
        norm.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out)))
    x, text, vec = torch.randn(1, 4, 32), torch.randn(1, 3, 32), torch.randn(1, 32)
    cos, sin = rope_tables(2, 2, 16, 1e4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block(x, text, vec, cos[None, None], sin[None, None], torch.ones(1, 1, 1, 7, dtype=torch.bool))
    assert len(seen) == 3
    for norm, given, out in seen:
        assert given.dtype == out.dtype == torch.bfloat16
        g = given.float()
        assert torch.equal(out, (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.scale).bfloat16())


# --- one block against the recipe's formula -------------------------------------------------


def reference_block(block: Block, x, text, vec, rows: int, cols: int, text_mask, theta: float = 1e4, eps: float = 1e-6):
    """docs/recipe.md §1 written out: x += g1·Attn((1+s1)·LN(x)+b1); x += g2·MLP((1+s2)·LN(x)+b2)."""
    w = {name: p.detach() for name, p in block.named_parameters()}
    b, n, d = x.shape
    heads = block.heads
    hd = d // heads
    mod = F.silu(vec) @ w["modulation.weight"].T + w["modulation.bias"]
    shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, i * d : (i + 1) * d][:, None] for i in range(6))

    def layer_norm(v):
        mean = v.mean(-1, keepdim=True)
        var = ((v - mean) ** 2).mean(-1, keepdim=True)
        return (v - mean) / torch.sqrt(var + eps)

    def rms(v, scale):
        return v / torch.sqrt((v**2).mean(-1, keepdim=True) + eps) * scale

    def rope(v):  # (b, heads, n, hd): pair j rotates by row (j < hd/4) or column position
        quarter = hd // 4
        pair = torch.arange(hd // 2)
        freq = theta ** (-(pair % quarter).double() / quarter)
        grid_r = torch.arange(n) // cols
        grid_c = torch.arange(n) % cols
        position = torch.where(pair[None] < quarter, grid_r[:, None], grid_c[:, None]).double()
        rotation = torch.polar(torch.ones_like(position), position * freq).to(torch.complex64)
        pairs = torch.view_as_complex(v.reshape(*v.shape[:-1], hd // 2, 2).contiguous())
        return torch.view_as_real(pairs * rotation).flatten(-2)

    def split_heads(v):
        return v.reshape(b, -1, heads, hd).transpose(1, 2)

    h = layer_norm(x) * (1 + scale1) + shift1
    wq, wk, wv = w["qkv.weight"].chunk(3, dim=0)
    q = rope(rms(split_heads(h @ wq.T), w["q_norm.scale"]))
    k = rope(rms(split_heads(h @ wk.T), w["k_norm.scale"]))
    v = split_heads(h @ wv.T)
    wtk, wtv = w["text_kv.weight"].chunk(2, dim=0)
    text_k = rms(split_heads(text @ wtk.T), w["text_k_norm.scale"])
    text_v = split_heads(text @ wtv.T)
    keys, values = torch.cat([text_k, k], dim=2), torch.cat([text_v, v], dim=2)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(hd)
    allowed = torch.cat([text_mask, torch.ones(b, n, dtype=torch.bool)], dim=1)[:, None, None, :]
    attention = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values
    x = x + gate1 * (attention.transpose(1, 2).reshape(b, n, d) @ w["attn_out.weight"].T)
    h = layer_norm(x) * (1 + scale2) + shift2
    mlp = (F.gelu(h @ w["gate.weight"].T, approximate="tanh") * (h @ w["up.weight"].T)) @ w["down.weight"].T
    return x + gate2 * mlp


def test_one_block_equals_the_recipe_formula_with_random_weights():
    hidden, heads, rows, cols = 32, 2, 3, 4
    block = randomize(Block(hidden, heads, mlp_hidden=48), seed=3)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, rows * cols, hidden, generator=generator)
    text = torch.randn(2, 5, hidden, generator=generator)
    vec = torch.randn(2, hidden, generator=generator)
    text_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    cos, sin = rope_tables(rows, cols, hidden // heads, 1e4)
    key_mask = F.pad(text_mask[:, None, None, :], (0, rows * cols), value=True)
    out = block(x, text, vec, cos[None, None], sin[None, None], key_mask)
    expected = reference_block(block, x, text, vec, rows, cols, text_mask)
    assert (out - x).abs().mean() > 0.1  # the block does something
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_step_tensors_give_the_token_grid_in_the_order_of_captured_rows():
    """``StepTensors.grid`` is the (rows, cols) grid the denoiser patchifies the step's images into,
    row-major, as a captured block's rows are laid out."""
    images = torch.rand(2, 3, 32, 24)
    step = StepTensors(images, images, torch.rand(2), images, {}, (), 8, 0)
    assert step.grid == (4, 3)
    tokens = patchify(images, 8)
    assert tokens.shape[1] == 4 * 3
    assert torch.equal(tokens[:, 1 * 3 + 2], images[:, :, 8:16, 16:24].reshape(2, -1))  # row 1, column 2
