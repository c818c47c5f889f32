"""The Horovod trainer: data-parallel epochs, evaluation, checkpoints, resume, TensorBoard."""
from __future__ import annotations

import itertools
import math
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from quantlab.engine import checkpoint, distributed as dist, preflight
from quantlab.engine.errors import CheckpointError, QuantlabError, TrainingError, shared
from quantlab.engine.health import diverged
from quantlab.engine.logbook import Logbook
from quantlab.engine.meters import MeanMeter
from quantlab.engine.optim import build_optimizer, build_schedule, lr_scale, rescale_lr
from quantlab.engine.task import Task, to_device
from quantlab.metrics.cost import cost_report
from quantlab.metrics.size import size_report
from quantlab.quant import calibration, export, qat, reference
from quantlab.quant.editing import rebuild
from quantlab.quant.qdq import export_onnx
from quantlab.sensitivity.fisher import fisher_penalty, trainable_weights

FORMAT = "quantlab/1"


class Trainer:
    """Owns the model, optimizer and every stateful piece of one experiment."""

    def __init__(self, task: Task, cfg: dict, world: dist.World, logbook: Logbook,
                 device: torch.device, init: Path | None = None, resume: Path | None = None) -> None:
        """`init`: weights to start from (float or partly quantized: the layers a quantlab
        checkpoint records are rebuilt first, then the config's recipe quantizes the rest
        from the loaded weights, which is how MQAT stages follow one another).
        `resume`: the checkpoint a continued run will restore; only its structure is read
        here, so the optimizer is built over the right parameters."""
        self.task, self.cfg, self.world, self.logbook, self.device = task, cfg, world, logbook, device
        self.train_cfg = cfg["training"]
        torch.manual_seed(cfg["seed"] + world.rank)  # ranks differ until the broadcast
        self.model = task.build_network()
        controllers: dict[str, Any] = {}
        self.quant_layers: list[dict] = []
        if init is not None:
            self._load_weights(init)  # every rank: a file may change the architecture
        if qat.enabled(cfg["quantize"]):
            layers, controllers = qat.quantize_model(self.model, cfg["quantize"], task.groups)
            self.quant_layers += layers
        if resume is not None:
            self.quant_layers += rebuild(self.model, checkpoint.load(resume).get("quant_layers", []))
        self.model.to(device)
        base = build_optimizer(list(self.model.named_parameters()), self.train_cfg, world.size,
                               cfg["engine"]["lr_scaling"])
        self.optimizer = dist.distributed_optimizer(base, self.model)
        self.schedule = build_schedule(self.optimizer, self.train_cfg,
                                       [int(e) for e in cfg["quantize"]["inq_schedule"]])
        self.controllers = controllers
        self.stateful: dict[str, Any] = {"schedule": self.schedule, **controllers}
        self.epoch = 0
        self.best: float | None = None
        self.eval_due = False  # the last saved epoch awaits its evaluation
        self._probe: dict | None = None
        self.tb = SummaryWriter(str(logbook.stats)) if world.is_main else None

    def quant_report(self) -> dict | None:
        """Quantized layers, weight size and BOPs of the current model (None for a float one)."""
        if not self.quant_layers:
            return None
        batch = to_device(self.task.example_batch(), self.device)
        return {"layers": self.quant_layers, "size": size_report(self.model),
                "cost": cost_report(self.model, lambda m: self.task.forward(m, batch))}

    # state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "best": self.best,
            "eval_due": self.eval_due,
            "world_size": self.world.size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stateful": {k: v.state_dict() for k, v in self.stateful.items()},
            "quant_layers": self.quant_layers,
        }

    def restore(self, state: dict[str, Any], source: str) -> None:
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a quantlab training checkpoint (format {state.get('format')!r})")
        checkpoint.load_matching(self.model, state["model"], source)
        optimizer, stateful = state["optimizer"], state["stateful"]
        saved = state.get("world_size") or len(state.get("rank_digests") or []) or self.world.size
        if saved != self.world.size:
            optimizer, stateful = self._rescaled(optimizer, stateful, saved, source)
        self.optimizer.load_state_dict(optimizer)
        for name, obj in self.stateful.items():
            if name not in stateful:
                raise CheckpointError(f"{source}: checkpoint has no state for '{name}'")
            obj.load_state_dict(stateful[name])
        self.epoch, self.best = state["epoch"], state["best"]
        self.eval_due = state.get("eval_due", False)

    def _rescaled(self, optimizer: dict, stateful: dict, saved: int, source: str) -> tuple[dict, dict]:
        """Optimizer and schedule states of a `saved`-rank run for this world size: every lr
        times the change of `engine.lr_scaling`'s factor (x ranks under `linear`)."""
        scaling, batch = self.cfg["engine"]["lr_scaling"], self.train_cfg["batch_size"]
        ratio = lr_scale(scaling, self.world.size) / lr_scale(scaling, saved)
        self._say(f"{source}: saved by a {saved}-rank run, resumed on {self.world.size}: the global batch is "
                  f"{batch * self.world.size} instead of {batch * saved}, "
                  + (f"so the lr is rescaled x{ratio:g} (engine.lr_scaling {scaling}); " if ratio != 1 else
                     f"the lr is kept (engine.lr_scaling {scaling}); ")
                  + f"the run will not repeat an uninterrupted {saved}-rank run")
        if ratio == 1:
            return optimizer, stateful
        return rescale_lr(optimizer, ratio), {**stateful, "schedule": rescale_lr(stateful["schedule"], ratio)}

    def sync(self) -> None:
        """Rank 0's full training state on every rank (start and after resume)."""
        dist.broadcast_training_state(self.model, self.optimizer, self.stateful)
        self.epoch, self.best, self.eval_due = dist.broadcast_object((self.epoch, self.best, self.eval_due),
                                                                     "trainer.meta")

    def resume(self) -> None:
        """Restore `last.pt` on rank 0 (the others receive it at `sync`); a failure is
        reported by rank 0 and ends every rank."""
        def restore() -> None:
            path = self.logbook.resolve("last")
            self.restore(checkpoint.load(path), str(path))
        dist.on_main(self.world, "trainer.resume", restore)

    # training ------------------------------------------------------------------------------
    def train_loader(self) -> tuple[Any, DistributedSampler, DataLoader]:
        data = self.task.dataset("train", train=True)
        sampler = DistributedSampler(data, num_replicas=self.world.size, rank=self.world.rank,
                                     shuffle=True, seed=self.cfg["seed"], drop_last=True)
        loader = DataLoader(data, batch_size=self.train_cfg["batch_size"], sampler=sampler,
                            collate_fn=self.task.collate, num_workers=self.cfg["engine"]["workers"],
                            drop_last=True)
        return data, sampler, loader

    def calibrate(self) -> None:
        """Fix the ranges of activation quantizers still calibrating, from the first
        `quantize.calibration_batches` training batches of every rank (ranks combine)."""
        if not calibration.pending(self.model):
            return
        data, sampler, loader = self.train_loader()
        sampler.set_epoch(self.epoch)
        data.set_epoch(self.epoch)
        count = self.cfg["quantize"]["calibration_batches"]
        batches = (to_device(b, self.device) for b in itertools.islice(loader, count))
        quantizers = len(calibration.pending(self.model))
        used = calibration.calibrate(self.model, batches, self.task.forward, dist.allreduce_statistic)
        self._say(f"calibrated {quantizers} activation quantizers on {used} batches per rank")

    def fit(self) -> dict[str, float] | None:
        self.sync()
        preflight.training_split(self.task, self.train_cfg["batch_size"], self.world)
        self.calibrate()
        data, sampler, loader = self.train_loader()
        metrics = None
        if self.eval_due:  # resumed after a run that saved its last epoch but did not evaluate it
            metrics = self._evaluate(self.epoch - 1, self._snapshot(self.epoch - 1))
        for epoch in range(self.epoch, self.train_cfg["epochs"]):
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
            self._log(epoch, terms, metrics, seconds, len(loader) * self.train_cfg["batch_size"] * self.world.size)
        return metrics

    def _train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        self.model.train()
        meter = MeanMeter()
        clip = self.train_cfg["grad_clip"]
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.train_cfg['epochs']}",
                   disable=not self.world.is_main, leave=False, dynamic_ncols=True, mininterval=1.0)
        for step, batch in enumerate(bar):
            batch = to_device(batch, self.device)
            outputs = self.task.forward(self.model, batch)
            terms = self.task.loss(outputs, batch)
            weight = self.cfg["quantize"]["fisher_regularizer"]
            if weight > 0:  # lambda Tr(F) of the critical loss, from its squared batch gradient
                critical = sum(self.task.critical_loss(outputs, batch).values())
                terms["fisher"] = weight * fisher_penalty(trainable_weights(self.model), critical)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                raise TrainingError(f"non-finite loss at epoch {epoch + 1}, batch {step}: {values}")
            self.optimizer.zero_grad()
            loss.backward()
            with dist.waiting(f"gradients, epoch {epoch + 1} batch {step}"):
                self.optimizer.synchronize()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            with self.optimizer.skip_synchronize():
                self.optimizer.step()
            for controller in self.controllers.values():
                controller.after_step(self.optimizer)
            meter.update(terms, len(batch["index"]))
            if self.world.is_main:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        self.schedule.step()
        return dist.allreduce_mean(meter.means(), name=f"train.terms.{epoch}")

    def _evaluates(self, epoch: int) -> bool:
        every = self.cfg["engine"]["eval_every"]
        return epoch + 1 == self.train_cfg["epochs"] or (every > 0 and (epoch + 1) % every == 0)

    def _snapshot(self, epoch: int) -> dict[str, Any]:
        """The state to save after `epoch`, once the ranks agree and the model is sound."""
        digests = dist.allgather_object(dist.state_digest(self.model), name=f"digest.{epoch}")
        if len(set(digests)) != 1:
            raise shared(TrainingError(f"ranks diverged after epoch {epoch + 1}: model digests {digests}"))
        if self._probe is None:
            self._probe = to_device(self.task.example_batch(), self.device)
        why = diverged(self.model, lambda m: self.task.forward(m, self._probe))
        if why is not None:
            raise shared(TrainingError(f"the model diverged in epoch {epoch + 1}: {why}; it is not saved and the "
                                       "last checkpoint stays (lower training.lr or set training.grad_clip)"))
        return {**self.state(), "metrics": None, "rank_digests": digests}

    def _save(self, epoch: int, state: dict[str, Any], is_best: bool) -> None:
        every = self.cfg["engine"]["save_every"]
        self.logbook.save(state, epoch + 1, keep_numbered=every > 0 and (epoch + 1) % every == 0, is_best=is_best)

    def _evaluate(self, epoch: int, state: dict[str, Any]) -> dict[str, float]:
        """Evaluate the saved epoch, then save it again with its metrics (and as best)."""
        last = epoch + 1 == self.train_cfg["epochs"]
        metrics = self.evaluate(self.cfg["engine"]["eval_split"], f"epoch_{epoch + 1:04d}", quiet=not last)
        value = metrics[self.task.best_metric]
        is_best = self.best is None or value > self.best
        if is_best:
            self.best = value
        self.eval_due = False
        self._save(epoch, {**state, "best": self.best, "eval_due": False, "metrics": metrics}, is_best)
        return metrics

    def _log(self, epoch: int, terms: dict[str, float], metrics: dict | None, seconds: float,
             images: int) -> None:
        if not self.world.is_main:
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
        shown = f" {self.task.best_metric}={metrics[self.task.best_metric]:.2f}" if metrics else ""
        loss = " ".join(f"{k}={v:.4f}" for k, v in terms.items())
        print(f"epoch {step}/{self.train_cfg['epochs']}: {loss} ({seconds:.1f}s, "
              f"{images / seconds:.1f} img/s, peak {peak:.0f} MiB){shown}", flush=True)

    # evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, tag: str, quiet: bool = False) -> dict[str, float]:
        """Predict on this rank's shard, gather every rank's predictions, score on rank 0."""
        data = self.task.dataset(split, train=False)
        batches = dist.shard_batches(len(data), self.cfg["evaluation"]["batch_size"], self.world)
        loader = DataLoader(data, batch_sampler=batches, collate_fn=self.task.collate,
                            num_workers=self.cfg["engine"]["workers"])
        self.model.eval()
        predictions: list[dict] = []
        for batch in tqdm(loader, desc=f"eval {split}", disable=not self.world.is_main, leave=False,
                          mininterval=1.0):
            batch = to_device(batch, self.device)
            predictions += self.task.predict(self.task.forward(self.model, batch), batch)
        gathered = dist.allgather_object(predictions, name=f"eval.{tag}")
        metrics = None
        if self.world.is_main:
            merged = sorted((p for part in gathered for p in part), key=lambda p: p["index"])
            metrics = self.task.evaluate(merged, data)
            self.logbook.write_metrics(tag, metrics)
            table = self.task.report(metrics, self.logbook.eval_dir(tag))
            if not quiet:
                print(f"\n{split} split, {tag}:\n{table}", flush=True)
        return dist.broadcast_object(metrics, name=f"eval.metrics.{tag}")

    def load_for_test(self, spec: str) -> str:
        """Load `last`/`best`/N/a path on every rank: our checkpoints, integer exports, the
        MQAT reference layout (which may add INQ layers) or a public weights layout."""
        path = self.logbook.resolve(spec)
        self._load_weights(path)
        return str(path)

    def _load_weights(self, path: Path) -> None:
        """Every rank reads the same file, so a failure is the same error on each."""
        try:
            self._read_weights(path)
        except QuantlabError as exc:
            raise shared(exc)

    def _read_weights(self, path: Path) -> None:
        state = checkpoint.load(path)
        if state.get("format") == FORMAT:
            self.quant_layers += rebuild(self.model, state.get("quant_layers", []))
            checkpoint.load_matching(self.model, state["model"], str(path))
            return
        if state.get("format") == export.FORMAT:
            export.load_integer(self.model, state, str(path))
            return
        if reference.is_reference(state):
            state, inq, copies = reference.convert(state, self.task.reference_prefix, str(path))
            self.quant_layers += reference.quantize_like(self.model, inq, str(path))
            self._say(f"{path}: MQAT reference layout, {len(inq)} INQ layers "
                  f"({', '.join(sorted({f'{b}-bit' for b in inq.values()}))}), "
                  f"{len(copies)} duplicated keys outside {self.task.reference_prefix!r} dropped")
        dropped = self.task.load_weights(self.model, state, str(path))
        if dropped:
            self._say(f"{path}: ignored {len(dropped)} keys the network derives or does not use "
                  f"({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''})")

    def export(self, folder: Path) -> dict[str, int]:
        """Write `model_int.pt` (integer codes + scales) and `model.onnx` (Q/DQ pairs) into
        `folder`; returns their sizes in bytes. Main rank only."""
        if not self.quant_layers:
            raise CheckpointError("export needs a quantized model (quantize.rules is empty)")
        self.model.eval()
        sizes = {"model_int.pt": export.export_integer(self.model, folder / "model_int.pt", self.quant_layers)}
        inputs = self.task.export_inputs(to_device(self.task.example_batch(), self.device))
        export_onnx(self.model, tuple(inputs.values()), folder / "model.onnx", list(inputs))
        sizes["model.onnx"] = (folder / "model.onnx").stat().st_size
        return sizes

    def _say(self, message: str) -> None:
        if self.world.is_main:
            print(message, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
