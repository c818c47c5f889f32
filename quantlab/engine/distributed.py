"""Ranks, wrapped once: state broadcast, gathers, reductions and per-rank data shards.

Every process path goes through one backend (quantlab.engine.backends): Horovod under
horovodrun (the default launcher), torch.distributed under torchrun. `python main.py`
without a launcher is simply a world of size 1, so the same code runs on a laptop and on
N GPUs across nodes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import torch

from quantlab.engine import backends
from quantlab.errors import ConfigError, QuantlabError, shared
from quantlab.progress import line

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Watchdog:
    """Ends this rank when one wait for the other ranks lasts longer than `timeout` s.

    A rank that is stopped (SIGSTOP), hung or dead-locked never answers, and the others
    would wait for it forever: Horovod's own stall check cannot see it, because its
    coordinator blocks in the same exchange. A rank busy on its own (rank 0 scoring an
    evaluation) keeps the others waiting too, so the timeout must exceed the longest such
    stretch. The check runs in a thread, since the main thread is blocked inside Horovod.
    """

    def __init__(self, rank: int, timeout: float) -> None:
        self.rank, self.timeout = rank, timeout
        self._since: float | None = None
        self._name = ""
        threading.Thread(target=self._watch, name="quantlab-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def waiting(self, name: str) -> Iterator[None]:
        self._since, self._name = time.monotonic(), name
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.timeout / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                line(f"error (rank {self.rank}): waited {self.timeout:g} s for the other ranks at "
                     f"'{self._name}': a rank is stopped, hung or far slower; ending the job "
                     "(engine.stall_timeout)", sys.stderr)
                os._exit(1)  # the main thread is stuck inside Horovod: nothing else can end it


_watchdog: Watchdog | None = None
_backend: backends.Horovod | backends.TorchDistributed | None = None


def horovod_environment(settings: dict, on_cpu: bool) -> dict[str, str]:
    """The variables Horovod and Open MPI read at `hvd.init()`, from `engine.horovod`.

    `mpi_wait: yield` (auto: on CPU runs) makes MPI's waits yield the core instead of spinning:
    Open MPI busy-polls when a node is not oversubscribed, and Horovod's background thread
    waits in MPI every cycle, so on a CPU node whose cores all compute, each rank's
    spinning thread takes the core its own or the other rank's compute needs (measured by
    benchmarks/horovod_scaling.py; benchmarks/README.md)."""
    env = {}
    if settings["cycle_time_ms"] is not None:
        env["HOROVOD_CYCLE_TIME"] = f"{settings['cycle_time_ms']:g}"
    if settings["fusion_threshold_mb"] is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(int(settings["fusion_threshold_mb"] * 1024 * 1024))
    wait = settings["mpi_wait"] if settings["mpi_wait"] != "auto" else ("yield" if on_cpu else "spin")
    env["OMPI_MCA_mpi_yield_when_idle"] = "1" if wait == "yield" else "0"
    return env


def init(threads: int, stall_timeout: float = 0, horovod: dict | None = None, on_cpu: bool = True,
         backend: str = "auto") -> World:
    """Start the ranks' backend (`engine.backend`; Horovod with the `engine.horovod`
    settings), fix the per-rank thread count (0 = share the node's cores) and, with several
    ranks and `stall_timeout` > 0, watch every wait for the other ranks. A process whose
    launcher says it is one of several ranks but which finds itself alone (torchrun with
    the Horovod backend, a Horovod that cannot reach its peers) is a one-line error, not a
    run of its own on the whole data."""
    global _watchdog, _backend
    name = backends.chosen(backend)
    if name == "horovod":
        if horovod is not None:
            os.environ.update(horovod_environment(horovod, on_cpu))
        try:
            _backend = backends.Horovod()
        except RuntimeError as exc:
            raise shared(ConfigError(str(exc))) from None
    else:
        _backend = backends.TorchDistributed(on_cpu)
    world = World(*_backend.start(stall_timeout))
    launched = backends.launched_size()
    if launched is not None and launched[0] != world.size:
        raise shared(ConfigError(
            f"engine.backend: {launched[1]} started {launched[0]} ranks, but the {_backend.name} backend joined "
            f"{world.size}; use engine.backend: auto (torch under torchrun, horovod under horovodrun)"))
    if threads <= 0:
        threads = max(1, (os.cpu_count() or 1) // world.local_size)
    torch.set_num_threads(threads)
    if world.size > 1 and stall_timeout > 0 and _watchdog is None:
        _watchdog = Watchdog(world.rank, stall_timeout)
    return world


def current_rank() -> int | None:
    """This process's rank once a backend has started, else None."""
    return _backend.rank() if _backend is not None and _backend.started() else None


def backend_name() -> str | None:
    """horovod or torch once started, else None."""
    return None if _backend is None else _backend.name


def exit_process(code: int) -> NoReturn:
    """End this process with `code`, skipping the interpreter's teardown where the backend
    cannot survive it (`ends_without_teardown`). Everything a run writes is closed and
    atomic by then; the standard streams are flushed here."""
    if _backend is not None and _backend.ends_without_teardown and _backend.started():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def waiting(name: str) -> contextlib.AbstractContextManager:
    """Mark a wait for the other ranks (a collective), which the watchdog times."""
    return _watchdog.waiting(name) if _watchdog is not None else contextlib.nullcontext()


def on_main(world: World, name: str, run: Callable[[], T]) -> T:
    """`run()` on rank 0 alone; its result, or the QuantlabError it raised, on every rank
    (raised there as a shared error, so it is reported once)."""
    result, error = None, None
    if world.is_main:
        try:
            result = run()
        except QuantlabError as exc:
            error = exc
    outcome, told = broadcast_object((result, error), name)
    if told is not None:
        raise error if world.is_main else shared(told)
    return result if world.is_main else outcome


def peer_failed(exc: BaseException) -> bool:
    """Whether `exc` says another rank failed or left (the backend shut its collectives
    down), rather than that this rank's own work went wrong."""
    return _backend is not None and _backend.peer_failed(exc)


def on_cpu(choice: str) -> bool:
    """Whether `engine.device` puts the run on the CPU."""
    return choice == "cpu" or (choice == "auto" and not torch.cuda.is_available())


def device_for(world: World, choice: str) -> torch.device:
    if on_cpu(choice):
        return torch.device("cpu")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def broadcast_object(obj: Any, name: str) -> Any:
    """Rank 0's `obj` on every rank."""
    with waiting(name):
        return _backend.broadcast_object(obj, name)


def allgather_object(obj: Any, name: str) -> list[Any]:
    with waiting(name):
        return _backend.allgather_object(obj, name)


def broadcast_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             stateful: dict[str, Any]) -> None:
    """Make every rank start from rank 0's parameters, optimizer and controller states.

    `stateful` maps names to objects with state_dict/load_state_dict (scheduler, quantization
    controllers, ...): each is broadcast as an object, so later issues only register theirs.
    The optimizer's state goes as an object too: Horovod's broadcast_optimizer_state takes a
    zero-gradient step to fill an empty state, and that step applies weight decay to the
    weights, so a tested checkpoint would not be the one on disk.
    """
    with waiting("state.parameters"):
        _backend.broadcast_tensors(model.state_dict())
    optimizer.load_state_dict(broadcast_object(_on_cpu(optimizer.state_dict()), name="state.optimizer"))
    for name, obj in stateful.items():
        state = broadcast_object(obj.state_dict(), name=f"state.{name}")
        obj.load_state_dict(state)


def _on_cpu(state: Any) -> Any:
    """A state dict with its tensors on the CPU, so it travels as an object between ranks
    (`Optimizer.load_state_dict` moves them back to each parameter's device)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(v) for v in state)
    return state


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks.

    Gradients are averaged every step, but running statistics are local; averaging them
    before a checkpoint makes the saved model the same on every rank.
    """
    with waiting("buffers"):
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.copy_(_backend.allreduce(buf, "mean", f"buffer.{name}"))


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                          horovod: dict) -> torch.optim.Optimizer:
    """The optimizer that averages gradients over ranks, with `engine.horovod`'s gradient
    compression and accumulation (`backward_passes_per_step` local backward passes before
    each allreduce), on either backend."""
    return _backend.optimizer(optimizer, model, horovod["compression"], horovod["backward_passes_per_step"])


def allreduce_mean(values: dict[str, float], name: str) -> dict[str, float]:
    """Average a dict of scalars over ranks (keys sorted for a stable order)."""
    return allreduce_mean_async(values, name)()


def allreduce_mean_async(values: dict[str, float], name: str) -> Callable[[], dict[str, float]]:
    """Average a dict of scalars over ranks (one float64 tensor, keys sorted for a stable
    order), started now; the returned call waits for the result. A collective started a
    batch ahead is done by the time the step needs it, so the step does not wait for it.
    Nothing to wait for when `values` is empty."""
    if not values:
        return dict
    keys = sorted(values)
    wait = _backend.allreduce_async(torch.tensor([values[k] for k in keys], dtype=torch.float64), "mean", name)

    def result() -> dict[str, float]:
        with waiting(name):
            return dict(zip(keys, wait().tolist()))
    return result


def allreduce_scalar(value: float, name: str) -> float:
    """The mean over ranks of one number each rank holds (all ranks must call it)."""
    with waiting(name):
        return float(_backend.allreduce(torch.tensor([float(value)], dtype=torch.float64), "mean", name))


def allreduce_statistic(value: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    """Combine a calibration statistic over ranks: "max" or "mean"."""
    with waiting(name):
        return _backend.allreduce(value, reduction, name)


def shard_batches(count: int, batch_size: int, world: World) -> list[list[int]]:
    """This rank's share of an evaluation set, as whole batches of consecutive indices dealt
    round-robin: every index exactly once over all ranks, and every sample always computed
    in the same batch whatever the number of ranks, so predictions do not depend on it."""
    batches = [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]
    return batches[world.rank::world.size]


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer: equal on all ranks iff they hold the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
