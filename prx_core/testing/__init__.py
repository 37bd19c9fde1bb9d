"""Testing a technique inside prx: the interference matrix as a library (:mod:`.matrix`), the tiny
recipe it trains (``tiny.toml``, :data:`TINY_RECIPE`) and teachers with random weights
(:mod:`.teachers`), for prx's own tests and for plugin authors::

    from prx_core.testing import check_combination, matrix_recipe

    recipe = matrix_recipe(folder)              # the tiny recipe, each technique's tiny settings
    check_combination(("my_technique",), recipe, folder / "run")
"""
from prx_core.testing.matrix import (
    RESUME_AT,
    STEPS,
    TINY_RECIPE,
    Run,
    batch_for,
    check_combination,
    combo_id,
    matrix_recipe,
    refusals,
    subsets,
    train,
    two_phases,
)
from prx_core.testing.teachers import (
    save_random_lpips_vgg,
    save_random_timm,
    save_random_vit,
    write_tiny_teachers,
)

__all__ = [
    "RESUME_AT",
    "STEPS",
    "TINY_RECIPE",
    "Run",
    "batch_for",
    "check_combination",
    "combo_id",
    "matrix_recipe",
    "refusals",
    "save_random_lpips_vgg",
    "save_random_timm",
    "save_random_vit",
    "subsets",
    "train",
    "two_phases",
    "write_tiny_teachers",
]
