"""The interference matrix: every subset of the installed techniques, trained for a few steps on
the tiny model, in-process, through the public harness :mod:`prx_core.testing` (whose docstring
lists the checks each combination gets).

The techniques are the ones :func:`prx_core.registry.discover` finds when the module is collected
(``PRX_PLUGINS`` narrows them), so a plugin installed later joins the matrix by existing, with the
tiny settings it declares (``Technique.tiny_settings``; its defaults without them).

The fast tier (no mark) is the empty set, each technique alone, all of them, and the largest
selections that run; the rest of the 2^n subsets are marked ``slow``.
"""
from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import attrs
import pytest
import tomllib

from prx_core import testing
from prx_core.hookspecs import hookimpl
from prx_core.registry import discover
from prx_core.testing import check_combination, combo_id, matrix_recipe, subsets
from prx_core.types import Technique

REGISTRY = discover()
TINY_SETTINGS_PLUGIN = types.ModuleType("tiny_settings_plugin")


@attrs.define
class NestedConfig:
    teacher: str = ""
    pairs: list[dict[str, str]] = attrs.Factory(list)


class Nested:
    def __init__(self, config, context):
        pass


TINY_SETTINGS_PLUGIN.prx_register_techniques = hookimpl(lambda: [Technique(
    name="nested", plugin=Nested, config=NestedConfig, tiny_settings={"teacher": "{vit}", "pairs": [{"cnn": "{cnn}"}]})])
NAMES = REGISTRY.training_techniques  # trackers observe a run and cannot change it: not in the matrix
FAST, SLOW = subsets(REGISTRY)


@pytest.fixture(scope="module", name="matrix_recipe")
def matrix_recipe_fixture(tmp_path_factory) -> Path:
    return matrix_recipe(tmp_path_factory.mktemp("matrix"), registry=REGISTRY)


def test_installed_techniques_load_and_declare_known_effects():
    assert REGISTRY.broken == (), REGISTRY.describe_broken()
    assert len(FAST) + len(SLOW) == 2 ** len(NAMES)


def test_a_plugin_that_failed_to_load_is_reported_with_its_error_not_a_key_error(matrix_recipe, tmp_path):
    broken = types.ModuleType("prx_half_installed")

    def register():
        raise ImportError("needs libfoo, which is not installed")

    broken.prx_register_techniques = hookimpl(register)
    registry = discover(only=["cfg"], extra_modules=[broken])
    for check in (lambda: testing.refusals(("cfg", "half"), registry),
                  lambda: check_combination(("half",), matrix_recipe, tmp_path, registry=registry)):
        with pytest.raises(AssertionError) as info:
            check()
        assert "plugins names 'half', which is not an installed technique" in str(info.value)
        assert ("Plugin 'prx_half_installed' (prx_half_installed) failed to load: prx_register_techniques raised "
                "ImportError: needs libfoo, which is not installed.") in str(info.value)


class Inert:
    def __init__(self, config, context):
        pass


def test_two_techniques_declaring_one_loss_term_are_an_expected_refusal(matrix_recipe, tmp_path):
    module = types.ModuleType("prx_twins")
    module.prx_register_techniques = hookimpl(lambda: [Technique(name=name, plugin=Inert, effects=("loss_term:twin",))
                                                       for name in ("left", "right")])
    registry = discover(extra_modules=[module])  # the installed techniques too: the matrix recipe has their tables
    assert testing.refusals(("left", "right"), registry) == ["named 'twin' (each declares loss_term:twin)"]
    check_combination(("left", "right"), matrix_recipe, tmp_path, registry=registry)  # refused with exactly that


def test_the_harness_names_no_technique_and_uses_each_ones_tiny_settings(matrix_recipe):
    """The matrix knows techniques only through their declarations: no built-in technique is
    named in prx_core/testing, and each technique's table in the matrix recipe is its
    tiny_settings, with the teacher placeholders replaced (also inside arrays)."""
    texts = [node.value for module in ("__init__.py", "matrix.py", "teachers.py")
             for node in ast.walk(ast.parse((Path(testing.__file__).parent / module).read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    # a whole word; "lpips:vgg" and "lpips.LPIPS" name the teacher kind and the package, not the technique
    named = sorted(name for name in NAMES
                   if any(re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.:-])", text) for text in texts))
    assert named == [], f"prx_core/testing names techniques {named}; use their declarations"
    tables = tomllib.loads(matrix_recipe.read_text())
    for name in NAMES:
        settings = REGISTRY.techniques[name].tiny_settings
        assert (name in tables) == bool(settings)
    registry = discover(only=[], extra_modules=[TINY_SETTINGS_PLUGIN])
    folder = matrix_recipe.parent / "third_party"
    table = tomllib.loads(testing.matrix_recipe(folder, registry=registry).read_text())["nested"]
    assert table == {"teacher": f"hf:{folder / 'vit'}", "pairs": [{"cnn": f"timm:test_efficientnet@{folder / 'cnn.pth'}"}]}


@pytest.mark.parametrize("names", FAST, ids=combo_id)
def test_combination(names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path, registry=REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("names", SLOW, ids=combo_id)
def test_combination_slow(names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path, registry=REGISTRY)
