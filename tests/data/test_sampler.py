"""The training sampler: a new permutation each epoch, an exact skip of the consumed samples, equal rank shares."""

import pytest
from torch.utils.data import DistributedSampler

from gnr650.data.sampler import ResumableSampler, per_rank_batch_size


def _epoch(sampler: ResumableSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_different_permutation_drawn_from_seed_and_epoch_alone():
    sampler = ResumableSampler(50, seed=3)
    orders = [_epoch(sampler, e) for e in range(3)]
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert len({tuple(order) for order in orders}) == 3
    assert _epoch(ResumableSampler(50, seed=3), 1) == orders[1]  # a restarted run sees the same order
    assert _epoch(ResumableSampler(50, seed=4), 1) != orders[1]
    assert _epoch(ResumableSampler(50, shuffle=False), 2) == list(range(50))


@pytest.mark.parametrize("seed,epoch", [(0, 0), (0, 3), (5, 1), (7, 0)])
def test_order_is_torchs_distributed_sampler_order(seed, epoch):
    """The order Lightning's default sampler gives for the same seed and epoch (seed 0 when none is given)."""
    reference = DistributedSampler(range(40), num_replicas=1, rank=0, shuffle=True, seed=seed)
    reference.set_epoch(epoch)
    ours = ResumableSampler(40, seed=seed) if seed else ResumableSampler(40)
    assert _epoch(ours, epoch) == list(reference)


@pytest.mark.parametrize("done", [0, 1, 17, 49, 50])
def test_skip_drops_exactly_the_consumed_samples_of_the_next_pass_only(done):
    sampler = ResumableSampler(50, seed=0)
    full = _epoch(sampler, 2)
    sampler.skip(done)
    assert list(sampler) == full[done:]
    assert list(sampler) == full  # the pass after is whole again


@pytest.mark.parametrize("size,world", [(12, 3), (10, 3), (7, 4)])
def test_ranks_take_equal_interleaved_shares_of_the_single_process_order(size, world):
    whole = _epoch(ResumableSampler(size, seed=1), 1)
    shares = [_epoch(ResumableSampler(size, seed=1, num_replicas=world, rank=r), 1) for r in range(world)]
    per_rank = -(-size // world)
    assert [len(s) for s in shares] == [per_rank] * world
    assert all(len(ResumableSampler(size, num_replicas=world, rank=r)) == per_rank for r in range(world))
    padded = (whole * 2)[: per_rank * world]  # padding repeats the first indices so that every rank steps equally
    assert [shares[k % world][k // world] for k in range(per_rank * world)] == padded
    firsts = [i for s in shares for i in s[: size // world]]
    assert len(set(firsts)) == len(firsts)  # disjoint, padding aside
    assert set().union(*shares) == set(range(size))


@pytest.mark.parametrize("size,world", [(10, 3), (7, 4)])
def test_evaluation_shares_see_every_sample_exactly_once(size, world):
    shares = [list(ResumableSampler(size, shuffle=False, num_replicas=world, rank=r, pad=False)) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(size))
    assert [
        len(ResumableSampler(size, shuffle=False, num_replicas=world, rank=r, pad=False)) for r in range(world)
    ] == [len(s) for s in shares]


@pytest.mark.parametrize("batch_size,world,share", [(64, 1, 64), (64, 4, 16), (6, 3, 2)])
def test_global_batch_is_shared_equally_by_the_processes(batch_size, world, share):
    result = per_rank_batch_size(batch_size, world)
    assert result == share and isinstance(result, int)  # a DataLoader needs an int


def test_global_batch_that_does_not_divide_is_refused_naming_the_settings():
    with pytest.raises(ValueError, match=r"batch_size=10 .* 4 DDP processes \(trainer.devices x trainer.num_nodes\)"):
        per_rank_batch_size(10, 4)
