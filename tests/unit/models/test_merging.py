"""models/merging.py on hand-worked tensors: linear, TIES, DARE, and the checks before work."""

import pytest
import torch

from tunefleet.models.merging import (
    MergeError,
    check_same_base,
    check_specs,
    dare,
    merge_state_dicts,
    spec_of,
    stable_seed,
    trim,
)

BASE = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]), "ids": torch.tensor([0, 1])}


def _parent(*tau):
    """A parent whose task vector on `w` is `tau` (the int buffer is the base's)."""
    return {"w": BASE["w"] + torch.tensor(tau), "ids": BASE["ids"].clone()}


def test_linear_default_weights_are_the_mean_and_weights_and_scale_apply():
    """tau_1 = [2, 0, -2, 4], tau_2 = [0, 2, 2, 0]:
    mean = [1, 1, 0, 2] -> base + mean = [2, 3, 3, 6];
    w = (1, 0.5): [2, 1, -1, 4] -> [3, 3, 2, 8]; scale 0.5 on that: [2, 2.5, 2.5, 6]."""
    a, b = _parent(2.0, 0.0, -2.0, 4.0), _parent(0.0, 2.0, 2.0, 0.0)
    assert merge_state_dicts(BASE, [a, b])["w"].tolist() == [2.0, 3.0, 3.0, 6.0]
    assert merge_state_dicts(BASE, [a, b], weights=[1.0, 0.5])["w"].tolist() == [3.0, 3.0, 2.0, 8.0]
    got = merge_state_dicts(BASE, [a, b], weights=[1.0, 0.5], scale=0.5)["w"].tolist()
    assert got == [2.0, 2.5, 2.5, 6.0]
    assert merge_state_dicts(BASE, [a, b])["ids"].tolist() == [0, 1]  # non-float buffers: the base's


def test_trim_keeps_the_top_density_fraction_by_magnitude():
    assert trim(torch.tensor([3.0, -1.0, 0.5, -2.0]), 0.5).tolist() == [3.0, 0.0, 0.0, -2.0]
    assert trim(torch.tensor([3.0, -1.0, 0.5, -2.0]), 0.3).tolist() == [3.0, 0.0, 0.0, -2.0]  # ceil(1.2) = 2 kept
    assert trim(torch.tensor([3.0, -1.0, 0.5, -2.0]), 0.25).tolist() == [3.0, 0.0, 0.0, 0.0]
    assert trim(torch.tensor([[1.0, -5.0], [2.0, 0.1]]), 0.5).tolist() == [[0.0, -5.0], [2.0, 0.0]]


def test_ties_worked_example_from_the_module_doc():
    """density 0.5: tau_1 -> [3, 0, 0, -2], tau_2 -> [0, -4, 2, 0], tau_3 -> [-2, 0, 0, -3];
    signs of the sum [1, -4, 2, -5]: [+, -, +, -]; disjoint mean: [3, -4, 2, -2.5]
    (element 0: parent 3 disagrees and is left out; element 3: mean of -2 and -3)."""
    t1, t2, t3 = (3.0, -1.0, 0.5, -2.0), (-1.0, -4.0, 2.0, 1.0), (-2.0, 0.1, 0.2, -3.0)
    two = merge_state_dicts(BASE, [_parent(*t1), _parent(*t2)], "ties", density=0.5)
    assert two["w"].tolist() == [1.0 + 3, 2.0 - 4, 3.0 + 2, 4.0 - 2]
    three = merge_state_dicts(BASE, [_parent(*t1), _parent(*t2), _parent(*t3)], "ties", density=0.5)
    assert three["w"].tolist() == [4.0, -2.0, 5.0, 1.5]
    scaled = merge_state_dicts(BASE, [_parent(*t1), _parent(*t2), _parent(*t3)], "ties", density=0.5, scale=2.0)
    assert scaled["w"].tolist() == [7.0, -6.0, 7.0, -1.0]


def test_ties_density_one_with_agreeing_signs_is_the_mean():
    """No trimming, no conflicts: the disjoint mean of [2, 4] and [4, 2] is [3, 3] (and 0 where both are 0)."""
    got = merge_state_dicts(BASE, [_parent(2.0, 4.0, 0.0, -1.0), _parent(4.0, 2.0, 0.0, -3.0)], "ties", density=1.0)
    assert got["w"].tolist() == [4.0, 5.0, 3.0, 2.0]


def test_dare_is_seeded_per_parent_and_tensor():
    base = {"a": torch.zeros(64, 64), "b": torch.zeros(64, 64)}
    parents = [{"a": torch.ones(64, 64), "b": torch.ones(64, 64)}, {"a": torch.ones(64, 64), "b": torch.ones(64, 64)}]
    one = merge_state_dicts(base, parents, "dare", density=0.5, seed=7)
    again = merge_state_dicts(base, parents, "dare", density=0.5, seed=7)
    other = merge_state_dicts(base, parents, "dare", density=0.5, seed=8)
    assert all(torch.equal(one[k], again[k]) for k in one)
    assert not torch.equal(one["a"], other["a"])
    assert not torch.equal(one["a"], one["b"])  # each tensor gets its own mask
    # Python's hash() of a str changes per process; the seed must not (pinned: sha256 of "7:0:a")
    assert stable_seed(7, 0, "a") == 8088255960758589265 and stable_seed(7, 1, "a") != stable_seed(7, 0, "a")


def test_dare_keeps_about_density_and_rescales_survivors_exactly():
    tau = torch.full((200, 500), 0.3)
    got = dare(tau, 0.2, seed=3)
    kept = got != 0
    assert abs(kept.float().mean().item() - 0.2) < 0.01  # 100k Bernoulli(0.2): sd 0.0013
    assert torch.equal(got[kept], torch.full((int(kept.sum()),), 0.3 / 0.2))
    assert abs(got.mean().item() - 0.3) < 0.01  # unbiased: E[drop-and-rescale] = tau


def test_dare_at_density_one_is_linear():
    a, b = _parent(2.0, 0.0, -2.0, 4.0), _parent(0.0, 2.0, 2.0, 0.0)
    assert torch.equal(merge_state_dicts(BASE, [a, b], "dare", density=1.0, seed=5)["w"],
                       merge_state_dicts(BASE, [a, b], "linear")["w"])
    assert torch.equal(merge_state_dicts(BASE, [a, b], "dare_ties", density=1.0, seed=5)["w"],
                       merge_state_dicts(BASE, [a, b], "ties", density=1.0)["w"])


def test_merged_dtype_follows_the_base():
    base = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    got = merge_state_dicts(base, [{"w": base["w"] + 2}, {"w": base["w"]}])["w"]
    assert got.dtype == torch.bfloat16 and got.tolist() == [2.0, 3.0]


def test_shape_mismatch_names_the_tensor_and_both_shapes():
    base = {"a": torch.zeros(2), "m.weight": torch.zeros(4, 8)}
    bad = {"a": torch.zeros(2), "m.weight": torch.zeros(4, 16)}
    with pytest.raises(MergeError, match=r"tensor 'm.weight': shape \[4, 16\] in parent #1 but \[4, 8\] in base"):
        merge_state_dicts(base, [dict(base), bad])


def test_missing_extra_and_dtype_mismatches_name_the_parent():
    base = spec_of({"a": torch.zeros(2), "b": torch.zeros(3)})
    with pytest.raises(MergeError, match=r"parent run-x lacks tensor 'b' that base has"):
        check_specs(base, {"ok": base, "run-x": spec_of({"a": torch.zeros(2)})})
    with pytest.raises(MergeError, match=r"parent p has tensor 'c' that base lacks"):
        check_specs(base, {"p": {**base, "c": ((1,), "float32")}})
    with pytest.raises(MergeError, match=r"tensor 'a': dtype bfloat16 in parent p but float32 in base"):
        check_specs(base, {"p": {**base, "a": ((2,), "bfloat16")}})


def test_different_bases_are_named():
    assert check_same_base({"a": "/m/tiny", "b": "/m/tiny"}) == "/m/tiny"
    with pytest.raises(MergeError, match="a is a fine-tune of /m/tiny, b of /m/smol"):
        check_same_base({"a": "/m/tiny", "b": "/m/smol"})


def test_bad_options_fail_before_any_work():
    a = _parent(1.0, 1.0, 1.0, 1.0)
    with pytest.raises(MergeError, match="at least two parents"):
        merge_state_dicts(BASE, [a])
    with pytest.raises(MergeError, match="unknown merge method 'slerp'"):
        merge_state_dicts(BASE, [a, a], "slerp")
    with pytest.raises(MergeError, match="3 weights for 2 parents"):
        merge_state_dicts(BASE, [a, a], weights=[1, 2, 3])
    with pytest.raises(MergeError, match=r"density 0.0: must be in \(0, 1\]"):
        merge_state_dicts(BASE, [a, a], "dare", density=0.0)
