"""A worker on another node than the driver finds (or builds) its own copy of the base model."""

import pytest

from tunefleet.models import registry


def test_a_directory_present_here_is_used_as_it_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert registry.node_model_dir(str(tmp_path)) == str(tmp_path)


def test_a_missing_alias_directory_is_built_on_this_node(tmp_path, monkeypatch):
    built = tmp_path / "here" / "tiny-llama"
    monkeypatch.setattr(registry, "resolve_model", lambda name: built if name == "tiny-llama" else None)
    assert registry.node_model_dir("/driver/home/models/tiny-llama") == str(built)


def test_a_missing_user_directory_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist on this node: put the model on storage every node"):
        registry.node_model_dir("/nowhere/my-model")
