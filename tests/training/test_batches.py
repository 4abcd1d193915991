"""Which pairs each process trains on."""

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from cleanclip_core.training.batches import GlobalBatchSlices


def batches(sampler: GlobalBatchSlices, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("world_size", [2, 4])
def test_the_processes_slices_in_rank_order_are_one_process_batches_row_for_row(world_size):
    one = batches(GlobalBatchSlices(30, 8, seed=3), epoch=2)
    ranks = [batches(GlobalBatchSlices(30, 8, 3, rank, world_size), epoch=2) for rank in range(world_size)]
    assert [sum(slices, []) for slices in zip(*ranks)] == one
    assert len(one) == 3 and all(len(batch) == 8 for batch in one)  # the incomplete last batch dropped
    assert batches(GlobalBatchSlices(30, 8, seed=3), epoch=3) != one  # shuffled afresh every epoch


def test_one_process_keeps_the_batches_of_torchs_distributed_sampler_that_stored_runs_used():
    sampler = DistributedSampler(range(30), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    sampler.set_epoch(2)
    stored = [batch.tolist() for batch in DataLoader(range(30), 8, sampler=sampler, drop_last=True)]
    assert batches(GlobalBatchSlices(30, 8, seed=3), epoch=2) == stored
