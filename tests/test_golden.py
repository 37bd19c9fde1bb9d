"""Did this change training? The quickstart recipe, shortened to 8 steps, against stored losses.

torchtitan keeps golden per-step loss files for this question. Here the real path runs end to end
(scene data through the loader, the all-MiniLM text encoder, EfficientNet teachers, every technique
of the quickstart, both phases) and each logged loss term and gradient norm must equal
``tests/golden/quickstart_8_steps.json`` to 1e-4 relative. A refactor keeps them; a change of
behaviour (an interpolation, an initialisation, a schedule) moves them by far more. When a change of
numbers is intended, rewrite the file with ``PRX_GOLDEN_WRITE=1 pytest tests/test_golden.py`` and
say why in the commit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prx_core.cli import main

QUICKSTART = Path(__file__).parents[1] / "recipes" / "quickstart.toml"
GOLDEN = Path(__file__).parent / "golden" / "quickstart_8_steps.json"
SHORT = [
    'multires.phases=[{name="32px",resolution=32,batch_size=8,steps=4},'
    '{name="64px",resolution=64,batch_size=8,steps=4,disabled=["repa"]}]',
    "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=1000",
    "eval.num_prompts=2", "eval.steps=2", "eval.distribution_metrics=[]",
]
KEYS = ("loss", "grad_norm", "lr")
RTOL = 1e-4  # CPUs with other vector units sum in another order: observed differences are far below this


def numbers(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in row.items() if k in KEYS or k.startswith("loss/")} | {"step": row["step"]}
            for row in rows]


@pytest.mark.slow
def test_the_shortened_quickstart_gives_the_stored_losses(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["run", str(QUICKSTART), "--run-dir", str(run_dir), "--plain"]
    assert main(argv + [a for s in SHORT for a in ("--set", s)]) == 0
    got = numbers(run_dir)
    if os.environ.get("PRX_GOLDEN_WRITE") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert [row["step"] for row in got] == [row["step"] for row in expected]
    for mine, stored in zip(got, expected):
        assert mine.keys() == stored.keys(), (mine.keys(), stored.keys())
        assert mine == pytest.approx(stored, rel=RTOL), f"step {stored['step']}: {mine} != {stored}"
