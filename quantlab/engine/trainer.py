"""The Horovod training loop: data-parallel epochs, checkpoints, resume, TensorBoard.

What a run quantizes, which controllers and loss terms it registers, and how it reads a
checkpoint come from the library (quantlab.quant.qat, quantlab.engine.checkpoint); the
loop itself knows no method.
"""
from __future__ import annotations

import itertools
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from quantlab.engine import checkpoint, distributed as dist, preflight
from quantlab.engine.autocompile import StepClock, choose
from quantlab.engine.context import RunContext
from quantlab.engine.evaluation import evaluate
from quantlab.engine.health import diverged
from quantlab.engine.loaders import train_loader
from quantlab.engine.meters import MeanMeter
from quantlab.engine.optim import build_optimizer, build_schedule, lr_scale, rescale_lr
from quantlab.engine.task import Batch, to_device
from quantlab.errors import CheckpointError, QuantlabError, TrainingError, shared
from quantlab.progress import line, progress
from quantlab.quant import calibration, qat
from quantlab.quant.editing import rebuild


def epoch_tag(epoch: int) -> str:
    """The evaluation tag of the model after `epoch` epochs (its `eval/` folder)."""
    return f"epoch_{epoch:04d}"


def read_weights(ctx: RunContext, model: torch.nn.Module, path: Path) -> list[dict]:
    """Load `path` into `model` on every rank (the same file, so a failure is the same
    error on each); say what the reader dropped or re-derived; return the report rows of
    the layers the file quantized."""
    try:
        rows, notes = checkpoint.read_weights(model, path, ctx.task)
    except QuantlabError as exc:
        raise shared(exc)
    for note in notes:
        ctx.say(note)
    return rows


@dataclass(frozen=True)
class TrainerSettings:
    """Every setting the trainer reads, named (detectron2's `from_config`): a test builds
    one by hand, a run from its configuration."""
    seed: int
    epochs: int
    batch_size: int
    grad_clip: float
    #: the optimizer, lr and schedule keys (quantlab.engine.optim reads them: the `training` section)
    optimization: dict
    lr_scaling: str
    #: `engine.horovod`: compression and backward passes per step
    horovod: dict
    #: the `quantize` section: the recipe, calibration, schedules and loss terms
    quantize: dict
    #: `engine.compile`: True, False or "auto" (quantlab.engine.autocompile)
    compile: bool | str
    eval_every: int
    save_every: int
    eval_split: str
    select_split: str
    #: start the all-reduce of a batch's loss counts (Task.loss_counts) a batch ahead
    counts_ahead: bool = True
    #: the compile time `engine.compile: auto` weighs against the run's remaining time
    compile_seconds: float = 120.0

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainerSettings":
        train, engine = cfg["training"], cfg["engine"]
        return cls(seed=cfg["seed"], epochs=train["epochs"], batch_size=train["batch_size"],
                   grad_clip=train["grad_clip"], optimization=train, lr_scaling=engine["lr_scaling"],
                   horovod=engine["horovod"], quantize=cfg["quantize"], compile=engine["compile"],
                   eval_every=engine["eval_every"], save_every=engine["save_every"],
                   eval_split=engine["eval_split"], select_split=engine["select_split"],
                   counts_ahead=engine["counts_ahead"], compile_seconds=engine["compile_seconds"])


class Trainer:
    """Owns the model, optimizer and every stateful piece of one experiment."""

    def __init__(self, ctx: RunContext, init: Path | None = None, resume: Path | None = None,
                 settings: TrainerSettings | None = None) -> None:
        """`init`: weights to start from (float or partly quantized: the layers a quantlab
        checkpoint records are rebuilt first, then the config's recipe quantizes the rest
        from the loaded weights, which is how MQAT stages follow one another).
        `resume`: the checkpoint a continued run will restore; only its structure is read
        here, so the optimizer is built over the right parameters. `settings`: by default
        the run's configuration's."""
        self.ctx = ctx
        task, world = ctx.task, ctx.world
        self.settings = settings = settings or TrainerSettings.from_config(ctx.cfg)
        torch.manual_seed(settings.seed + world.rank)  # ranks differ until the broadcast
        self.model = task.build_network()
        self.quant_layers: list[dict] = []
        if init is not None:
            self.quant_layers += read_weights(ctx, self.model, init)  # every rank: a file may change the architecture
        controllers: dict[str, Any] = {}
        if qat.enabled(settings.quantize):
            layers, controllers = qat.quantize_model(self.model, settings.quantize, task.patterns)
            self.quant_layers += layers
        if resume is not None:
            self.quant_layers += rebuild(self.model, checkpoint.load(resume).get("quant_layers", []))
        self.terms = qat.loss_terms(settings.quantize, getattr(task, "critical_loss", None))
        self.model.to(ctx.device)
        base = build_optimizer(list(self.model.named_parameters()), settings.optimization, world.size,
                               settings.lr_scaling)
        self.optimizer = dist.distributed_optimizer(base, self.model, settings.horovod)
        self.schedule = build_schedule(self.optimizer, settings.optimization,
                                       [int(e) for e in settings.quantize["inq_schedule"]])
        self.controllers = controllers
        self.stateful: dict[str, Any] = {"schedule": self.schedule, **controllers}
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.eval_due = False  # the last saved epoch awaits its evaluation
        self._probe: dict | None = None
        self._compiling = False  # compiled, and the first step (which compiles) is still to come
        #: whether the model is compiled: the setting, or engine.compile auto's choice once made
        self.compiled: bool | None = settings.compile if isinstance(settings.compile, bool) else None
        self._clock = StepClock()  # the run's first steps, for engine.compile auto
        self.tb = SummaryWriter(str(ctx.logbook.stats)) if world.is_main else None

    # state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT,
            "epoch": self.epoch,
            "best": self.best,
            "eval_due": self.eval_due,
            "compiled": self.compiled,
            "world_size": self.ctx.world.size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stateful": {k: v.state_dict() for k, v in self.stateful.items()},
            "quant_layers": self.quant_layers,
        }

    def restore(self, state: dict[str, Any], source: str) -> None:
        if state.get("format") != checkpoint.FORMAT:
            raise CheckpointError(f"{source}: not a quantlab training checkpoint (format {state.get('format')!r})")
        checkpoint.load_matching(self.model, state["model"], source)
        optimizer, stateful = state["optimizer"], state["stateful"]
        saved = state.get("world_size") or len(state.get("rank_digests") or []) or self.ctx.world.size
        if saved != self.ctx.world.size:
            optimizer, stateful = self._rescaled(optimizer, stateful, saved, source)
        self.optimizer.load_state_dict(optimizer)
        for name, obj in self.stateful.items():
            if name not in stateful:
                raise CheckpointError(f"{source}: checkpoint has no state for '{name}'")
            obj.load_state_dict(stateful[name])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state.get("best_epoch")
        self.eval_due = state.get("eval_due", False)
        if self.settings.compile == "auto":  # a resumed run keeps the choice its start made
            self.compiled = state.get("compiled")

    def _rescaled(self, optimizer: dict, stateful: dict, saved: int, source: str) -> tuple[dict, dict]:
        """Optimizer and schedule states of a `saved`-rank run for this world size: every lr
        times the change of `engine.lr_scaling`'s factor (x ranks under `linear`)."""
        size, scaling, batch = self.ctx.world.size, self.settings.lr_scaling, self.settings.batch_size
        ratio = lr_scale(scaling, size) / lr_scale(scaling, saved)
        self.ctx.say(f"{source}: saved by a {saved}-rank run, resumed on {size}: the global batch is "
                     f"{batch * size} instead of {batch * saved}, "
                     + (f"so the lr is rescaled x{ratio:g} (engine.lr_scaling {scaling}); " if ratio != 1 else
                        f"the lr is kept (engine.lr_scaling {scaling}); ")
                     + f"the run will not repeat an uninterrupted {saved}-rank run")
        if ratio == 1:
            return optimizer, stateful
        return rescale_lr(optimizer, ratio), {**stateful, "schedule": rescale_lr(stateful["schedule"], ratio)}

    def sync(self) -> None:
        """Rank 0's full training state on every rank (start and after resume)."""
        dist.broadcast_training_state(self.model, self.optimizer, self.stateful)
        self.epoch, self.best, self.best_epoch, self.eval_due, self.compiled = dist.broadcast_object(
            (self.epoch, self.best, self.best_epoch, self.eval_due, self.compiled), "trainer.meta")

    def resume(self) -> None:
        """Restore `last.pt` on rank 0 (the others receive it at `sync`); a failure is
        reported by rank 0 and ends every rank."""
        def restore() -> None:
            path = self.ctx.logbook.resolve("last")
            self.restore(checkpoint.load(path), str(path))
        dist.on_main(self.ctx.world, "trainer.resume", restore)

    # training ------------------------------------------------------------------------------
    def calibrate(self) -> None:
        """Fix the ranges of activation quantizers still calibrating, from the first
        `quantize.calibration_batches` training batches of every rank (ranks combine)."""
        if not calibration.pending(self.model):
            return
        data, sampler, loader = train_loader(self.ctx, self.settings.batch_size, self.settings.seed)
        sampler.set_epoch(self.epoch)
        data.set_epoch(self.epoch)
        count = self.settings.quantize["calibration_batches"]
        batches = (to_device(b, self.ctx.device) for b in itertools.islice(loader, count))
        quantizers = len(calibration.pending(self.model))
        used = calibration.calibrate(self.model, batches, self.ctx.task.forward, dist.allreduce_statistic)
        self.ctx.say(f"calibrated {quantizers} activation quantizers on {used} batches per rank")

    def compile(self) -> None:
        """`engine.compile`: torch.compile the model in place (parameter names unchanged),
        after calibration: a compiled quantizer takes its range as calibrated. Compilation
        happens at the first step, whose time is reported."""
        self.model.compile()
        self._compiling = True

    def fit(self) -> dict[str, float] | None:
        self.sync()
        preflight.training_split(self.ctx.task, self.settings.batch_size, self.ctx.world)
        self.calibrate()
        if self.compiled:
            self.compile()
        data, sampler, loader = train_loader(self.ctx, self.settings.batch_size, self.settings.seed)
        metrics = None
        if self.eval_due:  # resumed after a run that saved its last epoch but did not evaluate it
            metrics = self._evaluate(self.epoch - 1, self._snapshot(self.epoch - 1))
        for epoch in range(self.epoch, self.settings.epochs):
            sampler.set_epoch(epoch)
            data.set_epoch(epoch)
            for controller in self.controllers.values():
                controller.on_epoch_start(epoch)
            start = time.perf_counter()
            terms = self._train_epoch(loader, epoch)
            seconds = time.perf_counter() - start
            dist.average_buffers(self.model)
            self.epoch = epoch + 1
            self.eval_due = self._evaluates(epoch)
            state = self._snapshot(epoch)
            self._save(epoch, state, is_best=False)  # before evaluating: a failed evaluation loses no epoch
            metrics = self._evaluate(epoch, state) if self.eval_due else None
            self._log(epoch, terms, metrics, seconds, len(loader) * self.settings.batch_size * self.ctx.world.size)
        return metrics

    def _train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        """One epoch; with `engine.horovod.backward_passes_per_step` k > 1, every k batches
        (and the epoch's last, shorter group) make one allreduce and one optimizer step on
        the mean of their gradients."""
        task, model = self.ctx.task, self.model
        model.train()
        meter = MeanMeter()
        clip = self.settings.grad_clip
        passes, batches = self.settings.horovod["backward_passes_per_step"], len(loader)
        bar = progress(loader, desc=f"epoch {epoch + 1}/{self.settings.epochs}", enabled=self.ctx.world.is_main)
        start = time.perf_counter()
        for step, (batch, counts) in enumerate(self._with_counts(bar)):
            first = step - step % passes
            group = min(passes, batches - first)
            batch = to_device(batch, self.ctx.device)
            outputs = task.forward(model, batch)
            averaged = counts()
            terms = task.loss(outputs, batch, across=lambda value, name: averaged[name] if name in averaged
                              else dist.allreduce_scalar(value, name))
            for name, term in self.terms.items():
                terms[name] = term(model, outputs, batch)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                raise TrainingError(f"non-finite loss at epoch {epoch + 1}, batch {step}: {values}")
            if step == first:
                self.optimizer.zero_grad()
            (loss / group).backward()
            meter.update(terms, len(batch["index"]))
            if step + 1 < first + group:
                continue
            with dist.waiting(f"gradients, epoch {epoch + 1} batch {step}"):
                self.optimizer.synchronize()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with self.optimizer.skip_synchronize():
                self.optimizer.step()
            for controller in self.controllers.values():
                controller.after_step(self.optimizer)
            if self._compiling:
                self._compiling = False
                self.ctx.say(f"torch.compile: the first step, which compiles the model, took "
                             f"{time.perf_counter() - start:.1f} s")
            if self.compiled is None:
                self._clock.add((time.perf_counter() - start) / group)
                if self._clock.ready():
                    self._choose_compile((self.settings.epochs - epoch) * batches - step - 1)
            start = time.perf_counter()
            if self.ctx.world.is_main:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        self.schedule.step()
        return dist.allreduce_mean(meter.means(), name=f"train.terms.{epoch}")

    def _choose_compile(self, steps_left: int) -> None:
        """`engine.compile: auto`, after the first steps: compile from the next step on if
        the run is long enough; every rank makes the same choice from the ranks' mean step
        time, and the checkpoints keep it for a resumed run."""
        mean = dist.allreduce_mean({"seconds": self._clock.step_seconds()}, name="autocompile.step")["seconds"]
        self.compiled, line = choose(self.settings.compile_seconds, mean, steps_left)
        self.ctx.say(line)
        if self.compiled:
            self.compile()

    def _evaluates(self, epoch: int) -> bool:
        every = self.settings.eval_every
        return epoch + 1 == self.settings.epochs or (every > 0 and (epoch + 1) % every == 0)

    def _with_counts(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Callable[[], dict]]]:
        """Each batch with the call that gives its loss counts (Task.loss_counts) averaged
        over ranks. The next batch is loaded and its all-reduce started before this one is
        yielded: every rank starts it before its step's gradients, so it is done when the
        next step asks, and a step waits only for its gradients. The numbers are those of
        the all-reduce inside the step that `engine.counts_ahead: false` keeps (the loss
        averages its counts itself). Two are in flight at once: names alternate."""
        if not self.settings.counts_ahead:
            yield from ((batch, dict) for batch in batches)
            return
        counts, held = self.ctx.task.loss_counts, None
        for step, batch in enumerate(batches):
            started = batch, dist.allreduce_mean_async(counts(batch), f"loss_counts.{step % 2}")
            if held is not None:
                yield held
            held = started
        if held is not None:
            yield held

    def _snapshot(self, epoch: int) -> dict[str, Any]:
        """The state to save after `epoch`, once the ranks agree and the model is sound."""
        digests = dist.allgather_object(dist.state_digest(self.model), name=f"digest.{epoch}")
        if len(set(digests)) != 1:
            raise shared(TrainingError(f"ranks diverged after epoch {epoch + 1}: model digests {digests}"))
        if self._probe is None:
            self._probe = to_device(self.ctx.task.example_batch(), self.ctx.device)
        why = diverged(self.model, lambda m: self.ctx.task.forward(m, self._probe))
        if why is not None:
            kept = ("the last checkpoint stays" if (self.ctx.logbook.saves / "last.pt").is_file()
                    else "no checkpoint of this run was saved before it")
            raise shared(TrainingError(f"the model diverged in epoch {epoch + 1}: {why}; it is not saved and "
                                       f"{kept} (lower training.lr or set training.grad_clip)"))
        return {**self.state(), "metrics": None, "rank_digests": digests}

    def _save(self, epoch: int, state: dict[str, Any], is_best: bool) -> None:
        every = self.settings.save_every
        self.ctx.logbook.save(state, epoch + 1, keep_numbered=every > 0 and (epoch + 1) % every == 0,
                              is_best=is_best)

    def _evaluate(self, epoch: int, state: dict[str, Any]) -> dict[str, float]:
        """Evaluate the saved epoch on the reported split (`engine.eval_split`), then save it
        again with its metrics, and as `best.pt` when the selection split
        (`engine.select_split`, evaluated too when it is another split) scores it best; with
        `none`, best.pt is the last evaluated epoch. The test split never chooses unless
        the config says so."""
        settings, metric = self.settings, self.ctx.task.best_metric
        last = epoch + 1 == settings.epochs
        metrics = self.evaluate(settings.eval_split, epoch_tag(epoch + 1), quiet=not last)
        select = settings.select_split
        if select == "none":
            value, is_best = metrics[metric], True
        else:
            chosen = metrics if select == settings.eval_split else \
                self.evaluate(select, f"{epoch_tag(epoch + 1)}_{select}", quiet=True)
            value = chosen[metric]
            is_best = self.best is None or value > self.best
        if is_best:
            self.best, self.best_epoch = value, epoch + 1
        self.eval_due = False
        self._save(epoch, {**state, "best": self.best, "best_epoch": self.best_epoch, "eval_due": False,
                           "metrics": metrics}, is_best)
        if last:
            self.ctx.say(self.selection())
        return metrics

    def selection(self) -> str:
        """Which epoch best.pt holds and what chose it, for the log."""
        select, metric = self.settings.select_split, self.ctx.task.best_metric
        if select == "none":
            return f"best.pt: the last evaluated epoch, {self.best_epoch} (engine.select_split: none)"
        return (f"best.pt: epoch {self.best_epoch}, chosen by {metric} {self.best:.2f} on the {select} split "
                f"(engine.select_split); reported above: the {self.settings.eval_split} split")

    def _log(self, epoch: int, terms: dict[str, float], metrics: dict | None, seconds: float,
             images: int) -> None:
        if self.tb is None:
            return
        step = epoch + 1
        for key, value in terms.items():
            self.tb.add_scalar(f"train/{key}", value, step)
        self.tb.add_scalar("train/loss", sum(terms.values()), step)
        self.tb.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
        self.tb.add_scalar("train/images_per_s", images / seconds, step)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.tb.add_scalar("train/peak_rss_mib", peak, step)
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"eval/{key}", value, step)
        self.tb.flush()
        best = self.ctx.task.best_metric
        shown = f" {best}={metrics[best]:.2f}" if metrics else ""
        loss = " ".join(f"{k}={v:.4f}" for k, v in terms.items())
        line(f"epoch {step}/{self.settings.epochs}: {loss} ({seconds:.1f}s, "
             f"{images / seconds:.1f} img/s, peak {peak:.0f} MiB){shown}")

    # evaluation ----------------------------------------------------------------------------
    def evaluate(self, split: str, tag: str, quiet: bool = False) -> dict[str, float]:
        return evaluate(self.ctx, self.model, split, tag, quiet)

    def load(self, path: Path) -> None:
        """Load any supported checkpoint into the model on every rank (test and export)."""
        self.quant_layers += read_weights(self.ctx, self.model, path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
