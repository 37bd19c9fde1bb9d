"""``prx ablate --executor slurm`` through submitit's local executor (the same jobs as processes on
this machine): job ids stored in the ablation folder, the submitting process killed and the
command run again (no resubmission), failed jobs resubmitted only with --resume, the same report
as a local ablation; the sbatch options; and the example sbatch script's command line."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ablation import FAKE_RUN

from prx_core.ablation.cluster import JOBS_FILE, PrxJob, SlurmOptions, make_executor, sbatch_options
from prx_core.ablation.design import RunSpec
from prx_core.cli import main
from prx_core.cli.ablate_cmd import parse_time
from prx_core.errors import UserError
from prx_core.testing import TINY_RECIPE

ROOT = Path(__file__).parents[2]
TINY = TINY_RECIPE
LOCAL = ["--executor", "slurm", "--slurm-cluster", "local", "--time", "10"]


def jobs_of(folder: Path) -> dict:
    return json.loads((folder / JOBS_FILE).read_text())


def commands_in_logs(folder: Path) -> list[str]:
    return [line for log in sorted((folder / "logs").glob("*.log")) for line in log.read_text().splitlines()
            if line.startswith("$ ")]


@pytest.fixture
def fake_launcher(tmp_path, monkeypatch):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.jsonl"))
    return f"{sys.executable} {script}"


def test_failed_jobs_are_resubmitted_only_with_resume_and_the_report_is_written(tmp_path, fake_launcher,
                                                                                monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL_SEEDS", "1")
    out = tmp_path / "abl"
    argv = ["ablate", str(TINY), "--vary", "optim.lr=1e-3,2e-3", "--seeds", "2", "--out", str(out),
            "--launcher", fake_launcher, *LOCAL]
    assert main(argv) == 1  # seed 1 fails in both variants
    first = jobs_of(out)
    assert len(first) == 4 and len({job["job_id"] for job in first.values()}) == 4
    assert "failed" in capsys.readouterr().out
    assert main(argv) == 2  # without --resume: nothing is submitted, the failed runs are named
    err = capsys.readouterr().err
    assert "2 run(s) whose job ended without finishing" in err and first["runs/optim.lr=2e-3/seed1"]["job_id"] in err
    assert jobs_of(out) == first
    assert main([*argv, "--resume"]) == 0
    second = jobs_of(out)
    resubmitted = [d for d in second if second[d]["job_id"] != first[d]["job_id"]]
    assert sorted(resubmitted) == ["runs/baseline/seed1", "runs/optim.lr=2e-3/seed1"]
    assert all(second[d]["resume"] for d in resubmitted)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 6 and sum(c["resume"] for c in calls) == 2
    assert (out / "report.md").is_file() and len((out / "results.csv").read_text().splitlines()) == 5
    assert main([*argv, "--resume"]) == 0 and jobs_of(out) == second  # all finished: nothing submitted


@pytest.mark.slow
def test_killing_the_submitting_process_then_running_the_command_again_picks_up_the_jobs(tmp_path):
    """Real tiny runs: the submitter is SIGKILLed once the jobs are submitted; the jobs go on, and
    the same command run again waits for them, submits nothing, and writes the report."""
    out = tmp_path / "abl"
    command = [sys.executable, "-m", "prx_core", "ablate", str(TINY), "--vary", "cfg", "--out", str(out),
               "--set", "train.steps=2", "--set", "train.checkpoint_every=2", *LOCAL]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    submitter = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / JOBS_FILE).is_file():
            assert submitter.poll() is None, submitter.communicate()[0]
            assert time.monotonic() < deadline, "no job submitted within 120 s"
            time.sleep(0.1)
        submitter.send_signal(signal.SIGKILL)
        submitter.wait(timeout=30)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    jobs = jobs_of(out)
    assert len(jobs) == 2 and not (out / "report.md").exists()
    alive = [job["job_id"] for job in jobs.values() if _alive(int(job["job_id"]))]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    if alive:  # the jobs were still running when the command came back
        assert f"{len(alive)} job(s) already queued or running" in again.stdout
    assert "submitted" not in again.stdout and jobs_of(out) == jobs
    assert len(commands_in_logs(out)) == 2  # each run was started once
    report = (out / "report.md").read_text()
    assert "runs finished: 2 of 2" in report and "| **baseline** |" in report and "| +cfg |" in report
    for directory in jobs:
        assert json.loads((out / directory / "summary.json").read_text())["steps"] == 2


WAITING_DRIVER = """
import os, signal, sys, time
from prx_core.ablation import cluster
from prx_core.cli import main


class Clock:
    \"\"\"The cluster module's time: the first pause between two polls of the jobs gets SIGTERM.\"\"\"
    terminated = False

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        if not self.terminated:
            self.terminated = True
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(seconds)


cluster.time = Clock()
try:
    code = main(sys.argv[1:])
except KeyboardInterrupt:
    code = 130
sys.exit(code)
"""


@pytest.mark.slow
def test_sigterm_while_waiting_stops_the_waiting_and_leaves_the_jobs_running(tmp_path, fake_launcher):
    """Started as `nohup ... &` starts it (SIGINT ignored), the command gets SIGTERM while it waits
    for its jobs: it says so and exits 130; the jobs finish on their own, and the same command
    collects them without submitting anything."""
    (tmp_path / "driver.py").write_text(WAITING_DRIVER)
    out = tmp_path / "abl"
    argv = ["ablate", str(TINY), "--vary", "cfg", "--out", str(out), "--launcher", fake_launcher, *LOCAL]
    driver = subprocess.run([sys.executable, str(tmp_path / "driver.py"), *argv], capture_output=True, text=True,
                            timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert driver.returncode == 130, driver.stdout[-3000:] + driver.stderr[-3000:]
    assert "stopped waiting; the jobs keep running" in driver.stdout
    jobs = jobs_of(out)
    assert len(jobs) == 2 and not (out / "report.md").exists()
    again = subprocess.run([sys.executable, "-m", "prx_core", *argv], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "submitted" not in again.stdout and jobs_of(out) == jobs
    assert len(commands_in_logs(out)) == 2  # each run was started once
    assert "runs finished: 2 of 2" in (out / "report.md").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sbatch_options_and_time_limits():
    assert parse_time("90") == 90 and parse_time("4:00:00") == 240 and parse_time("1-02:30:00") == 1590
    assert parse_time("0:00:30") == 1
    for bad in ("", "soon", "0", "-5"):
        with pytest.raises(UserError, match="--time"):
            parse_time(bad)
    assert sbatch_options(["mail-type=END", "--exclusive", "gres-flags=enforce-binding"]) == {
        "mail_type": "END", "exclusive": "", "gres_flags": "enforce-binding"}


def test_the_slurm_script_submitit_would_send_asks_for_what_the_options_say(tmp_path, monkeypatch):
    """submitit writes the sbatch file; read what it holds for these options (no cluster needed:
    submitit only checks that an srun exists)."""
    with pytest.raises(UserError, match="--slurm-cluster local"):
        make_executor(tmp_path, SlurmOptions(), jobs=1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", time_min=240, gpus_per_job=8, nodes=2, cpus_per_gpu=12, mem_gb=500,
                           account="lab", qos="high", constraint="h100", max_running=4,
                           sbatch=("mail-type=END",), setup=("module load cuda",))
    executor = make_executor(tmp_path, options, jobs=10)
    text = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=96", "#SBATCH --mem=500GB", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "#SBATCH --mail-type=END", "#SBATCH --ntasks-per-node=1",
                 "module load cuda"):
        assert line in text, line
    assert "#SBATCH --array" not in text  # one submission; the array comes from executor.batch()
    assert executor._executor.parameters["array_parallelism"] == 4


def test_multi_gpu_and_multi_node_runs_are_launched_with_torchrun(tmp_path):
    spec = RunSpec("+cfg", 0, "runs/+cfg/seed0", ('plugins=["cfg"]', "seed=0"))
    one = PrxJob(("python", "-m", "prx_core"), "r.toml", spec, str(tmp_path), False, 1, 1, 8)
    assert one.command()[:4] == ["python", "-m", "prx_core", "run"]
    eight = PrxJob(("python", "-m", "prx_core"), "r.toml", spec, str(tmp_path), True, 8, 1, 8).command()
    assert eight[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone"]
    assert eight[5:8] == ["-m", "prx_core", "run"] and eight[-1] == "--resume"
    nodes = PrxJob(("python", "-m", "prx_core"), "r.toml", spec, str(tmp_path), False, 8, 4, 8).command(
        2, "gpu17", "99_3")
    assert {"--nnodes=4", "--node-rank=2", "--rdzv-endpoint=gpu17:29500", "--rdzv-id=99_3"} <= set(nodes)


def test_cluster_options_are_refused_without_the_slurm_executor(tmp_path, capsys):
    assert main(["ablate", str(TINY), "--vary", "cfg", "--partition", "gpu", "--out", str(tmp_path)]) == 2
    assert "--partition applies to --executor slurm" in capsys.readouterr().err
    assert main(["ablate", str(TINY), "--vary", "cfg", "--parallel", "2", "--out", str(tmp_path), *LOCAL]) == 2
    assert "--max-running" in capsys.readouterr().err


# --- examples/slurm -----------------------------------------------------------------------------

SCRIPT = ROOT / "examples" / "slurm" / "prx_run.sbatch"


def test_the_example_sbatch_script_is_valid_bash_and_its_prx_command_parses(capsys, monkeypatch):
    """``bash -n``, then the ``prx run`` the script would run, with its default recipe and the
    processes its #SBATCH lines ask for, as ``--dry-run`` planned here for the cluster
    (``--skip-local-checks``: this machine has neither the recipe's data nor its text encoder)."""
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert re.search(r"^#SBATCH --requeue$", text, flags=re.M) and "$RESUME" in text
    nodes = int(re.search(r"^#SBATCH --nodes=(\d+)$", text, flags=re.M)[1])
    gpus = int(re.search(r"^#SBATCH --gpus-per-node=(\d+)$", text, flags=re.M)[1])
    defaults = dict(re.findall(r"^(\w+)=\$\{\1:-([^}]+)\}", text, flags=re.M))
    [line] = [line for line in text.splitlines() if "-m prx_core run" in line]
    arguments = shlex.split(line.split("-m prx_core", 1)[1].rstrip("& "))
    filled = [defaults.get(a.strip("$"), "") if a.startswith("$") else a for a in arguments]
    filled = [a for a in filled if a]
    assert filled[:2] == ["run", "recipes/speedrun.toml"] and "--run-dir" in filled
    monkeypatch.chdir(ROOT)
    assert main([*filled, "--dry-run", "--skip-local-checks", "--gpus", str(nodes * gpus)]) == 0
    assert f"plan of 'speedrun' on {nodes * gpus} process(es)" in capsys.readouterr().out


def test_the_cluster_options_the_docs_name_are_options_of_prx_ablate():
    import argparse

    from prx_core.cli import ablate_cmd

    parser = argparse.ArgumentParser()
    ablate_cmd.register(parser.add_subparsers())
    [ablate] = parser._subparsers._group_actions[0].choices.values()
    options = {flag for action in ablate._actions for flag in action.option_strings}
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The same ablation on a SLURM cluster")[1].split("\n## ")[0]
    named = set(re.findall(r"`(--[a-z-]+)", section))
    assert len(named) >= 12 and named <= options, sorted(named - options)
