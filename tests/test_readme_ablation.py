"""The README's ablation tables quote the committed study: every mean, spread, seed count and step
count of the variant table is recomputed here from the per-run rows (docs/ablation/results.csv),
each row of the interaction table is a row of the report the command wrote
(docs/ablation/report.md), and the sampling-guidance table and its held-out scores are the
``prx eval`` files of that sweep (docs/ablation/sweeps/guidance)."""
from __future__ import annotations

import collections
import csv
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "docs" / "ablation" / "results.csv"
REPORT = ROOT / "docs" / "ablation" / "report.md"
GUIDANCE = ROOT / "docs" / "ablation" / "sweeps" / "guidance"
GUIDANCE_HEADER = "| guidance | seed 0: prompt following | shape | count | seed 1: prompt following | shape | count |"
GUIDANCE_ROWS = {"none (cfg 1)": "cfg-1", "TREAD self-guidance 2": "tread_guidance-2", "cfg 1.5": "cfg-1.5",
                 "cfg 2": "cfg-2", "cfg 3": "cfg-3", "cfg 4": "cfg-4", "cfg 6": "cfg-6"}
INTERACTION_HEADER = "| technique | metric | alone | in full | interaction | verdict |"
HEADER = "| variant | seeds | steps | prompt following | position | count | shape | fd_pixels |"
COLUMNS = ("prompt_following", "prompt_following/position", "prompt_following/count", "prompt_following/shape",
           "fd_pixels")
VARIANTS = {"**baseline**": "baseline", "+ TREAD (+ self-guidance)": "+tread+tread_guidance", "+ REPA": "+repa",
            "+ LPIPS + DINO perceptual": "+lpips+dino_perceptual", "+ Muon": "+muon", "**all five**": "full",
            "all five − TREAD": "full -tread+tread_guidance", "all five − REPA": "full -repa",
            "all five − LPIPS − DINO perceptual": "full -lpips+dino_perceptual", "all five − Muon": "full -muon"}


def table_lines(header: str) -> list[str]:
    """The body of the README table under ``header``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    body = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        body.append(line)
    return body


def readme_rows() -> dict[str, list[str]]:
    rows = {}
    for line in table_lines(HEADER):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def runs_by_variant() -> dict[str, list[dict[str, str]]]:
    runs = collections.defaultdict(list)
    for row in csv.DictReader(RESULTS.open()):
        runs[row["variant"]].append(row)
    return runs


def test_the_table_has_every_variant_of_the_study():
    assert set(readme_rows()) == set(VARIANTS)
    assert set(runs_by_variant()) == set(VARIANTS.values())


@pytest.mark.parametrize("shown", sorted(VARIANTS))
def test_each_row_is_the_mean_and_spread_of_the_committed_runs(shown):
    cells = readme_rows()[shown]
    runs = runs_by_variant()[VARIANTS[shown]]
    assert int(cells[0]) == len(runs) >= 2
    assert {int(float(run["steps"])) for run in runs} == {int(cells[1])}  # the bench budget: one count per variant
    for column, cell in zip(COLUMNS, cells[2:], strict=True):
        values = [float(run[column]) for run in runs]
        mean, spread = re.fullmatch(r"\**([0-9.]+) ± ([0-9.]+)\**", cell).groups()
        assert mean == f"{statistics.mean(values):.2f}", (shown, column)
        assert spread == f"{statistics.stdev(values):.2f}", (shown, column)


def test_the_interaction_table_is_the_reports_prompt_following_rows():
    report = REPORT.read_text().splitlines()
    shown = table_lines(INTERACTION_HEADER)
    assert INTERACTION_HEADER in report
    assert shown == [line for line in report if line.split("|")[2:3] == [" prompt_following "]]


def guidance_scores(seed: int, prompts: str, setting: str) -> dict[str, float]:
    return json.loads((GUIDANCE / f"seed{seed}" / f"{prompts}-{setting}.json").read_text())["prompt_following"]


def test_the_guidance_table_is_the_sweeps_eval_files():
    rows = {}
    for line in table_lines(GUIDANCE_HEADER):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    assert set(rows) == set(GUIDANCE_ROWS)
    for shown, setting in GUIDANCE_ROWS.items():
        expected = []
        for seed in (0, 1):
            scores = guidance_scores(seed, "training", setting)
            expected += [f"{scores[key]:.2f}" for key in ("overall", "shape", "count")]
        assert rows[shown] == expected, shown


def test_the_held_out_guidance_scores_quoted_are_the_sweeps():
    text = " ".join((ROOT / "README.md").read_text().split())
    for setting, label in (("tread_guidance-2", "self-guidance"), ("cfg-3", "cfg 3")):
        s0, s1 = (guidance_scores(seed, "held-out", setting) for seed in (0, 1))
        quoted = (f"{label} {s0['overall']:.2f} and {s1['overall']:.2f} "
                  f"(shape {s0['shape']:.2f} and {s1['shape']:.2f})")
        assert quoted in text, quoted
