"""The two ways ranks talk: Horovod and torch.distributed, behind one small interface.

`distributed` calls a backend for everything it needs between ranks: start, rank numbers,
object broadcast and gather, tensor broadcast and reductions, and gradient averaging. A
backend is chosen from the launcher's environment (`chosen`): torchrun sets
TORCHELASTIC_RUN_ID, horovodrun and mpirun their own variables. Horovod is imported only
when it is used, so the torch.distributed path runs where Horovod did not build.

Gradient averaging is the same arithmetic on both: every rank's gradients summed, then
divided by the number of ranks (in fp16 on the wire with `compression: fp16`). With two
ranks a + b is exact to the bit whichever rank adds, so both give the same weights.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import socket
import types
from typing import Any, Callable, Iterator

import torch
import torch.distributed as tdist

#: environment variables that say a launcher started several ranks, by launcher
WORLD_VARIABLES = {"torchrun": "WORLD_SIZE", "horovodrun (Gloo)": "HOROVOD_SIZE",
                   "mpirun (Open MPI)": "OMPI_COMM_WORLD_SIZE", "mpirun (MPICH, Intel MPI)": "PMI_SIZE"}


def chosen(setting: str) -> str:
    """`engine.backend`: horovod or torch as set; auto: torch under torchrun or where
    Horovod is not installed (set-up could not build it), else Horovod."""
    if setting != "auto":
        return setting
    return "torch" if "TORCHELASTIC_RUN_ID" in os.environ or not horovod_installed() else "horovod"


def horovod_installed() -> bool:
    """Whether Horovod's torch module imports (it loads the compiled library)."""
    try:
        importlib.import_module("horovod.torch")
    except ImportError:
        return False
    return True


def launched_size() -> tuple[int, str] | None:
    """(ranks, launcher) when the environment says this process is one of several."""
    for launcher, variable in WORLD_VARIABLES.items():
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 1:
            return int(value), launcher
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Horovod:
    name = "horovod"
    ends_without_teardown = False  # Horovod shuts its background thread down at exit

    def __init__(self) -> None:
        try:
            import horovod.torch as hvd
        except ImportError as exc:
            raise RuntimeError(f"Horovod is not installed in this environment ({exc}); set-up could not build it: "
                               "launch with torchrun (engine.backend: torch), or see docs/setup.md") from None
        self.hvd = hvd

    def start(self, timeout: float) -> tuple[int, int, int, int]:
        self.hvd.init()
        return self.hvd.rank(), self.hvd.size(), self.hvd.local_rank(), self.hvd.local_size()

    def started(self) -> bool:
        return self.hvd.is_initialized()

    def rank(self) -> int:
        return self.hvd.rank()

    def broadcast_object(self, obj: Any, name: str) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        return self.hvd.allgather_object(obj, name=name)

    def broadcast_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.hvd.broadcast_parameters(tensors, root_rank=0)

    def allreduce(self, tensor: torch.Tensor, op: str, name: str) -> torch.Tensor:
        """`op`: mean or max, on a copy."""
        return self.allreduce_async(tensor, op, name)()

    def allreduce_async(self, tensor: torch.Tensor, op: str, name: str) -> Callable[[], torch.Tensor]:
        """`allreduce` started now; the returned call waits for it and gives the result."""
        handle = self.hvd.allreduce_async(tensor.detach(), op=self.hvd.Average if op == "mean" else self.hvd.Max,
                                          name=name)
        return lambda: self.hvd.synchronize(handle)

    def optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, compression: str,
                  passes: int) -> torch.optim.Optimizer:
        methods = {"none": self.hvd.Compression.none, "fp16": self.hvd.Compression.fp16}
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                             op=self.hvd.Average, compression=methods[compression],
                                             backward_passes_per_step=passes)

    def peer_failed(self, exc: BaseException) -> bool:
        from horovod.common.exceptions import HorovodInternalError
        return isinstance(exc, HorovodInternalError)


class TorchDistributed:
    """torch.distributed over the env:// rendezvous torchrun sets up: gloo on CPU, NCCL on
    CUDA.

    `ends_without_teardown`: a gloo worker thread drops its reference to a finished
    collective's tensors just after the caller is told the collective is done. When that
    is the last reference to a tensor Python made, the thread must take the GIL; if Python
    is finalizing by then, the thread is cancelled inside a noexcept C++ destructor and
    the process aborts ("terminate called without an active exception", SIGABRT) after
    its work is done, and torchrun reports the job as failed. destroy_process_group()
    would join those threads, but it cannot free the group once an optimizer exists
    (torch keeps references to it), so the process ends with os._exit instead.
    """
    name = "torch"
    ends_without_teardown = True

    def __init__(self, on_cpu: bool) -> None:
        self.on_cpu = on_cpu

    def start(self, timeout: float) -> tuple[int, int, int, int]:
        if "TORCHELASTIC_RUN_ID" not in os.environ and "MASTER_ADDR" not in os.environ:
            os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                               "WORLD_SIZE": "1"})  # one process without a launcher
        if not tdist.is_initialized():
            wait = datetime.timedelta(seconds=timeout) if timeout > 0 else None
            tdist.init_process_group("gloo" if self.on_cpu else "nccl", timeout=wait)
        size = tdist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
        return tdist.get_rank(), size, *local

    def started(self) -> bool:
        return tdist.is_initialized()

    def rank(self) -> int:
        return tdist.get_rank()

    def broadcast_object(self, obj: Any, name: str) -> Any:
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        found: list[Any] = [None] * tdist.get_world_size()
        tdist.all_gather_object(found, obj)
        return found

    def broadcast_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for _, tensor in sorted(tensors.items()):
            tdist.broadcast(tensor.data, src=0)

    def allreduce(self, tensor: torch.Tensor, op: str, name: str) -> torch.Tensor:
        """`op`: mean or max, on a copy (gloo has no average: a sum, then / ranks)."""
        return self.allreduce_async(tensor, op, name)()

    def allreduce_async(self, tensor: torch.Tensor, op: str, name: str) -> Callable[[], torch.Tensor]:
        """`allreduce` started now; the returned call waits for it and gives the result."""
        out = tensor.detach().clone()
        work = tdist.all_reduce(out, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM, async_op=True)

        def result() -> torch.Tensor:
            work.wait()
            return out / tdist.get_world_size() if op == "mean" else out
        return result

    def optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, compression: str,
                  passes: int) -> torch.optim.Optimizer:
        """`optimizer` with Horovod's calls: `synchronize()` averages the gradients over
        ranks (one flat buffer, fp16 on the wire with compression), `step()` does so first
        unless inside `skip_synchronize()`. The trainer synchronizes once per `passes`
        backward passes, as Horovod's `backward_passes_per_step` does."""
        size = tdist.get_world_size()

        def synchronize() -> None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if not grads:
                return
            flat = torch.cat([g.reshape(-1) for g in grads])
            wire = flat.half() if compression == "fp16" else flat
            tdist.all_reduce(wire)
            flat = wire.to(flat.dtype) / size
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

        skipping = []
        plain_step = optimizer.step

        @contextlib.contextmanager
        def skip_synchronize() -> Iterator[None]:
            skipping.append(True)
            try:
                yield
            finally:
                skipping.pop()

        def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            """As Horovod's: the gradients are averaged first, unless already done. A bound
            method, as the learning-rate schedulers that wrap `step` expect."""
            if not skipping:
                synchronize()
            return plain_step(*args, **kwargs)

        optimizer.synchronize, optimizer.skip_synchronize = synchronize, skip_synchronize
        optimizer.step = types.MethodType(step, optimizer)
        return optimizer

    def peer_failed(self, exc: BaseException) -> bool:
        """gloo and NCCL end a collective whose peer left with a DistBackendError, or (some
        paths) a RuntimeError saying the connection closed."""
        return isinstance(exc, tdist.DistBackendError) or (
            isinstance(exc, RuntimeError) and any(w in str(exc) for w in ("Connection closed by peer",
                                                                          "Connection reset by peer")))
