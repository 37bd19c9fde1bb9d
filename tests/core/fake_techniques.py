"""Fake techniques for the tests of discovery and of the technique set: plugin classes that
implement a few hooks (two of them the exclusive prx_guidance), declarations with a conflict and a
requirement, and the registry and technique set built from them."""
from __future__ import annotations

import types

import attrs

from prx_core import registry as plugins
from prx_core.hookspecs import hookimpl
from prx_core.recipe.schema import Recipe
from prx_core.techniques import TechniqueSet
from prx_core.types import Phase, RunContext, Technique

PHASE = Phase(name="p", steps=10, resolution=64, batch_size=2)
MODEL = Recipe().model.resolve(text_dim=8)


@attrs.define(kw_only=True)
class AlphaConfig:
    ratio: float = 0.5


class Alpha:
    def __init__(self, config, context):
        self.config = config

    @hookimpl
    def prx_cost(self, phase):  # names only one of the hook's three arguments
        return ("alpha", phase.name, self.config.ratio)

    @hookimpl
    def prx_check_recipe(self, recipe, active):
        return [] if self.config.ratio <= 1 else ["[alpha] ratio must be at most 1"]

    @hookimpl
    def prx_state_dict(self):
        return None  # dropped from call() results


class Beta:
    def __init__(self, config, context):
        pass

    @hookimpl
    def prx_cost(self, model_config, phase):
        return ("beta", model_config)

    @hookimpl
    def prx_guidance(self, sample_config, model_config, router):
        return "beta-guidance"


class Plain:
    def __init__(self, config, context):
        pass

    @hookimpl
    def prx_guidance(self, router):
        return "plain-guidance"


def fake_module(name: str, *techniques: Technique) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def prx_register_techniques():
        return list(techniques)

    module.prx_register_techniques = prx_register_techniques
    return module


ALPHA = Technique(name="alpha", plugin=Alpha, config=AlphaConfig, summary="a", effects=("routes_tokens",))
BETA = Technique(name="beta", plugin=Beta)  # implements prx_guidance, an exclusive hook: role "guidance"
GAMMA = Technique(name="gamma", plugin=Plain)
DELTA = Technique(name="delta", plugin=Plain, conflicts=("alpha",))
EPSILON = Technique(name="epsilon", plugin=Plain, requires=("alpha",))
MOD_AB = fake_module("fake_ab", ALPHA, BETA)
MOD_REST = fake_module("fake_rest", GAMMA, DELTA, EPSILON)


def fake_registry(*modules: object) -> plugins.Registry:
    return plugins.discover(only=[], extra_modules=modules or (MOD_AB, MOD_REST))


def fake_set(names: list[str], registry: plugins.Registry | None = None, log=print, **techniques) -> TechniqueSet:
    recipe = Recipe(plugins=names, techniques=techniques)
    return TechniqueSet(recipe, registry or fake_registry(), RunContext(recipe=recipe, log=log), MODEL)


class Misspelled:
    """A plugin class with a hook name that does not exist (a typo)."""

    def __init__(self, config, context):
        pass

    @hookimpl
    def prx_routin(self, phase):
        return None
