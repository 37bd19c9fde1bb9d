"""The import graph points one way. prx_core is built in layers, each importing only from itself
and the layers below it:

    cli -> tools -> training -> planning -> plugins -> core -> types

(:data:`LAYERS`, which README.md "Repository layout" and docs/plugins.md describe). The technique
packages (plugins/, and the example third-party package) are written against the public API:
they import only the types and core layers of prx_core, never the plugin manager, planning,
training or the tools. This test reads every import of every module (function-level imports
included) from the source, so an arrow against the layers fails here before it can rot the design.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("types", ("prx_core.errors", "prx_core.types", "prx_core.hookspecs")),
    ("core", ("prx_core.model", "prx_core.objective", "prx_core.sampler", "prx_core.ema", "prx_core.data",
              "prx_core.text", "prx_core.weights", "prx_core.teachers", "prx_core.recipe", "prx_core.checkpoint", "prx_core.distributed", "prx_core.console",
              "prx_core.runfolder", "prx_core.generate", "prx_core.evaluation", "prx_core.caption_cleaning",
              "prx_core.diffusers_format", "prx_core.tracking")),
    ("plugins", ("prx_core.registry", "prx_core.recipe.loader", "prx_core.recipe.annotate", "prx_core.techniques")),
    ("planning", ("prx_core.plan",)),
    ("training", ("prx_core.train", "prx_core.inference", "prx_core.export", "prx_core.diffusers_format.export",
                  "prx_core.diffusers_format.usage")),
    ("tools", ("prx_core.measure", "prx_core.effects", "prx_core.testing", "prx_core.ablation")),
    ("cli", ("prx_core.cli", "prx_core.__main__")),
)
"""Layer name -> the modules and packages in it, lowest first."""

PUBLIC = ("types", "core")
"""The layers a technique package may import: the API a third party gets."""


def modules(package_root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``package_root``."""
    found = {}
    for path in sorted((package_root / package).rglob("*.py")):
        name = ".".join(path.relative_to(package_root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


PRX_CORE = modules(ROOT, "prx_core")


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """The prx_core modules ``path`` imports (``from prx_core import x`` is the module prx_core.x),
    everywhere in the file or, with ``module_level_only``, only those run when it is imported."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in (tree.body if module_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "prx_core")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "prx_core":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in PRX_CORE else node.module)
    return found


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer holding ``module`` (the longest matching entry)."""
    matches = [(len(entry), index) for index, (_, entries) in enumerate(LAYERS) for entry in entries
               if module == entry or module.startswith(entry + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py (and the docs)")
    return max(matches)[1]


def test_every_module_of_prx_core_has_a_layer():
    unplaced = []
    for module in PRX_CORE:
        if module == "prx_core":
            continue
        try:
            layer_of(module)
        except AssertionError:
            unplaced.append(module)
    assert unplaced == [], f"modules in no layer: {unplaced}"


def test_no_import_points_against_the_layers():
    against = []
    for module, path in PRX_CORE.items():
        if module == "prx_core":
            continue
        for imported in sorted(imports(path)):
            if imported != "prx_core" and layer_of(imported) > layer_of(module):
                against.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                               f"({LAYERS[layer_of(imported)][0]})")
    assert against == [], "imports against the layers:\n" + "\n".join(against)


def test_no_two_modules_import_each_other_when_loaded():
    """No cycle among the imports a module runs when it is loaded. A function-level import may
    point back (the data sources load their optional readers, which use the sources' sample
    types, only when a recipe asks for them); the layer order above holds for those too."""
    graph = {module: {m for m in imports(path, module_level_only=True) if m in PRX_CORE and m != module}
             for module, path in PRX_CORE.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join(trail[trail.index(module):] + [module]))
            return
        visiting.add(module)
        for imported in sorted(graph[module]):
            visit(imported, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


TECHNIQUE_PACKAGES = sorted([*(ROOT / "plugins").glob("prx_*"), ROOT / "examples" / "prx-minsnr" / "src" / "prx_minsnr"])


@pytest.mark.parametrize("package", TECHNIQUE_PACKAGES, ids=lambda path: path.name)
def test_a_technique_imports_only_the_public_layers_and_no_other_technique(package):
    own = package.name
    wrong = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top == "prx_core":
                    for imported in imports(path) if name == "prx_core" else {name if name in PRX_CORE else name}:
                        if LAYERS[layer_of(imported)][0] not in PUBLIC:
                            wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
                elif top.startswith("prx_") and top != own:
                    wrong.append(f"{path.relative_to(ROOT)} imports another technique's package, {name}")
    assert wrong == [], "\n".join(wrong)


def test_the_docs_describe_these_layers():
    """README.md lists every module of each layer in the layer's bullet; docs/plugins.md states the
    order and describes each layer."""
    order = " -> ".join(name for name, _ in reversed(LAYERS))
    for doc in ("README.md", "docs/plugins.md"):
        text = (ROOT / doc).read_text()
        assert order in " ".join(text.split()), f"{doc} must state the layer order `{order}`"
        bullets = dict(re.findall(r"^- \*\*(\w+)\*\*:(.*(?:\n  .*)*)", text, flags=re.M))
        assert set(bullets) >= {name for name, _ in LAYERS}, f"{doc} must describe every layer in a bullet"
        if doc == "README.md":
            for name, entries in LAYERS:
                missing = [entry for entry in entries
                           if f"`{entry.removeprefix('prx_core.').replace('.', '/')}" not in bullets[name]]
                assert missing == [], f"README.md's **{name}** bullet does not list {missing}"
