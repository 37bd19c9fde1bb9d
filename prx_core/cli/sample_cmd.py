"""``prx sample CHECKPOINT --prompt ...``: images from a trained run."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from prx_core.cli.common import add_set_argument


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="generate images from a checkpoint",
        description="Generate one image per prompt with the EMA weights of a checkpoint, using the sampler and "
                    "guidance of the run's recipe. Writes PNGs and a captioned grid.",
        epilog='Example: prx sample runs/quickstart --prompt "a large red circle at the top left on a blue background"',
    )
    p.add_argument("checkpoint", help="run folder (runs/NAME), its checkpoints/ folder or one step folder")
    p.add_argument("--prompt", action="append", required=True, help="a caption (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/samples/cli)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: [sample] steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default=None, help="HEIGHTxWIDTH in pixels, multiples of the patch (default: the "
                   "last phase's resolution, square)")
    add_set_argument(p, "override the run's recipe, e.g. --set sample.sampler=heun")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prx_core.errors import UserError
    from prx_core.generate import generate, save_grid
    from prx_core.inference import load_for_sampling, run_folder_of

    inf = load_for_sampling(args.checkpoint, tuple(args.overrides))
    if args.size:
        match = re.fullmatch(r"(\d+)x(\d+)", args.size)
        if not match:
            raise UserError(f"--size {args.size!r}: write HEIGHTxWIDTH, e.g. --size 64x96.")
        size = (int(match[1]), int(match[2]))
    else:
        size = (inf.resolution, inf.resolution)
    patch = inf.model.config.patch
    if size[0] % patch or size[1] % patch:
        raise UserError(f"--size {args.size}: both sides must be multiples of the model's patch ({patch} px).")
    images = generate(inf.model, inf.text_encoder, args.prompt, size, inf.recipe.sample, steps=args.steps,
                      guidance=inf.guidance, seed=args.seed, autocast=inf.autocast)
    out = args.out or run_folder_of(args.checkpoint) / "samples" / "cli"
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(out / f"{i:03d}.png")
    save_grid(images, args.prompt, out / "grid.png", columns=min(4, len(images)))
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0
