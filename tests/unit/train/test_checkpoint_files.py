"""Checkpoint directories: atomic creation, manifest verification, corruption detection."""

import pytest

from tunefleet.models.checkpoint import CheckpointError, atomic_dir, verify


def _fill(d):
    (d / "weights.bin").write_bytes(b"\x00" * 100)
    (d / "state.json").write_text('{"step": 3}')


def test_atomic_dir_writes_a_verified_manifest(tmp_path):
    final = atomic_dir(tmp_path / "ckpt", _fill)
    manifest = verify(final)
    assert set(manifest["files"]) == {"weights.bin", "state.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_failed_fill_leaves_nothing(tmp_path):
    def boom(d):
        _fill(d)
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_dir(tmp_path / "ckpt", boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "weights.bin").write_bytes(b"\x00" * 50), "truncated"),
    (lambda d: (d / "weights.bin").write_bytes(b"\x01" * 100), "sha256"),
    (lambda d: (d / "state.json").unlink(), "missing"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest"),
])
def test_verify_names_the_damage(tmp_path, damage, match):
    final = atomic_dir(tmp_path / "ckpt", _fill)
    damage(final)
    with pytest.raises(CheckpointError, match=match):
        verify(final)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    from tunefleet.train.state import newest_valid

    old = atomic_dir(tmp_path / "checkpoint_000002", _fill)
    new = atomic_dir(tmp_path / "checkpoint_000004", _fill)
    assert newest_valid(new) == new
    (new / "weights.bin").write_bytes(b"\x07" * 100)
    with pytest.warns(UserWarning, match="checkpoint_000004.*sha256"):
        assert newest_valid(new) == old
    (old / "state.json").unlink()
    with pytest.warns(UserWarning):
        assert newest_valid(new) is None
