"""minsnr in prx's interference matrix: alone and next to built-in techniques, each selection gets
every check of the matrix (refused when declarations conflict; otherwise finite losses, its
declared effects observed and no others, the documented hook order, the same run with the plugins
listed in reverse, the same run when resumed from a checkpoint). Run with the package installed
next to prx: ``pytest tests``."""
from pathlib import Path

import pytest

from prx_core.testing import check_combination, combo_id, matrix_recipe

SELECTIONS = [("minsnr",), ("minsnr", "multires", "repa", "tread")]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The matrix's tiny recipe and tiny random teachers, written once for the module."""
    return matrix_recipe(tmp_path_factory.mktemp("matrix"))


@pytest.mark.parametrize("names", SELECTIONS, ids=combo_id)
def test_minsnr_passes_the_matrix_checks(names: tuple[str, ...], recipe: Path, tmp_path: Path) -> None:
    check_combination(names, recipe, tmp_path)
