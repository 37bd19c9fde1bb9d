"""Runs the plan's ``prx run`` commands as jobs of a SLURM array, through submitit.

Every run that is not finished becomes one task of one array job (``sbatch --array``), with
``torchrun`` inside when a job has several GPUs (and a rendezvous on the job's first node when it
has several nodes). The job ids are written to ``slurm/jobs.json`` in the ablation folder as soon
as ``sbatch`` returns, so the submitting process may die: the same command run again asks SLURM
about each stored job and

* skips runs that finished (their ``summary.json`` exists);
* waits for jobs still queued or running, without submitting them again;
* resubmits runs whose job ended without finishing (failed, cancelled, timed out, node failure)
  with ``prx run --resume`` only when given ``--resume``, as local ablations do; without it, it
  names them and stops before submitting anything.

``--detach`` submits and returns; the report is written once every run has finished. Ctrl-C or
SIGTERM while the command waits (also in the background, ``nohup prx ablate ... &``) stops the
waiting, not the jobs. A job that times out or is preempted is requeued by submitit and continues
from its last checkpoint (``prx run --resume``). The ablation folder must be on storage every
node sees.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console

from prx_core.ablation.design import RunSpec
from prx_core.ablation.runner import THREAD_VARIABLES, RunOutcome, RunProgress, StopSignals, run_command, run_state
from prx_core.errors import UserError

JOBS_FILE = "slurm/jobs.json"
LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "PREEMPTED",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN")
"""SLURM states of a job that may still run (UNKNOWN: SLURM could not be asked; never resubmit then)."""
RENDEZVOUS_PORT = 29500


@attrs.frozen
class SlurmOptions:
    """What each job asks SLURM for. ``cluster``: "slurm", or "local" (submitit's local executor:
    the same jobs as processes on this machine, to try the pipeline without a cluster)."""

    cluster: str = "slurm"
    partition: str = ""
    time_min: int = 24 * 60
    gpus_per_job: int = 1
    nodes: int = 1
    cpus_per_gpu: int = 8
    mem_gb: int | None = None
    account: str = ""
    qos: str = ""
    constraint: str = ""
    max_running: int = 0
    sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    poll_s: float = 30.0


def sbatch_options(items: Sequence[str]) -> dict[str, str]:
    """``--sbatch`` items (``mail-type=END``, ``exclusive``) as submitit's additional parameters."""
    options = {}
    for item in items:
        key, separator, value = item.lstrip("-").partition("=")
        if not key:
            raise UserError(f"--sbatch '{item}': give an sbatch option as KEY=VALUE or KEY, e.g. --sbatch mail-type=END.")
        options[key.replace("-", "_")] = value if separator else ""
    return options


@attrs.frozen
class PrxJob:
    """One run inside a SLURM job: ``prx run`` (under ``torchrun`` for several GPUs) with its
    console output appended to the run's log in ``logs/``. Pickled by submitit; on a timeout or
    preemption submitit calls :meth:`checkpoint`, which requeues the run with ``--resume``."""

    launcher: tuple[str, ...]
    recipe: str
    spec: RunSpec
    folder: str
    resume: bool
    gpus: int
    nodes: int
    threads: int

    def command(self, node: int = 0, first_host: str = "localhost", job_id: str = "0") -> list[str]:
        launcher = list(self.launcher)
        if self.gpus > 1 or self.nodes > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={max(1, self.gpus)}"]
            if self.nodes > 1:
                launcher += [f"--nnodes={self.nodes}", f"--node-rank={node}", "--rdzv-backend=c10d",
                             f"--rdzv-endpoint={first_host}:{RENDEZVOUS_PORT}", f"--rdzv-id={job_id}"]
            else:
                launcher += ["--standalone"]
            launcher += ["-m", "prx_core"]
        return run_command(launcher, self.recipe, self.spec, Path(self.folder), self.resume)

    def log_path(self, node: int = 0) -> Path:
        name = self.spec.directory.replace("/", "__") + (f".node{node}" if node else "") + ".log"
        return Path(self.folder) / "logs" / name

    def __call__(self) -> str:
        import submitit

        environment = submitit.JobEnvironment()
        node = environment.node if self.nodes > 1 else 0
        command = self.command(node, environment.hostnames[0] if self.nodes > 1 else "localhost", environment.job_id)
        log = self.log_path(node)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as stream:
            stream.write(f"$ {shlex.join(command)}   # SLURM job {environment.job_id}\n")
            stream.flush()
            code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=self.environment()).returncode
        if code != 0:
            raise RuntimeError(f"prx run exited with code {code}; log: {log}")
        return str(Path(self.folder) / self.spec.directory)

    def environment(self) -> dict[str, str]:
        """The job's environment with CPU threads per process set to the cores each process has."""
        return {**os.environ, **{name: str(self.threads) for name in THREAD_VARIABLES}}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(attrs.evolve(self, resume=True))


def make_executor(folder: Path, options: SlurmOptions, jobs: int) -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit, which is not installed: pip install 'prx[slurm]'.") from None
    try:
        executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=options.cluster)
    except RuntimeError as err:  # no srun on this machine
        raise UserError(f"--executor slurm: {err} Run prx ablate on a machine that submits SLURM jobs (a login "
                        "node), or try the pipeline here with --slurm-cluster local.") from None
    gpus = max(0, options.gpus_per_job)
    parameters: dict[str, Any] = {
        "name": f"prx-{folder.name}", "timeout_min": options.time_min, "nodes": options.nodes,
        "tasks_per_node": 1, "gpus_per_node": gpus, "cpus_per_task": max(1, gpus) * options.cpus_per_gpu,
    }
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    if options.cluster == "slurm":
        slurm = {"partition": options.partition, "account": options.account, "qos": options.qos,
                 "constraint": options.constraint}
        parameters.update({f"slurm_{key}": value for key, value in slurm.items() if value})
        parameters["slurm_array_parallelism"] = options.max_running or jobs
        parameters["slurm_additional_parameters"] = sbatch_options(options.sbatch)
        parameters["slurm_setup"] = list(options.setup)
    elif options.cluster == "local":
        parameters["local_setup"] = list(options.setup)
    executor.update_parameters(**parameters)
    return executor


def _read_jobs(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / JOBS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_jobs(folder: Path, jobs: dict[str, dict[str, Any]]) -> None:
    path = folder / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jobs, indent=2))
    tmp.replace(path)


def job_is_live(folder: Path, cluster: str, job_id: str, live: dict[str, Any]) -> bool:
    """Whether the job may still run. ``live`` holds the job objects this process submitted."""
    if job_id in live:
        return not live[job_id].done()
    if cluster == "local":  # a local job's id is its controller's pid; its result file marks its end
        from submitit.core.utils import JobPaths

        if JobPaths(folder / "slurm", job_id, task_id=0).result_pickle.exists():
            return False
        try:
            os.kill(int(job_id), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    from submitit.slurm.slurm import SlurmJob

    state = SlurmJob(folder / "slurm", job_id).state.split()[0]
    return state in LIVE_STATES


def run_cluster(folder: Path, recipe: str, specs: Sequence[RunSpec], options: SlurmOptions, resume: bool = False,
                detach: bool = False, launcher: Sequence[str] = (sys.executable, "-m", "prx_core"),
                console: Console | None = None) -> list[RunOutcome]:
    """Submit every unfinished spec as a task of one array job (or pick up the jobs stored in
    ``slurm/jobs.json``), wait for them unless ``detach``, and return one outcome per spec that
    ended (finished ones included)."""
    console = console or Console(highlight=False)
    folder = Path(folder)
    jobs = _read_jobs(folder)
    submitted: dict[str, Any] = {}
    outcomes = {s.directory: RunOutcome(s, "skipped") for s in specs if run_state(folder, s) == "finished"}
    waiting, to_submit, stopped = [], [], []
    for spec in specs:
        if spec.directory in outcomes:
            continue
        job = jobs.get(spec.directory)
        if job is not None and job_is_live(folder, options.cluster, job["job_id"], submitted):
            waiting.append(spec)
        elif job is not None or run_state(folder, spec) == "partial":
            stopped.append(spec)
        else:
            to_submit.append(spec)
    if outcomes:
        console.print(f"{len(outcomes)} of {len(specs)} runs already finished; {len(specs) - len(outcomes)} to go",
                      markup=False)
    if stopped and not resume:
        listed = ", ".join(f"{s.directory} (job {jobs[s.directory]['job_id']})" if s.directory in jobs else s.directory
                           for s in stopped[:5]) + (f" and {len(stopped) - 5} more" if len(stopped) > 5 else "")
        raise UserError(f"{folder} has {len(stopped)} run(s) whose job ended without finishing: {listed}. Their logs "
                        f"are in {folder / 'logs'}. Pass --resume to resubmit them (prx run --resume continues from "
                        f"their last checkpoint), or delete their folders to start them again.")
    to_submit += stopped
    if waiting:
        console.print(f"{len(waiting)} job(s) already queued or running: "
                      + ", ".join(jobs[s.directory]["job_id"] for s in waiting), markup=False)
    if to_submit:
        executor = make_executor(folder, options, len(to_submit))
        calls = [PrxJob(tuple(launcher), recipe, spec, str(folder), run_state(folder, spec) == "partial",
                        options.gpus_per_job, options.nodes, options.cpus_per_gpu) for spec in to_submit]
        with executor.batch():
            pending = [executor.submit(call) for call in calls]
        for call, job in zip(calls, pending):  # the job's own flag: by now a fast job may have finished
            submitted[job.job_id] = job
            jobs[call.spec.directory] = {"job_id": job.job_id, "resume": call.resume,
                                         "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_jobs(folder, jobs)
        console.print(f"submitted {len(to_submit)} run(s) as {options.cluster} job(s) "
                      + ", ".join(job.job_id for job in pending) + f"; job ids in {folder / JOBS_FILE}", markup=False)
        waiting += to_submit
    if detach:
        if waiting:
            console.print(f"detached: {len(waiting)} run(s) queued or running; run the same command again to "
                          "collect them and write the report", markup=False)
        return list(outcomes.values())
    return _wait(folder, specs, waiting, jobs, submitted, outcomes, options, console)


def _wait(folder: Path, specs: Sequence[RunSpec], waiting: list[RunSpec], jobs: dict[str, dict[str, Any]],
          submitted: dict[str, Any], outcomes: dict[str, RunOutcome], options: SlurmOptions,
          console: Console) -> list[RunOutcome]:
    started = time.monotonic()
    try:
        with RunProgress(len(specs), len(outcomes), len(waiting) or 1, console) as progress, StopSignals():
            while waiting:
                for spec in list(waiting):
                    job_id = jobs[spec.directory]["job_id"]
                    if job_is_live(folder, options.cluster, job_id, submitted):
                        continue
                    waiting.remove(spec)
                    finished = run_state(folder, spec) == "finished"
                    log = folder / "logs" / (spec.directory.replace("/", "__") + ".log")
                    outcome = RunOutcome(spec, "finished" if finished else "failed", time.monotonic() - started,
                                         0 if finished else 1, str(log))
                    outcomes[spec.directory] = outcome
                    progress.finished(outcome)
                if waiting:
                    time.sleep(options.poll_s)
    except KeyboardInterrupt:
        console.print("stopped waiting; the jobs keep running. Run the same command again to collect them "
                      f"(job ids in {folder / JOBS_FILE}).", markup=False)
        raise
    return [outcomes[spec.directory] for spec in specs if spec.directory in outcomes]
