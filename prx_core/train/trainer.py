"""The training step: model, optimizers, EMA, and one optimizer step over a global batch.

Read top to bottom, a step is: for each micro-batch, encode captions (or take cached ones),
draw per-sample noise, ask the phase's router for a route plan, run the denoiser, add the
objective and the phase's auxiliary losses, backward. Then clip, check finiteness, step every
optimizer, update the EMA. Techniques enter only through objects resolved once per phase.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator

import attrs
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from prx_core import distributed as D
from prx_core.data.loader import Batch
from prx_core.ema import EMA
from prx_core.errors import PluginError, RecipeError, UserError
from prx_core.model.denoiser import PRXDenoiser
from prx_core.objective import add_noise, sample_time, v_space_loss
from prx_core.recipe.schema import Recipe
from prx_core.registry import qualname
from prx_core.techniques import ENV_TRACE, TechniqueSet
from prx_core.text import TextEncoder, check_text_width
from prx_core.train.divergence import DivergenceMonitor
from prx_core.train.nonfinite import nonfinite_flag, step_unless
from prx_core.train.initial_weights import load_initial_weights
from prx_core.train.randomness import draw
from prx_core.types import AuxiliaryLoss, Conditioning, Phase, Router, RoutePlan, StepTensors


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast over fp32 master weights on GPU, plain fp32 on CPU (``precision = auto``)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@attrs.frozen
class CompiledLoss:
    """An auxiliary loss whose whole call is one compiled region: the technique's teacher passes
    (the clean branch without gradient, the prediction branch with it), its resizing, distance
    and weighting compile and fuse together instead of running as separate kernels around a
    compiled teacher."""

    name: str
    blocks: tuple[int, ...]
    call: Callable[[StepTensors], dict[str, torch.Tensor]]
    wraps: type
    """The technique's loss class (named when it fails)."""

    @classmethod
    def of(cls, loss: AuxiliaryLoss) -> CompiledLoss:
        return cls(loss.name, tuple(getattr(loss, "blocks", ())), torch.compile(loss.__call__), type(loss))

    def __call__(self, step: StepTensors) -> dict[str, torch.Tensor]:
        return self.call(step)


class Trainer:
    """Owns the model and everything stepped with it; ``train_step`` does one optimizer step."""

    def __init__(self, recipe: Recipe, techniques: TechniqueSet, text_encoder: TextEncoder, info: D.DistInfo,
                 initial_weights: bool = True):
        """``initial_weights``: load ``[model] init``'s checkpoint (False when a resumed
        checkpoint replaces the weights anyway)."""
        self.recipe = recipe
        self.techniques = techniques
        self.text_encoder = text_encoder
        self.info = info
        self.device = info.device
        self.model_config = techniques.model_config
        check_text_width(recipe.text, self.model_config.text_dim, text_encoder)
        torch.manual_seed(recipe.seed)  # identical initial weights on every rank and every resume
        denoiser = PRXDenoiser(self.model_config, init=recipe.model.init_scheme)
        if initial_weights:
            load_initial_weights(denoiser, recipe, text_encoder.dim)
        denoiser.activation_checkpointing = recipe.model.activation_checkpointing
        attached: dict[str, str] = {}
        for owner, modules in techniques.call("prx_configure_model", model=denoiser, recipe=recipe,
                                              model_config=self.model_config):
            where = "its hook prx_configure_model"
            if not isinstance(modules, dict) or not all(
                    isinstance(k, str) and isinstance(m, torch.nn.Module) for k, m in modules.items()):
                raise techniques.failure(owner, where, problem=f"it returned {modules!r:.120}, not a dict of name -> "
                                         "torch.nn.Module (return {} to attach nothing)")
            for name, module in modules.items():
                if name in attached:
                    raise techniques.failure(owner, where, problem=f"it attaches a module named '{name}', which "
                                             f"technique '{attached[name]}' attaches too; rename one")
                attached[name] = owner
                denoiser.extras[name] = module
        self.denoiser = denoiser.to(self.device)
        self.autocast = autocast_dtype(recipe.train.precision, self.device)
        self.model = D.wrap_model(self.denoiser, info, compute_dtype=self.autocast)
        if recipe.train.compile:
            # Every aspect-ratio bucket is a new shape: allow one graph per bucket and phase.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self.forward = torch.compile(self.model) if recipe.train.compile else self.model
        self.objective_loss = torch.compile(v_space_loss) if recipe.train.compile else v_space_loss
        self.optimizers = self._build_optimizers()
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.ema = EMA(list(self.denoiser.denoiser_parameters()), recipe.optim.ema_decay, recipe.optim.ema_every)
        self.empty = text_encoder.encode([""])
        self.step = 0
        # Skipped steps, weights and loss spikes, watched on the device (prx_core.train.divergence).
        self.health = DivergenceMonitor(list(self.denoiser.parameters()), recipe.train, self.device)
        self.router: Router | None = None
        self.capture: tuple[int, ...] = ()
        self.aux_losses: list[AuxiliaryLoss] = []
        self.router_owner = ""
        self.aux_owners: list[str] = []
        # Per-step uses of the per-phase objects go into the hook trace only when asked for
        # (PRX_TRACE=1, or a test setting this): over a long run the list would grow every step.
        self.trace_steps = os.environ.get(ENV_TRACE) == "1"

    # -- set-up -----------------------------------------------------------------------------
    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        claims = self.techniques.call("prx_optimizer_groups", model=self.denoiser, recipe=self.recipe)
        flat = [(owner, claim) for owner, group in claims for claim in group]
        self.techniques.check_claims(flat, self.denoiser)
        claimed = {name for _, claim in flat for name, _ in claim.params}
        optimizers: dict[str, torch.optim.Optimizer] = {}
        for owner, claim in sorted(flat, key=lambda oc: (oc[0], oc[1].label)):
            label = claim.label or owner
            optimizers[label] = claim.build([p for _, p in claim.params])
        rest = [p for name, p in self.denoiser.named_parameters() if name not in claimed and p.requires_grad]
        o = self.recipe.optim
        optimizers["adamw"] = torch.optim.AdamW(
            rest, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
            fused=self.device.type in ("cuda", "cpu"),  # fused: honours found_inf, no host reads
        )
        self.param_split = {label: sum(p.numel() for g in opt.param_groups for p in g["params"])
                            for label, opt in optimizers.items()}
        return optimizers

    def start_phase(self, phase: Phase, index: int) -> None:
        """Resolve the techniques' per-phase objects once; the steps of the phase reuse them."""
        t = self.techniques
        t.trace.record("phase", phase.name, "core", self.step)
        t.call("prx_phase_change", phase=phase, index=index, step=self.step)
        self.router_owner, self.router = t.call_one("prx_routing", phase=phase, model_config=self.model_config)
        losses = t.call("prx_auxiliary_losses", phase=phase, model=self.denoiser, model_config=self.model_config)
        self.capture = self._captured_blocks(losses)
        self.aux_losses = [CompiledLoss.of(loss) if self.recipe.train.compile else loss
                           for _, found in losses for loss in found]
        self.aux_owners = [name for name, found in losses for _ in found]
        self.health.start_phase()
        self.phase = phase

    def _captured_blocks(self, losses: list[tuple[str, list[AuxiliaryLoss]]]) -> tuple[int, ...]:
        """The blocks whose outputs the phase's losses read (the union of their ``blocks``)."""
        depth = self.model_config.depth
        blocks: set[int] = set()
        for owner, found in losses:
            for loss in found:
                declared = getattr(loss, "blocks", ())
                if not isinstance(declared, (tuple, list)) or not all(
                        isinstance(b, int) and 0 <= b < depth for b in declared):
                    raise PluginError(
                        f"technique '{owner}': its loss '{getattr(loss, 'name', '?')}' reads blocks {declared!r}; "
                        f"blocks must be a tuple of indices 0..{depth - 1} of the {depth}-block model.")
                blocks.update(declared)
        return tuple(sorted(blocks))

    # -- the step ---------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        warmup = self.recipe.optim.warmup_steps
        return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

    def _conditioning(self, batch: Batch, drop: torch.Tensor) -> Conditioning:
        cond = batch.text if batch.text is not None else self.text_encoder.encode(batch.captions)
        tokens, mask = cond.tokens.to(self.device, non_blocking=True), cond.mask.to(self.device, non_blocking=True)
        dropped = (drop < self.recipe.objective.caption_dropout)[:, None]
        tokens = torch.where(dropped[..., None], self.empty.tokens.to(tokens), tokens)
        mask = torch.where(dropped, self.empty.mask.to(mask), mask)
        return Conditioning(tokens, mask)

    def micro_step(self, batch: Batch, scale: float, timed: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; returns its loss terms (detached)."""
        x0 = batch.images.to(self.device, non_blocking=True)
        b, _, height, width = x0.shape
        draws = draw(self.recipe.seed, self.step, batch.ids, tuple(x0.shape[1:]), self.device)
        t = sample_time(draws.normal, draws.uniform, draws.choice, self.recipe.objective)
        x_t = add_noise(x0, draws.noise, t)
        cond = self._conditioning(batch, draws.drop)
        patch = self.model_config.patch
        route = self._route(b, (height // patch, width // patch)) if self.router else ()
        trace = self.techniques.trace if self.trace_steps else None
        if trace is not None and self.router:
            trace.record("use", "router.plan", self.router_owner, self.step)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            x0_hat, captured = self.forward(x_t, t, cond.tokens, cond.mask, route, self.capture)
            terms = {"diffusion": self.objective_loss(x0_hat, x0, x_t, t, self.recipe.objective.loss_t_floor)}
            owners = {"diffusion": "the core objective"}
            tensors = StepTensors(x0, x_t, t, x0_hat, captured, route, patch, self.step)
            for i, aux in enumerate(self.aux_losses):
                start = time.perf_counter() if timed else 0.0
                for name, value in self._loss_terms(self.aux_owners[i], aux, tensors).items():
                    if name in terms:
                        raise self.techniques.failure(
                            self.aux_owners[i], self._loss_where(aux),
                            problem=f"it returned the term '{name}', which {owners[name]} returns too; declare each "
                            "term as a loss_term effect and give it a name of its own")
                    terms[name], owners[name] = value.float(), f"technique '{self.aux_owners[i]}'"
                    if trace is not None:
                        trace.record("use", f"loss_term:{name}", self.aux_owners[i], self.step)
                if timed:
                    self._sync()
                    self.term_ms[aux.name] = self.term_ms.get(aux.name, 0.0) + 1e3 * (time.perf_counter() - start)
        total = sum(terms.values())
        (total * scale).backward()
        return {name: value.detach() for name, value in terms.items()}

    def _route(self, batch: int, grid: tuple[int, int]) -> RoutePlan:
        """The phase router's plan for this micro-batch; a failure inside it names its technique."""
        try:
            return self.router.plan(batch, grid, self.step, self.device)
        except UserError:
            raise
        except Exception as err:
            where = f"the router its hook prx_routing returned, during step {self.step + 1}"
            raise self.techniques.failure(self.router_owner, where, err) from err

    def _loss_where(self, loss: AuxiliaryLoss) -> str:
        kind = loss.wraps if isinstance(loss, CompiledLoss) else type(loss)
        return f"its loss '{getattr(loss, 'name', '?')}' ({qualname(kind)}) during step {self.step + 1}"

    def _loss_terms(self, owner: str, loss: AuxiliaryLoss, tensors: StepTensors) -> dict[str, torch.Tensor]:
        """``loss(tensors)``, checked: a dict of term name -> scalar (0-dim) floating-point tensor.
        A loss that raises or returns anything else is a :class:`PluginFailure` of ``owner``
        (checked on the tensors' metadata only: no host read)."""
        where = self._loss_where(loss)
        try:
            terms = loss(tensors)
        except UserError:
            raise
        except Exception as err:
            raise self.techniques.failure(owner, where, err) from err
        if not isinstance(terms, dict) or not terms:
            raise self.techniques.failure(owner, where, problem=f"it returned {terms!r:.120}; a loss returns a "
                                          "non-empty dict of term name -> scalar tensor")
        for name, value in terms.items():
            if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
                got = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                       else f"a {type(value).__name__}")
                raise self.techniques.failure(owner, where, problem=(
                    f"it returned the term '{name}' as {got}; a loss term is a 0-dim floating-point tensor (reduce "
                    "it over the batch with .mean(), and keep it a tensor so that it has a gradient)"))
        return terms

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, batches: Iterator[Batch], accumulation: int, timed: bool = False) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accumulation`` micro-batches. Returns device-side metrics."""
        self.model.train()
        self.term_ms: dict[str, float] = {}
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accumulation):
            D.set_gradient_sync(self.model, self.info, micro == accumulation - 1)
            batch = next(batches)
            for name, value in self.micro_step(batch, 1.0 / accumulation, timed).items():
                sums[name] = sums.get(name, 0.0) + value / accumulation
        params = [p for p in self.denoiser.parameters() if p.grad is not None]
        D.sync_extras_grads(self.denoiser, self.info)
        grad_norm = D.clip_grad_norm(params, self.recipe.optim.grad_clip)
        loss = sum(sums.values())
        # A non-finite loss or gradient skips the update, decided on the device: no host read
        # (prx_core.train.nonfinite). The loop reads the counters every log_every steps.
        found_inf = nonfinite_flag(loss, grad_norm)
        factor = self.lr_factor(self.step)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor
            step_unless(opt, found_inf)
            opt.zero_grad(set_to_none=True)
        # Spikes are judged on the core objective's term: a non-negative error, while the total
        # may be negative (REPA's term is a negative cosine similarity), where "factor x median" means nothing.
        bad_update = self.health.record(self.step + 1, sums["diffusion"], found_inf)
        self.step += 1
        self.ema.update(self.step, skip=torch.maximum(found_inf, bad_update))
        metrics = {"loss": loss, **{f"loss/{k}": v for k, v in sums.items()}, "grad_norm": grad_norm}
        metrics["lr"] = torch.tensor(self.recipe.optim.lr * factor)
        return metrics

    @property
    def nonfinite_total(self) -> int:
        """Optimizer steps skipped so far as non-finite (a host read: call it at log steps)."""
        return self.health.nonfinite_total

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Model, EMA and optimizer states keyed by parameter name, in this run's layout (DTensor
        shards under FSDP2, full tensors otherwise), plus counters and the techniques' states.
        prx_core.train.state writes them (one file, or torch.distributed.checkpoint shards)."""
        return {
            "model": get_model_state_dict(self.denoiser),
            "ema": self.ema.state_dict(),
            # Keyed by parameter name, not position, so that a checkpoint loads into any layout.
            "optimizers": {label: get_optimizer_state_dict(self.denoiser, opt)
                           for label, opt in self.optimizers.items()},
            "step": self.step,
            "nonfinite_total": self.nonfinite_total,
            "techniques": {k: v for _, states in self.techniques.call("prx_state_dict") for k, v in states.items()},
        }

    def check_optimizer_labels(self, labels: Iterable[str]) -> None:
        labels = sorted(labels)
        if set(labels) != set(self.optimizers):
            raise RecipeError(
                f"the checkpoint's optimizers {labels} differ from this recipe's "
                f"{sorted(self.optimizers)}: resume with the recipe the run was started with."
            )

    def load_state_dict(self, state: dict) -> None:
        """``state`` as :meth:`state_dict` returns it, with tensors in this run's layout or full
        (a one-process or DDP checkpoint resumed under FSDP2: each rank keeps its shard)."""
        self.check_optimizer_labels(state["optimizers"])
        full = self.info.strategy == "fsdp" and not any(isinstance(v, DTensor) for v in state["model"].values())
        options = StateDictOptions(full_state_dict=full)
        set_model_state_dict(self.denoiser, state["model"], options=options)
        self.ema.load_state_dict(state["ema"])
        for label, opt in self.optimizers.items():
            set_optimizer_state_dict(self.denoiser, opt, state["optimizers"][label], options=options)
        self.step = int(state["step"])
        self.health.skipped_total.fill_(int(state["nonfinite_total"]))
        self.health.weights_changed()
        self.techniques.call("prx_load_state_dict", states=state.get("techniques", {}))

