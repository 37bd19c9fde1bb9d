"""The interference matrix: every subset of the installed techniques, trained for a few steps on
the tiny model, in-process, through the public harness :mod:`prx_core.testing` (whose docstring
lists the checks each combination gets).

The techniques are the ones :func:`prx_core.registry.discover` finds when the module is collected
(``PRX_PLUGINS`` narrows them), so a plugin installed later joins the matrix by existing; a
technique without a table in :data:`prx_core.testing.TINY_TABLES` runs with its defaults.

The fast tier (no mark) is the empty set, each technique alone, all of them, and the largest
selections that run; the rest of the 2^n subsets are marked ``slow``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from prx_core.effects import effect_problems
from prx_core.registry import discover
from prx_core.testing import check_combination, combo_id, matrix_recipe, subsets

REGISTRY = discover()
NAMES = REGISTRY.training_techniques  # trackers observe a run and cannot change it: not in the matrix
FAST, SLOW = subsets(REGISTRY)


@pytest.fixture(scope="module", name="matrix_recipe")
def matrix_recipe_fixture(tmp_path_factory) -> Path:
    return matrix_recipe(tmp_path_factory.mktemp("matrix"), registry=REGISTRY)


def test_installed_techniques_load_and_declare_known_effects():
    assert REGISTRY.broken == (), REGISTRY.describe_broken()
    assert [problem for name in NAMES for problem in effect_problems(REGISTRY.techniques[name])] == []
    assert len(FAST) + len(SLOW) == 2 ** len(NAMES)


@pytest.mark.parametrize("names", FAST, ids=combo_id)
def test_combination(names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path, registry=REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("names", SLOW, ids=combo_id)
def test_combination_slow(names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path, registry=REGISTRY)
