"""Write the two data sets of the mixture example: generated scenes as a Hugging Face dataset
(``datasets``' ``save_to_disk``) and as a folder of PNG images with ``.txt`` captions.

    python examples/data-mixture/make_data.py data --count 300

Each set holds ``--count`` scenes of the embedded generator at mixed aspect ratios (so the
loader's aspect-ratio buckets have work to do); the two sets draw different scenes (seeds 1 and 2).
The folder is then converted to MDS shards with ``prx data convert`` (README.md next to this file).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from prx_core.data.scenes import render_scene, scene_for_index

SHAPES = ((96, 96), (80, 112), (112, 80))  # (height, width): square, portrait, landscape


def scene_images(count: int, seed: int):
    """``(key, PIL image, caption)`` of ``count`` training scenes drawn with ``seed``."""
    for index in range(count):
        scene = scene_for_index(index, "train", seed)
        height, width = SHAPES[index % len(SHAPES)]
        pixels = render_scene(scene, height, width, index, seed)
        yield f"{seed}-{index:05d}", Image.fromarray(pixels), scene.caption()


def write_folder(out: Path, count: int, seed: int) -> None:
    out.mkdir(parents=True)
    for key, image, caption in scene_images(count, seed):
        image.save(out / f"{key}.png")
        (out / f"{key}.txt").write_text(caption + "\n")


def write_hf(out: Path, count: int, seed: int) -> None:
    import datasets

    rows = {"image": [], "text": []}
    for _, image, caption in scene_images(count, seed):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["text"].append(caption)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="directory to create (holds hf-scenes/ and folder/)")
    parser.add_argument("--count", type=int, default=300, help="scenes per set (default: 300)")
    args = parser.parse_args()
    write_hf(args.out / "hf-scenes", args.count, seed=1)
    write_folder(args.out / "folder", args.count, seed=2)
    print(f"wrote {args.count} scenes into {args.out / 'hf-scenes'} (datasets save_to_disk) "
          f"and {args.count} into {args.out / 'folder'} (PNG + .txt)")


if __name__ == "__main__":
    main()
