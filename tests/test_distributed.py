"""Rank-0 state broadcast and evaluation shards, in a one-rank Horovod world."""
import torch
from torch import nn

from quantlab.engine import distributed as dist
from quantlab.engine.loaders import pin_memory


def test_broadcasting_a_fresh_optimizer_leaves_the_weights_alone():
    # Horovod's broadcast_optimizer_state fills an empty state by a zero-gradient step,
    # which with weight decay 0.5 and lr 1 would halve every weight
    world = dist.init(1)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = dist.state_digest(model)
    for optimizer in (torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.5),
                      torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=0.5)):
        dist.broadcast_training_state(model, optimizer, {})
        assert dist.state_digest(model) == before and not optimizer.state_dict()["state"]
    assert world.size == 1


class Counter:
    """A stateful object as the trainer registers them (state_dict / load_state_dict)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def _trained() -> tuple[nn.Linear, torch.optim.AdamW, torch.optim.lr_scheduler.StepLR]:
    """A linear model, AdamW with weight decay and a StepLR, one step into training."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _step(model, optimizer, scheduler)
    return model, optimizer, scheduler


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    optimizer.zero_grad()
    model(torch.ones(1, 3)).square().sum().backward()
    optimizer.step()
    scheduler.step()


def test_a_one_rank_broadcast_gives_each_object_its_own_state_and_training_goes_on_unchanged():
    """On one rank rank 0's state is this rank's own, so the broadcast must change nothing:
    each registered object gets its own state back (not another's), and the next steps
    match bitwise those of a twin that never broadcast. That rank 1 receives rank 0's
    filled optimizer and scheduler states is checked on two real processes in
    test_backends.test_a_trained_optimizer_and_scheduler_come_from_rank_0."""
    dist.init(1)
    model, optimizer, scheduler = _trained()
    twin = _trained()
    counters = {"first": Counter(3), "second": Counter(7)}
    dist.broadcast_training_state(model, optimizer, {"scheduler": scheduler, **counters})
    assert counters["first"].count == 3 and counters["second"].count == 7
    assert scheduler.last_epoch == 1 and scheduler.get_last_lr() == [0.05]
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
    for _ in range(2):
        _step(model, optimizer, scheduler)
        _step(*twin)
    assert scheduler.get_last_lr() == twin[2].get_last_lr() == [0.0125]
    for mine, theirs in zip(model.parameters(), twin[0].parameters()):
        assert torch.equal(mine, theirs)


def test_evaluation_batches_do_not_depend_on_the_number_of_ranks():
    one = dist.shard_batches(10, 3, dist.World(0, 1, 0, 1))
    two = [dist.shard_batches(10, 3, dist.World(r, 2, r, 2)) for r in range(2)]
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert two == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]


def test_engine_horovod_settings_become_the_variables_horovod_and_open_mpi_read():
    settings = {"cycle_time_ms": 2.5, "fusion_threshold_mb": 64, "mpi_wait": "auto",
                "compression": "none", "backward_passes_per_step": 1}
    assert dist.horovod_environment(settings, on_cpu=True) == {
        "HOROVOD_CYCLE_TIME": "2.5", "HOROVOD_FUSION_THRESHOLD": str(64 * 2 ** 20), "OMPI_MCA_mpi_yield_when_idle": "1"}
    unset = {**settings, "cycle_time_ms": None, "fusion_threshold_mb": None}
    assert dist.horovod_environment(unset, on_cpu=False) == {"OMPI_MCA_mpi_yield_when_idle": "0"}
    assert dist.horovod_environment({**unset, "mpi_wait": "yield"}, on_cpu=False) == {
        "OMPI_MCA_mpi_yield_when_idle": "1"}
    assert dist.horovod_environment({**unset, "mpi_wait": "spin"}, on_cpu=True) == {
        "OMPI_MCA_mpi_yield_when_idle": "0"}


def test_pinned_memory_only_for_cuda_unless_asked():
    assert not pin_memory("auto", torch.device("cpu")) and pin_memory("auto", torch.device("cuda", 0))
    assert pin_memory("always", torch.device("cpu")) and not pin_memory("never", torch.device("cuda", 0))


def test_two_accumulated_halves_step_as_one_batch_of_their_mean():
    # what the trainer relies on for engine.horovod.backward_passes_per_step: Horovod's
    # optimizer sums the k local passes (each loss / k) and steps once on their mean
    dist.init(1)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    whole, halves = nn.Linear(3, 2), nn.Linear(3, 2)
    halves.load_state_dict(whole.state_dict())
    one = dist.distributed_optimizer(torch.optim.SGD(whole.parameters(), lr=0.1), whole,
                                     {"compression": "none", "backward_passes_per_step": 1})
    two = dist.distributed_optimizer(torch.optim.SGD(halves.parameters(), lr=0.1), halves,
                                     {"compression": "none", "backward_passes_per_step": 2})
    one.zero_grad()
    nn.functional.mse_loss(whole(x), y).backward()
    one.step()
    two.zero_grad()
    for part in (slice(0, 4), slice(4, 8)):
        (nn.functional.mse_loss(halves(x[part]), y[part]) / 2).backward()
    two.step()
    for a, b in zip(whole.parameters(), halves.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
