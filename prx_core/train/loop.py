"""``prx run``: validate, plan, train through the phases, checkpoint, sample, evaluate, summarise."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from PIL import Image

from prx_core import distributed as D
from prx_core.checkpoint import CheckpointManager, select_checkpoint
from prx_core.console import RunConsole, format_skipped, skipped_samples
from prx_core.data.schedule import phase_at
from prx_core.errors import PluginFailure, RunInterrupted, UserError, WeightsNotFoundError
from prx_core.evaluation.prompt_following import evaluate
from prx_core.evaluation.prompts import eval_scenes
from prx_core.generate import generate, save_grid
from prx_core.model.denoiser import PRXDenoiser
from prx_core.plan import accumulation_steps, model_config, plan_phases
from prx_core.recipe.errors_format import where
from prx_core.recipe.loader import dump_recipe_toml, recipe_to_dict
from prx_core.recipe.schema import Recipe
from prx_core.registry import Registry
from prx_core.runfolder import EVAL, SUMMARY, RunFolder, final_means
from prx_core.techniques import TechniqueSet, TracedGuidance
from prx_core.text import check_text_width, load_text_encoder
from prx_core.tracking import scores_of
from prx_core.train.checkpointing import Checkpointing
from prx_core.train.initial_weights import check_initial_weights
from prx_core.train.periodic_eval import curve_line, eval_due, evaluate_during_training, evaluation_curve
from prx_core.train.phase_data import PhaseData
from prx_core.train.preflight import check_local
from prx_core.train.sinks import Sinks, run_facts, run_name
from prx_core.train.stopping import Signals, report_failure, stopped_at_once
from prx_core.train.trainer import Trainer
from prx_core.types import Guidance, RunContext, RunStart, SampleGrid


def sampling_model(trainer: Trainer) -> PRXDenoiser:
    """A fresh denoiser on the training device holding the EMA weights."""
    model = PRXDenoiser(trainer.model_config, init=trainer.recipe.model.init_scheme).to(trainer.device)
    trainer.ema.copy_to(model)
    return model.eval()


def run_training(recipe: Recipe, registry: Registry, run_dir: Path, resume: bool = False,
                 interactive: bool | None = None) -> Path:
    """Train ``recipe`` into ``run_dir``; returns the run folder.

    Everything that can refuse the recipe runs before the run folder is created: this machine's
    checks (device, text encoder, data, metric networks), the techniques' checks, the plan, and the
    set-up of the text encoder, the model and the teachers. Lines logged meanwhile go into
    ``log.txt`` once it exists. A run stopped by a signal raises :class:`RunInterrupted` after
    saying what it saved (prx_core.train.stopping); a plugin's failure is raised as a
    :class:`PluginFailure` whose traceback is in ``log.txt``."""
    with Signals() as signals:
        check_local(recipe)
        info = D.init_distributed(recipe.distributed, recipe.train.device)
        signals.announce = info.is_main
        folder = RunFolder(run_dir)
        if not resume and CheckpointManager(folder.checkpoints).holds_checkpoints():
            raise UserError(f"run folder {folder.root} already holds checkpoints. Continue it with --resume, or start "
                            f"a new run with --run-dir DIR (or --set name=NEW_NAME), or delete the folder.")
        console = RunConsole(0, enabled=info.is_main, interactive=interactive)
        try:
            return _train(recipe, registry, folder, resume, info, console, signals)
        except PluginFailure as failure:
            report_failure(failure, console, folder.root, info.is_main)
            raise
        except KeyboardInterrupt:  # during start-up (the loop turns its own into RunInterrupted)
            message = stopped_at_once(0, False, folder.checkpoints)
            console.log(message)
            raise RunInterrupted(message, signals.signum or signal.SIGINT) from None
        finally:
            if console.log_file is not None:
                console.log_file.close()


def _train(recipe: Recipe, registry: Registry, folder: RunFolder, resume: bool, info: D.DistInfo,
           console: RunConsole, signals: Signals) -> Path:
    context = RunContext(recipe, recipe.seed, info.rank, info.world_size, info.device, console.log)
    config = model_config(recipe)
    techniques = TechniqueSet(recipe, registry, context, config)
    phases = plan_phases(recipe, techniques)
    micro = {p.name: accumulation_steps(recipe, p, info.world_size) for p in phases}
    total_steps = sum(p.steps for p in phases)
    console.total = total_steps

    try:
        text_encoder = load_text_encoder(recipe.text, info.device)
    except WeightsNotFoundError as err:
        raise WeightsNotFoundError(f"{where(recipe, 'text.encoder')}: [text] encoder: {err}") from None
    check_text_width(recipe.text, config.text_dim, text_encoder, where(recipe, "text"))
    resuming = resume and CheckpointManager(folder.checkpoints).holds_checkpoints()
    if not resuming:  # a resumed run takes its weights from its checkpoint, not from [model] init
        check_initial_weights(recipe, text_encoder.dim)
    trainer = Trainer(recipe, techniques, text_encoder, info, initial_weights=not resuming)
    if info.is_main:
        folder.create()
        console.attach_log(open(folder.root / "log.txt", "a"))
    data: PhaseData | None = None
    checkpoints = Checkpointing(trainer, CheckpointManager(folder.checkpoints, recipe.train.keep_checkpoints), info,
                                console.log, lambda: {"loader": data.state_dict()})
    loader_state = None
    if resume:
        loader_state = (checkpoints.resume() or {}).get("loader")
        if info.is_main:
            folder.truncate_logs(trainer.step)
    if info.is_main:
        (folder.root / "recipe.toml").write_text(dump_recipe_toml(recipe))
        console.log(f"run folder: {folder.root}")
        trained = [name for name in techniques.names if name not in registry.trackers]
        console.log(f"techniques: {', '.join(trained) or '(none)'}")
        console.log("parameters: " + ", ".join(f"{k} {v:,}" for k, v in trainer.param_split.items()))
        console.log(f"device: {info.device}, processes: {info.world_size} ({info.strategy}), "
                    f"precision: {'bf16 autocast' if trainer.autocast else 'fp32'}")

    data = PhaseData(recipe, info, trainer.model_config.patch, text_encoder.fingerprint, loader_state, console.log)
    logged = folder.read_metrics() if resume else []
    started = time.monotonic() - (logged[-1]["wall_s"] if logged else 0.0)  # wall_s continues across resumes
    window_start, window_steps = time.monotonic(), 0
    last_phase, batches = None, None
    reported_skips: dict[str, int] = {}
    sinks, status, training = Sinks([]), "failed", False
    try:
        sinks = open_sinks(recipe, registry, techniques, trainer, info, folder, total_steps, resume, console)
        signals.train()
        if trainer.step >= total_steps:  # a finished run resumed: only the final samples, eval and summary remain
            trainer.start_phase(phases[-1], len(phases) - 1)
        with console:
            while trainer.step < total_steps:
                index, _ = phase_at(phases, trainer.step)
                phase = phases[index]
                if index != last_phase:
                    per_device = phase.batch_size // (info.world_size * micro[phase.name])
                    batches = data.start(phase, per_device)
                    trainer.start_phase(phase, index)
                    console.log(f"phase {index} '{phase.name}': {phase.resolution}px, global batch "
                                f"{phase.batch_size} = {per_device} x {info.world_size} processes x "
                                f"{micro[phase.name]} accumulation, until step {sum(p.steps for p in phases[:index + 1])}")
                    last_phase = index
                log_now = (trainer.step + 1) % recipe.train.log_every == 0 or trainer.step + 1 == total_steps
                training = True
                metrics = trainer.train_step(batches, micro[phase.name], timed=log_now)
                window_steps += 1
                out_of_time = recipe.train.max_wall_s is not None and time.monotonic() - started >= recipe.train.max_wall_s
                due = (trainer.step % recipe.train.checkpoint_every == 0 or trainer.step == total_steps
                       or signals.signum or out_of_time)
                # The run's health lives on the device (no host read per step): it is read at log
                # steps and when a checkpoint is due or waiting, so a divergence stops the run at
                # most log_every steps late and never reaches a checkpoint.
                health = trainer.health.read(trainer.step, info) if log_now or due or checkpoints.pending else None
                if health is not None:
                    checkpoints.check(health)
                if log_now:
                    row = read_metrics(metrics, trainer, info, phase, started)
                    elapsed = time.monotonic() - window_start
                    row["images_per_s"] = phase.batch_size * window_steps / elapsed
                    row["step_ms"] = 1e3 * elapsed / window_steps
                    row.update({f"data/{k}": v for k, v in data.stats().items()})
                    if info.is_main and skipped_samples(row) != reported_skips:  # a new bad sample: into log.txt
                        reported_skips = skipped_samples(row)
                        console.log(f"data: {format_skipped(row)} so far")
                    window_start, window_steps = time.monotonic(), 0
                    if info.is_main:
                        folder.append_metrics(row)
                        sinks.metrics(trainer.step, row)
                    console.advance(trainer.step, phase.name, row)
                else:
                    console.advance(trainer.step, phase.name, None)
                if recipe.train.sample_every and trainer.step % recipe.train.sample_every == 0 and trainer.step < total_steps:
                    write_samples(trainer, folder, recipe, info, sinks)
                if eval_due(recipe.eval.every, trainer.step, total_steps):
                    paused = time.monotonic()
                    evaluate_now(trainer, folder, recipe, info, console, paused - started, sinks)
                    started += time.monotonic() - paused  # the training clock stops while evaluating
                    window_start += time.monotonic() - paused
                saved = checkpoints.offer(health) if due or checkpoints.pending else True
                if (out_of_time or signals.signum or trainer.step == total_steps) and not saved:
                    console.log(checkpoints.unsaved_note())
                if out_of_time:
                    console.log(f"[train] max_wall_s = {recipe.train.max_wall_s} reached at step {trainer.step}")
                    break
                if signals.signum:
                    message = f"interrupted at step {trainer.step}; continue with: prx run ... --resume"
                    console.log(message)
                    status = "interrupted"
                    raise RunInterrupted(message, signals.signum)
        finish(trainer, folder, recipe, info, console, started, phases, sinks)
        status = "finished"
        # Rank 0 evaluates alone; the others wait for it so that every rank takes its process
        # group down together (once, a gloo rank that left early aborted at exit in the tests).
        D.barrier(info)
    except KeyboardInterrupt:  # a second signal (or one during set-up): stop at once
        status = "interrupted"
        message = stopped_at_once(trainer.step, training, folder.checkpoints)
        console.log(message)
        raise RunInterrupted(message, signals.signum or signal.SIGINT) from None
    except PluginFailure as failure:
        if not training:
            raise
        failure.exit_code = 1
        good = select_checkpoint(folder.checkpoints, hashes=False).folder
        failure.notes.append(f"The run stopped after step {trainer.step}; "
                             + (f"its last checkpoint, {good}, is intact: --resume continues from it once the plugin "
                                "is fixed." if good is not None else "it had written no checkpoint yet."))
        raise
    finally:
        signals.close()
        sinks.close(status, console.log)
        if data is not None:
            data.close()
        D.shutdown()
    return folder.root


def read_metrics(metrics: dict[str, torch.Tensor], trainer: Trainer, info: D.DistInfo, phase, started: float) -> dict:
    """The only host read of the step's metrics, every ``log_every`` steps (averaged over ranks)."""
    stacked = torch.stack([v.to(info.device).float().reshape(()) for v in metrics.values()])
    stacked = D.all_reduce_mean(stacked, info).tolist()
    row = {"step": trainer.step, "phase": phase.name, "wall_s": round(time.monotonic() - started, 3)}
    row.update({k: v for k, v in zip(metrics, stacked)})
    row.update({f"time/{k}_ms": v for k, v in trainer.term_ms.items()})
    row["nonfinite_skipped"] = trainer.nonfinite_total
    if info.device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(info.device) / 2**20
    else:
        import resource

        row["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def resolve_guidance(trainer: Trainer, recipe: Recipe) -> Guidance | None:
    """The guidance technique's guidance (None: plain conditional sampling), wrapped so that a
    failure inside it names the technique, and recorded in the hook trace on each use when the
    trainer traces per-step uses."""
    technique, guidance = trainer.techniques.call_one(
        "prx_guidance", sample_config=recipe.sample, model_config=trainer.model_config, router=trainer.router)
    if guidance is None:
        return None
    trace = trainer.techniques.trace if trainer.trace_steps else None
    return TracedGuidance(guidance, technique, trainer.techniques, trainer.step, trace)


def open_sinks(recipe: Recipe, registry: Registry, techniques: TechniqueSet, trainer: Trainer, info: D.DistInfo,
               folder: RunFolder, total_steps: int, resume: bool, console: RunConsole) -> Sinks:
    """The trackers' sinks, on rank 0 (none elsewhere), told where training starts."""
    trackers = tuple(name for name in techniques.names if name in registry.trackers)
    if not info.is_main or not trackers:
        return Sinks([])
    facts = run_facts(techniques, trackers, trainer.param_split, str(info.device), info.world_size, info.strategy,
                      "bf16 autocast" if trainer.autocast else "fp32")
    run = RunStart(run_name(folder.root, recipe.train.runs_dir), folder.root, recipe_to_dict(recipe), facts,
                   trainer.step, total_steps, resume)
    console.log(f"trackers: {', '.join(trackers)}")
    sinks = Sinks.open(techniques, run, console.log, console.detail)
    if resume:
        sinks.replay(folder, trainer.step, finished=trainer.step >= total_steps)
    return sinks


def write_samples(trainer: Trainer, folder: RunFolder, recipe: Recipe, info: D.DistInfo, sinks: Sinks) -> None:
    model = sampling_model(trainer)  # on every rank: under FSDP2 this gathers the EMA shards
    if not info.is_main:
        return
    scenes = eval_scenes(recipe.sample.num_prompts, recipe.sample.seed)
    captions = [s.caption() for s in scenes]
    images = generate(model, trainer.text_encoder, captions, (trainer.phase.resolution,) * 2, recipe.sample,
                      steps=recipe.sample.preview_steps, guidance=resolve_guidance(trainer, recipe),
                      seed=recipe.sample.seed, autocast=trainer.autocast)
    path = folder.samples / f"step_{trainer.step:08d}.png"
    save_grid(images, captions, path, columns=recipe.sample.columns)
    if sinks.feeds:
        with Image.open(path) as grid:
            sinks.images(trainer.step, SampleGrid(grid.convert("RGB"), tuple(captions), path))


def images_seen(phases, step: int) -> int:
    """Training images in the first ``step`` optimizer steps of the schedule."""
    total, start = 0, 0
    for phase in phases:
        total += phase.batch_size * max(0, min(step - start, phase.steps))
        start += phase.steps
    return total


def evaluate_now(trainer: Trainer, folder: RunFolder, recipe: Recipe, info: D.DistInfo, console: RunConsole,
                 training_s: float, sinks: Sinks) -> None:
    """A periodic evaluation ([eval] every) into evals.jsonl and the trackers (rank 0)."""
    model = sampling_model(trainer)  # on every rank: under FSDP2 this gathers the EMA shards
    if not info.is_main:
        return
    row = evaluate_during_training(model, trainer.text_encoder, resolve_guidance(trainer, recipe), recipe,
                                   trainer.step, trainer.phase.name, trainer.phase.resolution, trainer.autocast,
                                   training_s, folder)
    sinks.evaluation(trainer.step, scores_of(row))
    console.log(f"eval at step {trainer.step}: prompt following {row['prompt_following']['overall']:.3f} "
                f"({row['eval_s']:.1f} s, not counted in wall_s)")


def finish(trainer: Trainer, folder: RunFolder, recipe: Recipe, info: D.DistInfo, console: RunConsole,
           started: float, phases, sinks: Sinks) -> None:
    """Final sample grid, prompt-following evaluation and summary (rank 0)."""
    write_samples(trainer, folder, recipe, info, sinks)
    model = sampling_model(trainer)  # on every rank: under FSDP2 this gathers the EMA shards
    if not info.is_main:
        return
    evaluation = {"step": trainer.step, **evaluate(model, trainer.text_encoder, recipe.eval, recipe.sample,
                                                   trainer.phase.resolution, resolve_guidance(trainer, recipe),
                                                   trainer.autocast)}
    score = evaluation["prompt_following"]
    folder.write_json(EVAL, evaluation)
    sinks.evaluation(trainer.step, scores_of(evaluation))
    rows = folder.read_metrics()
    wall = rows[-1]["wall_s"] if rows else time.monotonic() - started
    images = images_seen(phases, trainer.step)
    last = rows[-1] if rows else {}
    skipped = skipped_samples(last)  # by reason, over every rank, at the last logged step
    summary = {
        "name": recipe.name, "plugins": list(trainer.techniques.names), "seed": recipe.seed,
        "steps": trainer.step, "wall_s": wall,
        "images_per_s": images / wall if wall else 0.0,
        "peak_mem_mb": max((r.get("peak_mem_mb", 0.0) for r in rows), default=0.0),
        "nonfinite_skipped": trainer.nonfinite_total,
        "data": {"seen": int(last.get("data/seen", 0)), "skipped": sum(skipped.values()), "skipped_by_reason": skipped},
        "final": final_means(rows), "eval": evaluation,
    }
    if recipe.eval.every:
        summary["evals"] = evaluation_curve(folder, evaluation, wall)
    folder.write_json(SUMMARY, summary)
    console.table("summary", {"steps": trainer.step, "wall time (s)": round(wall, 1),
                              "images/s": summary["images_per_s"],
                              "samples skipped": format_skipped(last).removeprefix("skipped ") or 0, **summary["final"],
                              **{f"prompt following / {k}": v for k, v in score.items()},
                              **evaluation.get("distribution", {}), **curve_line(summary.get("evals", []))})
    console.log(f"samples: {folder.samples}   metrics: {folder.root / 'metrics.jsonl'}   summary: {folder.root / SUMMARY}")

