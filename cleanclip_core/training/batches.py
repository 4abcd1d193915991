"""Which pairs each process trains on: its slice of every global batch of one process's order.

One process shuffles the pairs afresh in every epoch from the seed and the epoch, and trains on
consecutive global batches of B pairs (the last, incomplete one dropped). With W processes,
process r takes rows [r B/W, (r+1) B/W) of each of those batches, so the batch gathered in rank
order (`cleanclip_core.losses.gathered`) is the one process's batch row for row: a term that
depends on the order of the batch's rows, such as RoCLIP's first-in first-out pool, is the same.
"""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSlices(Sampler[list[int]]):
    """A batch sampler of this process's slice of each global batch of `batch_size` pairs (the
    global size) out of `n_pairs`, shuffled per epoch (`set_epoch`) from `seed`."""

    def __init__(self, n_pairs: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n_pairs, self.batch_size, self.seed = n_pairs, batch_size, seed
        self.share = batch_size // world_size
        self.start = rank * self.share
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_pairs // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        # the permutation torch's DistributedSampler draws, which single-process runs have always used
        order = torch.randperm(self.n_pairs, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for first in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[first + self.start:first + self.start + self.share]
