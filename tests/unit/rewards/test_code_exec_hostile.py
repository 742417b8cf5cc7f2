"""The `code_exec` reward against the corpus in code_exec_corpus.py: every hostile completion
scores 0 and every honest one 1. The whole corpus is scored once, as one batch (two sandboxes
at a time, as a run would), and each entry is checked by its own test named after it."""

import os
import time
from pathlib import Path

import pytest
from code_exec_corpus import ESCAPE_FILE, HONEST, HOSTILE

from tunefleet.rewards import REWARDS, RewardInput
from tunefleet.rewards.sandbox_harness import Remote, SampleGone, decode, encode

# Short limits keep the sleepers quick; honest entries need well under a second.
PARAMS = {"timeout_s": 3, "cpu_s": 1, "memory_mb": 256, "max_workers": 2}


@pytest.fixture(scope="module")
def scores():
    """{(kind, name): reward} for every corpus entry, scored as one batch."""
    if os.path.exists(ESCAPE_FILE):
        os.remove(ESCAPE_FILE)
    entries = [("hostile", n, *e) for n, e in HOSTILE.items()] + [("honest", n, *e) for n, e in HONEST.items()]
    fn = REWARDS["code_exec"](dict(PARAMS), None)
    start = time.monotonic()
    rewards = fn([RewardInput("write the function", c, meta={"tests": t}) for _, _, c, t in entries])
    seconds = time.monotonic() - start
    hostile0 = sum(r == 0.0 for (kind, *_), r in zip(entries, rewards) if kind == "hostile")
    honest1 = sum(r == 1.0 for (kind, *_), r in zip(entries, rewards) if kind == "honest")
    print(f"\ncode_exec corpus: hostile {hostile0}/{len(HOSTILE)} scored 0, honest {honest1}/{len(HONEST)} "
          f"scored 1, {seconds:.1f} s")
    return {(kind, name): r for (kind, name, *_), r in zip(entries, rewards)}


def test_corpus_is_big_enough():
    assert len(HOSTILE) >= 20 and len(HONEST) >= 10


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completion_scores_0(scores, name):
    assert scores[("hostile", name)] == 0.0


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_completion_scores_1(scores, name):
    assert scores[("honest", name)] == 1.0


def test_nothing_escaped_or_outlived_its_run(scores):
    assert not os.path.exists(ESCAPE_FILE)
    left = []
    for proc in Path("/proc").glob("[0-9]*"):  # fork bombs, forked children: every sandbox process is gone
        try:
            if b"tunefleet-sandbox: isolation step" in (proc / "cmdline").read_bytes():
                left.append(proc.name)
        except OSError:
            pass
    assert left == []


# ------------------------------------------------ the wire format, without a sandbox
def test_only_exact_plain_types_cross_as_data():
    class Yes(int):
        def __eq__(self, other):
            return True

    handles = []
    wire = encode([1, 2.5, Yes(3), ("a", b"b"), {1: {2}}], lambda obj: handles.append(obj) or len(handles) - 1)
    assert wire == ["list", [1, ["float", (2.5).hex()], ["ref", 0], ["tuple", ["a", ["bytes", "62"]]],
                             ["dict", [[1, ["set", [2]]]]]]]
    assert type(handles[0]) is Yes  # the sample's object stays with the sample
    value = decode(wire, Remote)
    assert value[:2] == [1, 2.5] and value[3:] == [("a", b"b"), {1: {2}}]
    remote = value[2]
    assert remote != 3 and remote == Remote(0) and remote != Remote(1)  # equal only to itself


@pytest.mark.parametrize("wire", [["eval", "1"], ["list", "ab"], ["ref", "0"], {"a": 1}, ["dict", [[1]]], []])
def test_anything_else_on_the_wire_ends_the_tests(wire):
    with pytest.raises(SampleGone):
        decode(wire, Remote)
    assert not issubclass(SampleGone, Exception)  # a test's `except Exception` cannot swallow it
