"""The run folder: resolved recipe, metrics.jsonl, evals.jsonl, samples, evaluation, summary, checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
EVAL_TRAINING = "eval_training.json"  # `prx eval --set eval.prompts=training`, beside the run's own


class RunFolder:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"

    def create(self) -> None:
        for folder in (self.root, self.checkpoints, self.samples):
            folder.mkdir(parents=True, exist_ok=True)

    def truncate_logs(self, after_step: int) -> None:
        """On resume, drop the rows of metrics.jsonl and evals.jsonl logged after the checkpoint,
        so that neither file has duplicated steps."""
        for name in (METRICS, EVALS):
            path = self.root / name
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
                path.write_text("".join(line + "\n" for line in kept))

    def append_row(self, name: str, row: dict[str, Any]) -> None:
        """One JSON line appended to ``name`` (metrics.jsonl, evals.jsonl)."""
        with open(self.root / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_rows(self, name: str) -> list[dict[str, Any]]:
        path = self.root / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def append_metrics(self, row: dict[str, Any]) -> None:
        self.append_row(METRICS, row)

    def read_metrics(self) -> list[dict[str, Any]]:
        return self.read_rows(METRICS)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        tmp = self.root / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.root / name)


def final_means(rows: list[dict[str, Any]], share: float = 0.1) -> dict[str, float]:
    """Mean of each loss over the last ``share`` of logged rows (at least one row)."""
    if not rows:
        return {}
    tail = rows[-max(1, math.ceil(len(rows) * share)) :]
    keys = [k for k in tail[-1] if k == "loss" or k.startswith("loss/")]
    return {k: sum(r[k] for r in tail if k in r) / sum(1 for r in tail if k in r) for k in keys}
