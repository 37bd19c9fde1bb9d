"""examples/data-mixture, as its README runs it: the data script, `prx data convert` to MDS, then
the mixture recipe reads both sources in equal shares."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prx_core.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "data-mixture"


@pytest.mark.slow
def test_the_mixture_reads_a_saved_hf_dataset_and_converted_mds_shards(tmp_path, monkeypatch, capsys):
    pytest.importorskip("datasets")
    pytest.importorskip("zstandard")
    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), "data", "--count", "12"], check=True)
    assert sorted(p.name for p in Path("data/folder").iterdir())[:2] == ["2-00000.png", "2-00000.txt"]
    assert main(["data", "convert", "data/folder", "--to", "mds", "data/mds", "--compression", "zstd"]) == 0
    assert "wrote 12 samples" in capsys.readouterr().out
    assert main(["data", "inspect", "--recipe", str(EXAMPLE / "mixture.toml")]) == 0
    text = capsys.readouterr().out
    assert "24 samples read at 64px (patch 8): 24 usable, 0 bad" in text
    rows = {line.split()[0]: line.split()[1:4] for line in text.splitlines() if line.startswith("  ")}
    assert rows["hf-scenes"] == ["hf", "12", "0.500"] and rows["mds"] == ["mds", "12", "0.500"]
    assert main(["run", str(EXAMPLE / "mixture.toml"), "--dry-run"]) == 0
