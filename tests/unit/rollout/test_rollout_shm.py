"""Same-node weight transport: buckets packed into shared-memory files, two slots so the
served version stays intact, mappings kept across syncs, files cleaned up; and the choice
between shared memory and the object store by where the engines run."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tunefleet.rollout import shm
from tunefleet.rollout.shm import SharedMaps, SharedSlots, sweep_dead
from tunefleet.rollout.sync import SyncError, WeightSync, pack_buckets, parse_bucket


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(300, 100, generator=g), "b": torch.randn(7, generator=g), "c": torch.arange(5)}


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_buckets_packed_into_shared_files_round_trip_through_read_only_maps(tmp_path):
    slots = SharedSlots(tmp_path)
    buckets = pack_buckets(_weights(), 0.03, torch.bfloat16, slots.slots[0], slots.allocate)
    paths = slots.store(0, buckets)
    assert len(paths) == len(buckets) >= 2 and all(os.path.dirname(p) == str(tmp_path) for p in paths)
    got = dict(p for b in SharedMaps().get(paths) for p in parse_bucket(b))
    want = _weights()
    assert torch.equal(got["a"], want["a"].to(torch.bfloat16)) and torch.equal(got["c"], want["c"])
    slots.close()
    assert _files(tmp_path) == []


def test_two_slots_alternate_and_the_served_slot_is_never_written(tmp_path):
    slots = SharedSlots(tmp_path)
    assert slots.next_slot() == 0
    first = slots.store(0, pack_buckets(_weights(0), 1, None, slots.slots[0], slots.allocate))
    slots.live = 0
    assert slots.next_slot() == 1
    second = slots.store(1, pack_buckets(_weights(1), 1, None, slots.slots[1], slots.allocate))
    assert set(first).isdisjoint(second)
    served = dict(p for b in SharedMaps().get(first) for p in parse_bucket(b))
    assert torch.equal(served["a"], _weights(0)["a"])  # slot 0 untouched by the write to slot 1
    # A failed sync leaves `live` alone: the next write goes to the same free slot, in place.
    again = slots.store(1, pack_buckets(_weights(2), 1, None, slots.slots[1], slots.allocate))
    assert again == second and len(_files(tmp_path)) == len(first) + len(second)


def test_a_new_layout_replaces_the_slot_files(tmp_path):
    slots = SharedSlots(tmp_path)
    old = slots.store(0, pack_buckets(_weights(), 1, None, slots.slots[0], slots.allocate))
    new = slots.store(0, pack_buckets({"z": torch.ones(3)}, 1, None, slots.slots[0], slots.allocate))
    assert set(old).isdisjoint(new) and _files(tmp_path) == [os.path.basename(p) for p in new]


def test_engine_maps_are_reused_and_dropped_two_syncs_later(tmp_path):
    slots = SharedSlots(tmp_path)
    a = slots.store(0, pack_buckets(_weights(0), 1, None, [], slots.allocate))
    b = slots.store(1, pack_buckets(_weights(1), 1, None, [], slots.allocate))
    maps = SharedMaps()
    first = maps.get(a)
    assert maps.get(b) and maps.get(a)[0] is first[0]  # still mapped: no page faults again
    slots.slots[0] = []  # the trainer moves to new files
    c = slots.store(0, pack_buckets(_weights(2), 1, None, [], slots.allocate))
    maps.get(c)
    maps.get(b)
    assert set(maps._maps) == set(b) | set(c)


def test_files_of_dead_writers_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{shm.PREFIX}{dead.stdout.strip()}-abc-0"
    stale.write_bytes(b"x")
    mine = tmp_path / f"{shm.PREFIX}{os.getpid()}-abc-0"
    mine.write_bytes(b"x")
    assert sweep_dead(tmp_path) == 1 and _files(tmp_path) == [mine.name]


def test_a_full_shm_fails_cleanly_before_any_write(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError):
        SharedSlots(tmp_path).allocate(1024)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("nodes, shared, refs", [
    ({"n1"}, True, False),  # every engine here: shared memory only, nothing in the object store
    ({"n1", "n2"}, True, True),  # some elsewhere: both
    ({"n2"}, False, True),  # none here: the object store only
])
def test_transport_follows_where_the_engines_run(tmp_path, monkeypatch, nodes, shared, refs):
    monkeypatch.setattr("tunefleet.rollout.sync.slots_for", lambda name: SharedSlots(tmp_path))
    monkeypatch.setattr("tunefleet.rollout.sync.put_buckets", lambda bufs: [f"ref{i}" for i in range(len(bufs))])
    sync = WeightSync(pool=None, dtype=None)
    payload, buffers, slot = sync._pack(_weights(), "n1", nodes, "pool")
    assert bool(payload.paths) == shared and (payload.node_id == "n1") == shared
    assert bool(payload.refs) == refs and (slot is not None) == shared
    assert all(isinstance(b, np.memmap) for b in buffers) == shared


def test_no_room_in_shm_falls_back_to_the_object_store(tmp_path, monkeypatch):
    def no_space(self, nbytes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SharedSlots, "allocate", no_space)
    monkeypatch.setattr("tunefleet.rollout.sync.slots_for", lambda name: SharedSlots(tmp_path))
    sync = WeightSync(pool=None, dtype=None)
    with pytest.warns(UserWarning, match="shared memory unavailable"):
        payload, _, slot = sync._pack(_weights(), "n1", {"n1"}, "pool")
    assert payload.paths == () and slot is None and not sync._shared_ok


def test_one_slot_pair_per_pool_in_a_process():
    assert shm.slots_for("pool-a") is shm.slots_for("pool-a") is not shm.slots_for("pool-b")


def test_release_deletes_the_pools_files(tmp_path, monkeypatch):
    slots = SharedSlots(tmp_path)
    slots.store(0, pack_buckets(_weights(), 1, None, [], slots.allocate))
    monkeypatch.setitem(shm._BY_POOL, "pool-r", slots)
    shm.release("pool-r")
    assert _files(tmp_path) == [] and "pool-r" not in shm._BY_POOL


@pytest.mark.parametrize("nodes", [{"n1"}, {"n2"}])  # shared memory / the object store
def test_non_finite_weights_are_refused_before_anything_is_sent(tmp_path, monkeypatch, nodes):
    sent = []
    monkeypatch.setattr("tunefleet.rollout.sync.slots_for", lambda name: SharedSlots(tmp_path))
    monkeypatch.setattr("tunefleet.rollout.sync.put_buckets", lambda bufs: sent.extend(bufs) or ["ref"])
    w = _weights()
    w["a"][3, 7] = float("nan")
    w["b"][0] = float("inf")
    with pytest.raises(SyncError, match=r"2 weights hold NaN/inf, e.g. \['a', 'b'\]"):
        WeightSync(pool=None, dtype=torch.bfloat16)._pack(w, "n1", nodes, "pool")
    assert sent == []
