import pytest

from diffalign.data.order import EpochBatches, derive_seed


def _take(sampler: EpochBatches, n: int) -> list[list[tuple[int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_two_processes_split_each_global_batch_of_one_process():
    one = _take(EpochBatches(10, 4, seed=3), 6)  # 2 batches per epoch: 3 epochs
    ranks = [_take(EpochBatches(10, 2, seed=3, rank=r, world=2), 6) for r in (0, 1)]
    for k in range(6):
        assert one[k] == ranks[0][k] + ranks[1][k]
    assert [b[0][0] for b in one] == [0, 0, 1, 1, 2, 2]  # epochs
    epoch0 = {i for b in one[:2] for _, i in b}
    assert len(epoch0) == 8  # no pair twice in an epoch; the incomplete last batch is dropped


def test_start_continues_the_same_sequence_and_epochs_differ():
    full = _take(EpochBatches(9, 3, seed=0), 7)
    assert _take(EpochBatches(9, 3, seed=0, start=4), 3) == full[4:]
    assert [i for _, i in full[0]] != [i for _, i in full[3]] or full[1] != full[4]


def test_too_few_pairs_is_a_clear_error():
    with pytest.raises(ValueError, match="3 pairs cannot fill one global batch of 4"):
        EpochBatches(3, 2, seed=0, world=2)


def test_derive_seed_separates_nearby_keys():
    seeds = {derive_seed(0, a, b) for a in range(20) for b in range(20)}
    assert len(seeds) == 400 and derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)
