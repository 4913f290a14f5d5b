import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from utils import seed_everything, seed_worker, set_deterministic


def draw(seed):
    generator = seed_everything(seed)
    order = [batch.tolist() for batch in DataLoader(range(12), batch_size=4, shuffle=True, generator=generator)]
    return random.random(), np.random.rand(), torch.rand(3).tolist(), order


def test_same_seed_same_numbers_and_same_batch_order():
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_loader_order_depends_on_the_seed_alone():
    generator = seed_everything(3)
    first = [b.tolist() for b in DataLoader(range(12), batch_size=4, shuffle=True, generator=generator)]
    generator = seed_everything(3)
    torch.rand(100)  # the model using randomness must not change the data order
    second = [b.tolist() for b in DataLoader(range(12), batch_size=4, shuffle=True, generator=generator)]
    assert first == second


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "1", True])
def test_bad_seed_is_rejected(bad):
    with pytest.raises(ValueError, match="seed must be an int"):
        seed_everything(bad)


def test_deterministic_switch():
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(False)


class NumpyNoise(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return np.random.rand()


def test_seed_worker_makes_numpy_in_workers_reproducible():
    def run():
        loader = DataLoader(NumpyNoise(), batch_size=2, num_workers=2, worker_init_fn=seed_worker,
                            generator=seed_everything(11))
        return [b.tolist() for b in loader]
    first, second = run(), run()
    assert first == second
    assert first[0] != first[1]  # the two workers are seeded differently
