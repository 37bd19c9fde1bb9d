"""Docs that cannot rot: every hook is documented (docstring in prx_core/hookspecs.py, entry with
the exact signature in docs/plugins.md), the documented call order is the same in both places,
the code in the guide is the example package's code, the commands' output in the guide is what
they print, every fact the guide states about the core's objects (the declaration's fields,
StepTensors, the denoiser's parameter names and shapes, the FLOP helpers, the exclusive hooks,
the checks it quotes) is read back from the code, every technique package has the documented
shape with a method card true to its config and declaration, and every hook is really called by
the core during a plan / train / sample / checkpoint / resume cycle."""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sys
import threading
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w
import torch
from torch import nn

from prx_core import cli, hookspecs
from prx_core.effects import documented_stages, hook_order_problems
from prx_core.model.config import PRESETS, DenoiserConfig
from prx_core.model.denoiser import PRXDenoiser
from prx_core.recipe.schema import Recipe, SampleConfig
from prx_core.registry import TRACKER_HOOK, discover
from prx_core.techniques import HookTrace
from prx_core.testing import TINY_RECIPE, matrix_recipe, train
from prx_core.types import EFFECTS, CostTerm, Phase, RunStart, StepTensors, Technique

ROOT = Path(__file__).parents[1]
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
EXAMPLE = ROOT / "examples" / "prx-minsnr"
HOOKS = hookspecs.hook_names()


def section(title: str) -> str:
    """The guide's text under the heading ``title`` (any level), up to the next heading of the same
    or a higher level; fenced code is not read for headings."""
    lines = GUIDE.splitlines(keepends=True)
    fenced, start, level = False, None, 0
    for index, line in enumerate(lines):
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"^(#+) (.*)$", line.rstrip("\n"))
        if heading and start is None and heading[2] == title:
            start, level = index + 1, len(heading[1])
        elif heading and start is not None and len(heading[1]) <= level:
            return "".join(lines[start:index])
    assert start is not None, f"docs/plugins.md has no section '{title}'"
    return "".join(lines[start:])


def documented_signatures() -> dict[str, tuple[list[str], str]]:
    """hook -> (argument names, return annotation) from the guide's ``### `hook(args) -> ret``` headings."""
    found = {}
    for name, arguments, returns in re.findall(r"^### `(\w+)\(([^)]*)\) -> (.+)`$", GUIDE, flags=re.M):
        assert name not in found, f"docs/plugins.md documents {name} twice"
        found[name] = ([a.strip() for a in arguments.split(",") if a.strip()], returns)
    return found


def test_every_hook_has_a_docstring_and_an_entry_with_its_signature():
    documented = documented_signatures()
    for hook in HOOKS:
        spec = inspect.signature(getattr(hookspecs, hook))
        assert (inspect.getdoc(getattr(hookspecs, hook)) or "").strip(), f"{hook} has no docstring in hookspecs.py"
        assert hook in documented, f"docs/plugins.md has no '### `{hook}(...) -> ...`' entry"
        arguments, returns = documented[hook]
        assert arguments == list(spec.parameters), f"docs/plugins.md: {hook} takes {list(spec.parameters)}"
        assert returns == spec.return_annotation, f"docs/plugins.md: {hook} returns {spec.return_annotation}"
    stale = sorted(set(documented) - set(HOOKS))
    assert stale == [], f"docs/plugins.md documents hooks that do not exist: {stale}"


def test_the_call_order_is_the_same_in_hookspecs_and_the_guide():
    stages = documented_stages()
    assert list(stages) == HOOKS, "the phase list in hookspecs.py's docstring must name every hook, in file order"
    assert list(stages.values()) == sorted(stages.values())
    listed = re.search(r"in this order.*?\n\n((?:\d\..*\n(?: .*\n)*)+)", GUIDE)
    assert listed, "docs/plugins.md lost its numbered list of phases"
    in_guide = {hook: int(number) for number, text in re.findall(r"^(\d)\.(.*(?:\n .*)*)", listed[1], flags=re.M)
                for hook in re.findall(r"`(prx_\w+)`", text)}
    assert in_guide == stages


def test_the_effect_vocabulary_and_roles_are_documented():
    rows = re.findall(r"^\| `([a-z_]+)(?::<\w+>)?` \|", section("Effects"), flags=re.M)
    assert rows == list(EFFECTS)
    registry = discover()
    roles = {role for name in registry.techniques for role in registry.roles(name)}
    assert all(f'`"{role}"`' in GUIDE for role in roles), f"document every role in use: {sorted(roles)}"


def test_each_exclusive_hook_says_so_with_its_role_and_no_other_does():
    documented = documented_signatures()
    for hook in HOOKS:
        heading = f"`{hook}({', '.join(documented[hook][0])}) -> {documented[hook][1]}`"
        text = section(heading)
        says = re.search(r'exclusive \(role "(\w+)"\)', text)
        if hook in hookspecs.EXCLUSIVE:
            assert says and says[1] == hookspecs.EXCLUSIVE[hook], f"docs/plugins.md: say that {hook} is exclusive"
        else:
            assert not says, f"docs/plugins.md calls {hook} exclusive; it is not"


def test_every_field_of_the_declaration_is_explained():
    bullets = re.findall(r"^- ((?:`\w+`(?:, )?)+):", section("The technique declaration"), flags=re.M)
    listed = {name for bullet in bullets for name in re.findall(r"`(\w+)`", bullet)}
    assert listed == {field.name for field in attrs.fields(Technique)}


def test_code_in_the_guide_is_the_example_packages_code():
    sources = "\n".join(path.read_text() for path in sorted(EXAMPLE.rglob("*")) if path.suffix in (".py", ".toml"))
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", GUIDE, flags=re.S)
    assert len(blocks) >= 4
    for block in blocks:
        assert block in sources, f"this block of docs/plugins.md is not in examples/prx-minsnr:\n{block}"


def test_trace_lines_in_the_guide_are_what_prx_trace_logs():
    [block] = re.findall(r"```text\n(trace: .*?)```", GUIDE, flags=re.S)
    lines: list[str] = []
    trace = HookTrace(log=lines.append)
    for line in block.splitlines():
        step, kind, name, technique = re.fullmatch(r"trace: (?:step (\d+) )?(\w+) (\S+) \[(\w+)\]", line).groups()
        trace.record(kind, name, technique, None if step is None else int(step))
    assert lines == block.splitlines()


# --- what the guide says about the core's objects ------------------------------------------------


@pytest.mark.parametrize("block", re.findall(r"```console\n(.*?)```", GUIDE, flags=re.S))
def test_the_output_of_each_command_in_the_guide_is_what_it_prints(block, capsys, monkeypatch):
    """Each console block is ``$ [VAR=value ...] prx ARGS`` and lines the command prints, in order
    and contiguous (a block may show one table of several)."""
    command, *shown = block.rstrip("\n").split("\n")
    words = command.removeprefix("$ ").split()
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    assert words[0] == "prx"
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(ROOT)
    cli.main(words[1:])
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    shown = [line.rstrip() for line in shown]
    starts = [i for i in range(len(printed)) if printed[i:i + len(shown)] == shown]
    assert starts, f"`{command}` no longer prints this block of docs/plugins.md; it prints:\n" + "\n".join(printed)


def shape_names(config: DenoiserConfig) -> dict[str, int]:
    return {"hidden": config.hidden, "bottleneck": config.bottleneck, "patch_dim": config.patch_dim,
            "text_dim": config.text_dim, "time_dim": config.time_dim, "head_dim": config.head_dim,
            "mlp_hidden": config.mlp_hidden}


@pytest.mark.parametrize("config", [DenoiserConfig(**PRESETS["prx-test"], text_dim=32),
                                    DenoiserConfig(hidden=96, depth=3, heads=2, mlp_ratio=3.0, patch=4, bottleneck=20,
                                                   text_dim=24, time_dim=40)], ids=["prx-test", "uneven"])
def test_the_parameter_table_is_the_denoisers_names_and_shapes(config):
    rows = re.findall(r"^\| `([\w.{}]+)` \| `\(([^)]*)\)` \|$", section("The denoiser's parameters"), flags=re.M)
    documented = {name: tuple(eval(dim, {}, shape_names(config)) for dim in shape.split(",") if dim.strip())
                  for name, shape in rows}
    actual = {re.sub(r"^blocks\.\d+\.", "blocks.{i}.", name): tuple(p.shape)
              for name, p in PRXDenoiser(config).named_parameters()}
    assert documented == actual


def test_the_flop_helpers_in_the_guide_exist_with_these_arguments():
    helpers = re.findall(r"^- `(prx_core\.[\w.]+)\.(\w+)\(([^)]*)\)`", section("Counting FLOPs for prx_cost"),
                         flags=re.M)
    assert len(helpers) >= 6
    for module, name, arguments in helpers:
        function = getattr(importlib.import_module(module), name)
        assert [a.strip() for a in arguments.split(",")] == list(inspect.signature(function).parameters), name


def test_the_step_tensors_table_lists_every_field_and_the_grid():
    rows = re.findall(r"^\| `(\w+)` \|", section("StepTensors"), flags=re.M)
    assert rows == [field.name for field in attrs.fields(StepTensors)] + ["grid"]
    assert isinstance(StepTensors.grid, property)


def test_the_check_the_guide_quotes_is_what_repa_says():
    """The guide's example of a value-level rule is REPA's own message; REPA refuses a block the
    model lacks, never one inside a route (it reads that block with the route's index)."""
    from prx_repa.config import RepaConfig
    from prx_repa.plugin import Repa

    four_blocks = DenoiserConfig(**PRESETS["prx-test"], text_dim=32)
    quoted = set(re.findall(r"`(block = 9 [^`]*)`", GUIDE))
    assert quoted, "docs/plugins.md lost its example of a prx_check_recipe message"
    (message,) = Repa(RepaConfig(block=9), None).prx_check_recipe(model_config=four_blocks)
    assert all(message.startswith(text) for text in quoted)
    assert Repa(RepaConfig(block=2), None).prx_check_recipe(model_config=four_blocks) == []  # inside TREAD's route
    assert "outside the route" not in GUIDE and "outside a route" not in section("Exclusive hooks, conflicts, requirements")


TECHNIQUE_PACKAGES = sorted([*(ROOT / "plugins").glob("prx_*"), EXAMPLE / "src" / "prx_minsnr"])


def toml_default(value: Any) -> str | None:
    """How a card shows a scalar default (None: not a scalar, the card describes it in words)."""
    if value is None or isinstance(value, (list, tuple, dict)) or attrs.has(type(value)):
        return None
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


@pytest.mark.parametrize("package", TECHNIQUE_PACKAGES, ids=lambda path: path.name)
def test_every_technique_package_has_the_documented_shape_and_a_true_card(package, monkeypatch):
    """config.py, plugin.py, the plain functions exported from __init__.py (which works without the
    plugin), and CARD.md naming the technique, every setting with its scalar default, every
    declared effect and the technique's test file."""
    assert {"config.py", "plugin.py", "__init__.py", "CARD.md"} <= {path.name for path in package.iterdir()}
    if package.parent.name == "src":  # the example package is not installed here: import it from its sources
        monkeypatch.syspath_prepend(str(package.parent))
        for name in [name for name in sys.modules if name.split(".")[0] == package.name]:
            monkeypatch.delitem(sys.modules, name)
    init = ast.parse((package / "__init__.py").read_text())
    assert not any(isinstance(node, ast.ImportFrom) and (node.module or "").endswith(".plugin")
                   for node in ast.walk(init)), f"{package.name}/__init__.py imports the plugin"
    module = importlib.import_module(package.name)
    exported = [getattr(module, name) for name in module.__all__]
    assert any(inspect.isfunction(item) for item in exported), f"{package.name} exports no plain function"
    [technique] = importlib.import_module(f"{package.name}.plugin").prx_register_techniques()
    assert technique.config.__module__ == f"{package.name}.config"
    card = (package / "CARD.md").read_text()
    assert card.startswith(f"# {technique.name}: ")
    tracker = hasattr(technique.plugin, TRACKER_HOOK)  # a tracker's card names its library, not a paper
    for heading in ("**What it does.**", "**Library.**" if tracker else "**Paper.**", "**Observable effect.**",
                    "**Code.**"):
        assert heading in card, f"{package.name}/CARD.md lacks {heading}"
    settings = dict(re.findall(r"^\| `(\w+)` \| (`[^|]*`|unset) \|", card, flags=re.M))
    defaults = {field.name: (field.default.factory() if isinstance(field.default, attrs.Factory) else field.default)
                for field in attrs.fields(technique.config)}
    assert set(settings) == set(defaults), f"{package.name}/CARD.md: the settings are {sorted(defaults)}"
    for name, default in defaults.items():
        shown = toml_default(default)
        if shown is not None:
            assert settings[name] == f"`{shown}`", f"{package.name}/CARD.md: {name} defaults to {shown}"
        elif default is None:
            assert settings[name] == "unset"
    assert all(f"`{effect}`" in card for effect in technique.effects), f"{package.name}/CARD.md: name every effect"
    test_file = re.search(r"Tests:\s+`(tests/[\w/]+\.py)`", card)[1]
    test_root = ROOT if package.parent.name == "plugins" else EXAMPLE
    assert (test_root / test_file).is_file(), f"{package.name}/CARD.md names {test_file}, which does not exist"
    if package.parent.name == "plugins":  # the trackers share one test file: one killed and resumed run
        assert test_file == ("tests/plugins/test_trackers.py" if tracker else f"tests/plugins/test_{technique.name}.py")


# --- every hook is called by the core ---------------------------------------------------------


@pytest.fixture(scope="module", name="matrix_recipe")
def matrix_recipe_fixture(tmp_path_factory) -> Path:
    return matrix_recipe(tmp_path_factory.mktemp("matrix"))


PROBE_PHASES = [Phase("probe-a", 2, 32, 4), Phase("probe-b", 2, 16, 2)]
CALLS: list[tuple[str, dict[str, Any]]] = []


class Probe:
    """Implements every hook, records what the core passes, and answers with neutral values."""

    def __init__(self, config, context):
        self.context = context

    def _seen(self, hook: str, **arguments: Any) -> None:
        CALLS.append((hook, arguments))

    @hookspecs.hookimpl
    def prx_check_recipe(self, recipe, active, model_config):
        self._seen("prx_check_recipe", recipe=recipe, active=active, model_config=model_config)
        return []

    @hookspecs.hookimpl
    def prx_resolution_schedule(self, recipe):
        self._seen("prx_resolution_schedule", recipe=recipe)
        return PROBE_PHASES

    @hookspecs.hookimpl
    def prx_cost(self, model_config, phase, text_tokens):
        self._seen("prx_cost", model_config=model_config, phase=phase, text_tokens=text_tokens)
        return [CostTerm("probe", 0.0)]

    @hookspecs.hookimpl
    def prx_configure_model(self, model, recipe, model_config):
        self._seen("prx_configure_model", model=model, recipe=recipe, model_config=model_config)
        return {}

    @hookspecs.hookimpl
    def prx_optimizer_groups(self, model, recipe):
        self._seen("prx_optimizer_groups", model=model, recipe=recipe)
        return []

    @hookspecs.hookimpl
    def prx_phase_change(self, phase, index, step):
        self._seen("prx_phase_change", phase=phase, index=index, step=step)

    @hookspecs.hookimpl
    def prx_routing(self, phase, model_config):
        self._seen("prx_routing", phase=phase, model_config=model_config)

    @hookspecs.hookimpl
    def prx_auxiliary_losses(self, phase, model, model_config):
        self._seen("prx_auxiliary_losses", phase=phase, model=model, model_config=model_config)
        return []

    @hookspecs.hookimpl
    def prx_guidance(self, sample_config, model_config, router):
        self._seen("prx_guidance", sample_config=sample_config, model_config=model_config, router=router)

    @hookspecs.hookimpl
    def prx_state_dict(self):
        self._seen("prx_state_dict")
        return {"probe": {"saved_at": torch.tensor(len(CALLS))}}

    @hookspecs.hookimpl
    def prx_load_state_dict(self, states):
        self._seen("prx_load_state_dict", states=states)


def probe_module() -> types.ModuleType:
    module = types.ModuleType("probe_plugin")

    @hookspecs.hookimpl
    def prx_register_techniques():
        CALLS.append(("prx_register_techniques", {}))
        return [Technique(name="probe", plugin=Probe, summary="implements every hook")]

    module.prx_register_techniques = prx_register_techniques
    return module


ARGUMENT_TYPES = {
    "recipe": Recipe, "active": tuple, "model_config": DenoiserConfig, "phase": Phase, "text_tokens": int,
    "model": nn.Module, "index": int, "step": int, "sample_config": SampleConfig, "states": dict,
}


def test_the_probes_implement_every_hook():
    """The training probe implements every hook a technique may (all but the tracker's), the
    tracker probe below the tracker's."""
    implemented = {name for name in dir(Probe) if name.startswith("prx_")} | {"prx_register_techniques"}
    assert implemented | {TRACKER_HOOK} == set(HOOKS), (
        f"add {sorted(set(HOOKS) - implemented - {TRACKER_HOOK})} to the Probe in tests/test_docs.py")
    assert {name for name in dir(TrackerProbe) if name.startswith("prx_")} == {TRACKER_HOOK}


def test_every_hook_is_called_by_the_core_with_its_documented_arguments(matrix_recipe, tmp_path):
    CALLS.clear()
    registry = discover(extra_modules=[probe_module()])
    first = train(matrix_recipe, ["probe"], tmp_path / "first", registry=registry)
    resumed = train(matrix_recipe, ["probe"], tmp_path / "resumed", registry=registry, resume=first.checkpoint)
    called = [hook for hook, _ in CALLS]
    never = [hook for hook in HOOKS if hook not in called and hook != TRACKER_HOOK]
    assert never == [], f"the core never called {never} in a plan / train / sample / checkpoint / resume cycle"
    for hook, arguments in CALLS:
        assert list(arguments) == list(inspect.signature(getattr(hookspecs, hook)).parameters)
        for name, value in arguments.items():
            if name == "router":
                assert value is None or callable(getattr(value, "plan", None))
            else:
                assert isinstance(value, ARGUMENT_TYPES[name]), f"{hook} got {name}={value!r}"
    phase_changes = [(a["phase"].name, a["index"], a["step"]) for hook, a in CALLS if hook == "prx_phase_change"]
    assert phase_changes == [("probe-a", 0, 0), ("probe-b", 1, 2), ("probe-b", 1, 3)]  # the last one on resume
    [loaded] = [a["states"] for hook, a in CALLS if hook == "prx_load_state_dict"]
    assert set(loaded) == {"probe"}
    assert hook_order_problems(first.events) == [] and hook_order_problems(resumed.events) == []


@pytest.mark.parametrize("hook", HOOKS[1:])
def test_the_order_check_catches_a_hook_called_out_of_its_stage(hook):
    """The check the matrix applies to every run: after a phase started, only the sampling and
    checkpoint-saving hooks may come again."""
    stages = documented_stages()
    setup = [(None, "hook", h, "probe") for h in HOOKS[1:] if stages[h] < stages["prx_phase_change"]]
    phase = [(0, "phase", "a", "core"),
             *[(None, "hook", h, "probe") for h in HOOKS if stages[h] == stages["prx_phase_change"]]]
    assert hook_order_problems(setup + phase) == []
    late = hook_order_problems(setup + phase + [(None, "hook", hook, "probe")])
    assert (late == []) == (hook in ("prx_guidance", "prx_state_dict")), late


# --- citations of the repository's own files ----------------------------------------------------

CITATION = re.compile(r"(?<![\w./-])((?:\.\.?/|[\w-]+/)*[\w-]+\.md)(?: (?:§|section )(\d+))?")
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def cited_files(text: str) -> list[tuple[str, str | None]]:
    """``(path, section)`` of every Markdown file a text cites: a ``NAME.md §N`` section, a path
    with a folder (``docs/plugins.md``) or a Markdown link. Bare names without a section
    (``report.md``) and paths in a run folder (``runs/NAME/report.md``) are files prx writes,
    not citations."""
    found = [(path, section or None) for path, section in CITATION.findall(text)
             if (section or "/" in path) and not path.startswith("runs/")]
    return found + [(path, None) for path in LINK.findall(text)]


def resolve_citation(path: str, citing: Path, tracked: set[Path]) -> Path | None:
    """The tracked file a citation names, relative to the citing file or the root; a file that
    exists here but is not tracked (a local run's output) does not count, so this test passes
    on a clean checkout exactly when it passes here."""
    for base in (citing.parent, ROOT):
        candidate = (base / path).resolve()
        if candidate in tracked:
            return candidate
    return None


def test_every_cited_file_and_section_exists_in_the_repository():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    tracked_paths = {(ROOT / name).resolve() for name in subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()}
    missing = []
    for name in tracked:
        citing = ROOT / name
        for number, line in enumerate(citing.read_text().splitlines(), 1):
            for path, section in cited_files(line):
                target = resolve_citation(path, citing, tracked_paths)
                if target is None:
                    missing.append(f"{name}:{number} cites {path}, which the repository does not contain")
                elif section and not re.search(rf"^#+ {section}\. ", target.read_text(), flags=re.M):
                    missing.append(f"{name}:{number} cites {path} §{section}, which has no section {section}")
    assert missing == []


def test_the_citation_check_catches_a_missing_file_and_a_missing_section(tmp_path):
    absent = "RECIPE" + ".md"  # spelled in two parts so that this file does not cite it
    link = "[guide](plugins" + ".md#hooks)"  # a link relative to docs/, not to tests/
    assert cited_files(f"defaults: {absent} §5, see docs/plugins.md and {link}") == [
        (absent, "5"), ("docs/plugins.md", None), ("plugins.md", None)]
    assert cited_files("writes report.md and results.csv, see runs/ablate/report.md") == []
    tracked = {ROOT / "docs" / "recipe.md", ROOT / "prx_core" / "ema.py"}
    assert resolve_citation(absent, ROOT / "prx_core" / "ema.py", tracked) is None
    assert resolve_citation("README.md", ROOT / "prx_core" / "ema.py", tracked) is None  # untracked
    recipe = resolve_citation("docs/recipe.md", ROOT / "prx_core" / "ema.py", tracked)
    assert recipe is not None and re.search(r"^## 7\. ", recipe.read_text(), flags=re.M)
    assert not re.search(r"^#+ 11\. ", recipe.read_text(), flags=re.M)


# --- the tracker hook, through `prx run` --------------------------------------------------------

SINK_CALLS: list[tuple] = []


class ProbeSink:
    """Records every call the core makes on a metrics sink, with the thread it came on."""

    def _seen(self, *call: Any) -> None:
        SINK_CALLS.append((*call, threading.current_thread().name))

    def open(self):
        self._seen("open")

    def metrics(self, step, row):
        self._seen("metrics", step, dict(row))

    def images(self, step, grid):
        self._seen("images", step, grid)

    def evaluation(self, step, results):
        self._seen("evaluation", step, dict(results))

    def close(self, status):
        self._seen("close", status)


class TrackerProbe:
    def __init__(self, config, context):
        self.context = context

    @hookspecs.hookimpl
    def prx_metrics_sink(self, run):
        CALLS.append(("prx_metrics_sink", {"run": run}))
        return ProbeSink()


def tracker_probe_module() -> types.ModuleType:
    module = types.ModuleType("tracker_probe_plugin")

    @hookspecs.hookimpl
    def prx_register_techniques():
        return [Technique(name="probe_tracker", plugin=TrackerProbe, summary="records the sink calls")]

    module.prx_register_techniques = prx_register_techniques
    return module


def traced_events(log: str) -> list[tuple]:
    """The hook trace back from the ``trace:`` lines PRX_TRACE=1 writes into log.txt."""
    events = []
    for line in log.splitlines():
        found = re.fullmatch(r"trace: (?:step (\d+) )?(\w+) (\S+) \[(\w+)\]", line)
        if found:
            step, kind, name, technique = found.groups()
            events.append((None if step is None else int(step), kind, name, technique))
    return events


@pytest.mark.slow
def test_the_tracker_hook_is_called_once_on_rank_0_after_set_up_and_its_sink_gets_every_record(
        tmp_path, monkeypatch):
    from prx_core.recipe.loader import load_recipe
    from prx_core.train.loop import run_training

    monkeypatch.setenv("PRX_TRACE", "1")
    registry = discover(extra_modules=[tracker_probe_module()])
    tiny = TINY_RECIPE
    run_dir = tmp_path / "run"
    for steps, resume in ((3, False), (6, True)):
        CALLS.clear()
        SINK_CALLS.clear()
        (run_dir / "log.txt").unlink(missing_ok=True)  # the trace of this process only
        recipe = load_recipe(tiny, ['plugins=["probe_tracker", "cfg"]', f"train.steps={steps}",
                                    "train.sample_every=2"], registry)
        run_training(recipe, registry, run_dir, resume=resume, interactive=False)
        [(hook, arguments)] = CALLS
        run = arguments["run"]
        assert isinstance(run, RunStart) and (run.start_step, run.total_steps, run.resumed) == (steps - 3, steps, resume)
        assert run.folder == run_dir and run.recipe["train"]["steps"] == steps and run.facts["techniques"] == ["cfg"]
        assert run.facts["trackers"] == ["probe_tracker"] and run.facts["parameters_total"] > 0
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evaluation = json.loads((run_dir / "eval.json").read_text())
        kinds = [call[0] for call in SINK_CALLS]
        assert kinds[0] == "open" and kinds[-1] == "close" and SINK_CALLS[-1][1] == "finished"
        # Every row once, in order; a resumed run first replays the rows and grids the run folder
        # holds up to its checkpoint (step 3: the first run's last row and final grid).
        assert [call[1:3] for call in SINK_CALLS if call[0] == "metrics"] == [(row["step"], row) for row in rows]
        grids = [call for call in SINK_CALLS if call[0] == "images"]
        assert [call[1] for call in grids] == ([2, 3] if steps == 3 else [2, 3, 4, 6])
        assert grids[-1][2].path == run_dir / "samples" / f"step_{steps:08d}.png"
        assert list(grids[-1][2].captions) == (run_dir / "samples" / f"step_{steps:08d}.txt").read_text().split("\n")[:-1]
        [(_, step, results, _)] = [call for call in SINK_CALLS if call[0] == "evaluation"]
        assert step == steps and results["prompt_following/overall"] == evaluation["prompt_following"]["overall"]
        assert {call[-1] for call in SINK_CALLS} == {"prx-tracker-probe_tracker"}  # never the training thread
        events = traced_events((run_dir / "log.txt").read_text())
        assert ("hook", "prx_metrics_sink", "probe_tracker") in [e[1:] for e in events]
        assert hook_order_problems(events) == []


def test_the_guides_constraint_message_is_the_real_one(monkeypatch):
    from prx_core.recipe.constraints import config_problems, describe_violation

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from prx_minsnr.config import MinSnrConfig

    quoted = re.search(r"refuses a value outside them with the file and key\n\(`(.*?)`\)", GUIDE)
    assert quoted, "docs/plugins.md lost its example of a refused value"
    (problem,) = config_problems(MinSnrConfig(gamma=0.0), ("minsnr",))
    assert describe_violation(problem) == quoted[1]
