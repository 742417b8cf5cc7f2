"""Data order and LR schedule: values worked out by hand."""

import math

import pytest

from tunefleet.train.order import GlobalOrder, rank_micro_batches
from tunefleet.train.schedule import lr_factor


def test_global_order_covers_each_epoch_exactly_once():
    order = GlobalOrder(10, seed=3)
    seen = [i for step in range(5) for i in order.batch(step, 2)]  # 5 steps x 2 = one epoch
    assert sorted(seen) == list(range(10))
    assert order.batch(5, 2) == list(order.permutation(1)[:2])  # epoch 1 starts a new permutation


def test_global_batch_does_not_depend_on_world_size():
    order = GlobalOrder(64, seed=0)
    batch = order.batch(7, 8)
    one = [i for mb in rank_micro_batches(batch, 0, 1, 2) for i in mb]
    two = [i for r in range(2) for mb in rank_micro_batches(batch, r, 2, 2) for i in mb]
    assert one == two == batch
    assert rank_micro_batches(batch, 1, 2, 2) == [batch[4:6], batch[6:8]]


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty dataset"):
        GlobalOrder(0, seed=0)


def test_lr_schedules_by_hand():
    # warmup 2 of 10: steps 0,1 -> 1/2, 2/2; cosine over the remaining 8.
    assert lr_factor(0, 10, 2, "cosine") == 0.5
    assert lr_factor(1, 10, 2, "cosine") == 1.0
    assert lr_factor(2, 10, 2, "cosine") == 1.0
    assert math.isclose(lr_factor(6, 10, 2, "cosine"), 0.5)  # halfway: (1 + cos(pi/2)) / 2
    assert math.isclose(lr_factor(6, 10, 2, "linear"), 0.5)
    assert math.isclose(lr_factor(10, 10, 2, "cosine", min_ratio=0.1), 0.1)
    assert lr_factor(9, 10, 0, "constant") == 1.0
