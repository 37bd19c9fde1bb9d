"""Third-party plugins, end to end: the example package examples/prx-minsnr is installed into a
temporary directory (never into the venv) next to a distribution of broken plugins; the
technique is found through its entry point, passes the interference matrix's checks, and runs
from a recipe through the ``prx`` CLI with no change to prx_core, while the broken plugins are
reported by name and take nothing down.

The fast tests put on ``sys.path`` what an installation would (the package and a dist-info with
the entry points read from the example's pyproject.toml); the slow tests build the real wheel
with pip, install it with ``pip install --target`` into a temporary directory, and run ``prx``
and the example's own tests (``pytest`` on examples/prx-minsnr/tests, which use the public
harness :mod:`prx_core.testing`) in subprocesses with that directory on ``PYTHONPATH``. Either
way the venv is left untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
import torch

from prx_core.objective import v_space_loss
from prx_core.registry import ENV_ONLY, discover
from prx_core.techniques import ENV_TRACE
from prx_core.testing import TINY_RECIPE, check_combination, matrix_recipe

EXAMPLE = Path(__file__).parents[1] / "examples" / "prx-minsnr"

BROKEN = {
    "prx_broken_import": 'raise ImportError("needs libfoo, which is not installed")\n',
    "prx_broken_signature": textwrap.dedent(
        """
        from prx_core.hookspecs import hookimpl

        @hookimpl
        def prx_register_techniques(recipe):
            return []
        """
    ),
    "prx_broken_config": textwrap.dedent(
        """
        from prx_core.hookspecs import hookimpl
        from prx_core.types import Technique

        class Settings:  # not an attrs class: the core cannot structure a recipe table into it
            pass

        class Plugin:
            def __init__(self, config, context):
                pass

        @hookimpl
        def prx_register_techniques():
            return [Technique(name="broken_config", plugin=Plugin, config=Settings)]
        """
    ),
    "prx_broken_name": textwrap.dedent(
        """
        from prx_core.hookspecs import hookimpl
        from prx_core.types import Technique

        class Plugin:  # takes the name of a built-in technique
            def __init__(self, config, context):
                pass

        @hookimpl
        def prx_register_techniques():
            return [Technique(name="cfg", plugin=Plugin)]
        """
    ),
}
BROKEN_ERRORS = {
    "broken_import": "ImportError: needs libfoo, which is not installed",
    "broken_signature": "prx_register_techniques asks for recipe, which the hook does not pass",
    "broken_config": "technique 'broken_config': config must be an attrs class or None",
    "broken_name": "technique name clash: 'cfg' is prx's built-in technique (prx_cfg.plugin)",
}


def add_broken_plugins(site: Path) -> None:
    """A 'prx-broken' distribution whose four entry points cannot load (import error, bad hook
    signature, bad config class, the name of a built-in technique)."""
    for module, text in BROKEN.items():
        (site / f"{module}.py").write_text(text)
    info = site / "prx_broken-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: prx-broken\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(
        "[prx.plugins]\n" + "".join(f"{name.removeprefix('prx_')} = {name}\n" for name in BROKEN))


@pytest.fixture(scope="module")
def source_site(tmp_path_factory) -> Path:
    """What installing the example puts on sys.path, without pip: its package and a dist-info
    whose name, version and entry points are read from its pyproject.toml."""
    site = tmp_path_factory.mktemp("source_site")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "src" / "prx_minsnr", site / "prx_minsnr")
    info = site / f"prx_minsnr-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in groups.items()))
    add_broken_plugins(site)
    return site


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """The example built into a wheel by its own pyproject.toml and installed with pip into a
    directory (not the venv), next to the broken plugins."""
    root = tmp_path_factory.mktemp("wheel_site")
    source = root / "source"
    shutil.copytree(EXAMPLE, source)  # the build writes build/ and *.egg-info next to the sources
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", root / "wheels",
                    source], check=True)
    [wheel] = (root / "wheels").glob("prx_minsnr-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", site, wheel], check=True)
    add_broken_plugins(site)
    return site


@pytest.fixture(scope="module", name="matrix_recipe")
def matrix_recipe_fixture(tmp_path_factory) -> Path:
    return matrix_recipe(tmp_path_factory.mktemp("matrix"))


@pytest.fixture
def installed(source_site, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(source_site))
    return source_site


def test_the_plain_function_caps_each_samples_weight(installed):
    from prx_minsnr import min_snr_correction

    generator = torch.Generator().manual_seed(0)
    x0, x0_hat, noise = (torch.randn(6, 3, 8, 8, generator=generator) for _ in range(3))
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 1.0])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    gamma, floor = 5.0, 0.05
    capped = torch.minimum(1 / t.clamp(min=floor) ** 2, torch.tensor(gamma))
    reference = (capped * ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))).mean()
    correction = min_snr_correction(x0_hat, x0, t, gamma, floor)
    torch.testing.assert_close(v_space_loss(x0_hat, x0, x_t, t, floor) + correction, reference)
    assert correction < 0
    assert min_snr_correction(x0_hat, x0, t, gamma=1e6, floor=floor) == 0  # a cap above every weight


def test_discovery_finds_the_example_and_reports_each_broken_plugin(installed):
    registry = discover()
    assert registry.origins["minsnr"] == ("minsnr", "prx_minsnr.plugin", "0.1.0")
    assert registry.techniques["minsnr"].effects == ("loss_term:minsnr",)
    assert {"cfg", "tread", "multires"} <= set(registry.techniques)
    assert registry.origins["cfg"][1] == "prx_cfg.plugin"  # the built-in, not the plugin that took its name
    errors = {b.entry_point: b.error for b in registry.broken}
    assert set(errors) == set(BROKEN_ERRORS)
    for name, fragment in BROKEN_ERRORS.items():
        assert fragment in errors[name]


@pytest.mark.parametrize("names", [("minsnr",), ("minsnr", "multires", "repa", "tread")], ids="+".join)
def test_the_example_passes_the_matrix_checks(installed, names, matrix_recipe, tmp_path):
    check_combination(names, matrix_recipe, tmp_path, registry=discover())


def prx(*args: str, site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    inherited = {key: value for key, value in os.environ.items() if key not in (ENV_ONLY, ENV_TRACE)}
    environment = {**inherited, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "prx_core", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_lists_broken_plugins_and_runs_a_recipe_with_the_example(wheel_site, tmp_path):
    site = wheel_site
    listed = prx("plugins", "--json", site=site, cwd=tmp_path)
    assert listed.returncode == 2, listed.stderr  # the broken plugins make the installation fail the check
    report = json.loads(listed.stdout)
    [minsnr] = [t for t in report["techniques"] if t["name"] == "minsnr"]
    assert (minsnr["entry_point"], minsnr["version"], minsnr["hooks"]) == (
        "minsnr", "0.1.0", ["prx_auxiliary_losses"])
    assert {b["entry_point"] for b in report["broken"]} == set(BROKEN_ERRORS)

    only = prx("plugins", "--json", site=site, cwd=tmp_path, PRX_PLUGINS="minsnr,cfg")
    assert only.returncode == 0, only.stderr
    report = json.loads(only.stdout)
    assert [t["name"] for t in report["techniques"]] == ["cfg", "minsnr"] and report["broken"] == []

    run = prx("run", str(TINY_RECIPE), "--set", 'plugins=["minsnr", "cfg"]', "--set", "train.steps=2",
              "--set", "minsnr.gamma=4.0", "--run-dir", str(tmp_path / "run"), "--plain",
              site=site, cwd=tmp_path, PRX_TRACE="1")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all(row["loss/minsnr"] <= 0 for row in rows)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["plugins"] == ["cfg", "minsnr"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "trace: step 0 use loss_term:minsnr [minsnr]" in log
    assert "trace: step 0 phase train [core]" in log and "trace: step 1 use loss_term:minsnr [minsnr]" in log
    assert "trace: step 2 use guidance [cfg]" in log


@pytest.mark.slow
def test_the_examples_own_tests_pass_with_the_installed_wheel(wheel_site, tmp_path):
    """What the example's author runs: pytest on the package's tests, with the package installed."""
    # a copy outside the prx repository, so that none of its pytest settings or conftest apply
    shutil.copytree(EXAMPLE / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    inherited = {key: value for key, value in os.environ.items() if key not in (ENV_ONLY, ENV_TRACE)}
    environment = {**inherited, "PYTHONPATH": str(wheel_site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "skipped" not in run.stdout and " passed" in run.stdout, run.stdout[-3000:]
