import torch

from diffalign.training.randomness import BatchRandom


def _draws(rand: BatchRandom) -> list[torch.Tensor]:
    return [rand.rand(), rand.randn(2, 3), rand.randint(1000)]


def test_a_pair_gets_the_same_draws_however_the_batch_is_split():
    whole = _draws(BatchRandom(seed=5, micro_step=7, pairs=4))
    halves = [_draws(BatchRandom(seed=5, micro_step=7, pairs=2, rank=r, world=2)) for r in (0, 1)]
    for i, full in enumerate(whole):
        assert torch.equal(full, torch.cat([halves[0][i], halves[1][i]]))


def test_steps_and_seeds_draw_differently():
    a = BatchRandom(seed=0, micro_step=1, pairs=3).randn(4)
    assert not torch.equal(a, BatchRandom(seed=0, micro_step=2, pairs=3).randn(4))
    assert not torch.equal(a, BatchRandom(seed=1, micro_step=1, pairs=3).randn(4))
    assert torch.equal(a, BatchRandom(seed=0, micro_step=1, pairs=3).randn(4))
    two = BatchRandom(seed=0, micro_step=1, pairs=3)
    assert not torch.equal(two.randn(4), two.randn(4))  # successive draws of a step differ


def test_per_pair_seeds_do_not_depend_on_the_split_and_skip_keeps_the_numbering():
    whole = BatchRandom(seed=5, micro_step=7, pairs=4).seeds()
    halves = [BatchRandom(seed=5, micro_step=7, pairs=2, rank=r, world=2).seeds() for r in (0, 1)]
    assert whole == halves[0] + halves[1] and len(set(whole)) == 4
    drawn, skipped = BatchRandom(seed=5, micro_step=7, pairs=2), BatchRandom(seed=5, micro_step=7, pairs=2)
    drawn.randn(3)
    skipped.skip()
    assert torch.equal(drawn.randn(3), skipped.randn(3))
