"""Rank-0 state broadcast and evaluation shards, in a one-rank Horovod world."""
import torch
from torch import nn

from quantlab.engine import distributed as dist


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


def test_broadcast_keeps_a_filled_optimizer_state():
    dist.init(1)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    exp_avg = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    dist.broadcast_training_state(model, optimizer, {})
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)


def test_evaluation_batches_do_not_depend_on_the_number_of_ranks():
    one = dist.shard_batches(10, 3, dist.World(0, 1, 0, 1))
    two = [dist.shard_batches(10, 3, dist.World(r, 2, r, 2)) for r in range(2)]
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert two == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]
