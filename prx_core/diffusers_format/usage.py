"""What ``prx export --format diffusers`` prints: what it wrote and how to sample it in diffusers."""
from __future__ import annotations

from prx_core.diffusers_format.export import NUM_TRAIN_TIMESTEPS, RECIPE_FILE, DiffusersExport


def prx_grid_timesteps(steps: int) -> str:
    """Python source of the ``timesteps`` that put diffusers' scheduler on prx's time grid
    (``linspace(1, 0, steps + 1)`` without its final 0), before the scheduler's shift."""
    return f"[{NUM_TRAIN_TIMESTEPS} * (1 - i / {steps}) for i in range({steps})]"


def describe(export: DiffusersExport) -> str:
    size = export.resolution
    lines = [f"wrote the EMA weights of step {export.step} to {export.folder}:"]
    if export.pipeline:
        binning = "" if size in (256, 512, 1024) else ", use_resolution_binning=False"
        lines += [
            "  transformer/     PRXTransformer2DModel (fp32 EMA weights)",
            f"  scheduler/       FlowMatchEulerDiscreteScheduler with the run's time shift {export.shift:g}",
            "  text_encoder/    the run's text encoder, tokenizer/ its tokenizer",
            "  model_index.json PRXPixelPipeline (x-prediction, pixel space)",
            f"  {RECIPE_FILE:<16} the run's recipe",
            "Sample it in diffusers:",
            "  import torch",
            "  from diffusers import DiffusionPipeline",
            f'  pipe = DiffusionPipeline.from_pretrained("{export.folder}")',
            f'  image = pipe("a prompt", height={size}, width={size}, num_inference_steps={export.steps}, '
            f"guidance_scale=1.0{binning},",
            "              generator=torch.Generator().manual_seed(0)).images[0]",
            "guidance_scale > 1 is classifier-free guidance against the empty prompt; prx's own guidance "
            "techniques other than cfg do not exist in diffusers.",
        ]
        if export.shift == 1:
            lines.append(f"To sample on prx's time grid (as `prx sample` does), pass timesteps="
                         f"{prx_grid_timesteps(export.steps)} instead of num_inference_steps.")
        else:
            lines.append("diffusers' default time grid differs from prx's (linspace(1, 0, steps + 1), shifted); "
                         "README.md, \"Use your model in diffusers\", shows the loop that reproduces `prx sample`.")
        return "\n".join(lines)
    lines += [
        "  config.json, diffusion_pytorch_model.safetensors  PRXTransformer2DModel (fp32 EMA weights)",
        f"  {RECIPE_FILE:<48} the run's recipe",
        f"No pipeline was written: {export.reason}.",
        "Load the transformer with PRXTransformer2DModel.from_pretrained(FOLDER) and sample with diffusers'",
        f"FlowMatchEulerDiscreteScheduler(shift={export.shift:g}): at each t, x0 = transformer(x, t / "
        f"{NUM_TRAIN_TIMESTEPS}, text, attention_mask=mask).sample, velocity (x - x0) / (t / {NUM_TRAIN_TIMESTEPS}), "
        "x = scheduler.step(velocity, t, x).prev_sample,",
        "with text = your encoder's last hidden state and mask its attention mask, as the run's recipe "
        f"({RECIPE_FILE}, [text]) describes; README.md, \"Use your model in diffusers\", shows the loop.",
    ]
    return "\n".join(lines)
