"""Elastic resize on a real multi-node cluster: `ray start --head` with 1 CPU, a job with
`trainer.num_workers: [1, 2]`; a second node joins (`ray start --address`), the group grows
to 2; the node is drained as preempted (a notice with a deadline: the group writes a
just-in-time checkpoint) and removed at the deadline, and the group shrinks to 1. The global batch stays fixed (gradient
accumulation follows the world size), and the sample-id log proves every sample is trained
on exactly once per epoch across both resizes.

A resize restarts the group from the newest checkpoint, so steps after it are logged again;
the last record of each step is the one in the model's history.
Resize times (node change -> first step at the new size) are printed for bench/RESULTS.md.
"""

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from tf_raynodes import start_head, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NUM_TRAIN, BATCH = 32, 8
STEPS_PER_EPOCH = NUM_TRAIN // BATCH
DRAIN_S = 20  # notice period of the preemption (GCP spot gives 30 s)
ARGS = ["model.name=tiny-llama", "data.task=reverse", f"data.num_train={NUM_TRAIN}", "data.max_length=256",
        f"trainer.batch_size={BATCH}", "trainer.micro_batch_size=2", "trainer.num_workers=[1,2]",
        "trainer.resize_check_s=2", "trainer.max_failures=5", "trainer.log_sample_ids=true",
        "trainer.max_steps=100000", "checkpoint.every_steps=4", "trainer.status_every_s=5",
        "eval.before=false", "eval.after=false", "run.name=elastic"]


@pytest.fixture
def cluster(home):
    c = start_head(num_cpus=1)
    try:
        yield c
    finally:
        c.stop()


def _records(path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _after(path, seen: int, world: int, count: int = 1):
    """The records logged after the first `seen` ones, once `count` of them ran at `world`."""
    def check():
        new = _records(path)[seen:]
        return new if sum(r["world"] == world for r in new) >= count else None
    return check


def _drain(proc, lines: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    thread.start()
    return thread


def _history(records: list[dict]) -> dict[int, dict]:
    """step -> its last record: a step redone after a restart replaces the earlier attempt."""
    return {r["step"]: r for r in records}


def _assert_exactly_once(history: dict[int, dict]) -> int:
    """Steps 1..last all present, world sizes 1 -> 2 -> 1, and every complete epoch trains
    on each sample exactly once. Returns the last step."""
    last = max(history)
    assert sorted(history) == list(range(1, last + 1)), f"a step is missing from the history: {sorted(history)}"
    worlds = [history[s]["world"] for s in range(1, last + 1)]
    runs = [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]]
    assert runs == [1, 2, 1], f"world size per step went {runs}: {worlds}"
    for epoch in range(last // STEPS_PER_EPOCH):
        steps = range(epoch * STEPS_PER_EPOCH + 1, (epoch + 1) * STEPS_PER_EPOCH + 1)
        ids = sorted(i for s in steps for i in history[s]["ids"])
        assert ids == list(range(NUM_TRAIN)), f"epoch {epoch}: {ids}"
    return last


def test_group_grows_and_shrinks_with_exactly_once_samples(cluster, home):
    log = home / "runs" / "elastic" / "sample_ids.jsonl"
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs}
    cmd = [sys.executable, "-m", "tunefleet.cli.main", "run", *ARGS, f"tracking.uri=sqlite:///{home}/mlflow.db",
           f"run.storage={home}/runs"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = _drain(proc, lines)
    try:
        wait_for(_after(log, 0, world=1, count=3), 300, "3 steps on 1 worker")
        seen, added = len(_records(log)), time.time()
        node = cluster.add_node(num_cpus=1)
        wait_for(_after(log, seen, world=2), 300, "the group to grow to 2 workers")
        grow_s = time.time() - added
        wait_for(_after(log, seen, world=2, count=3), 120, "3 steps on 2 workers")
        seen, deadline = len(_records(log)), time.time() + DRAIN_S
        cluster.drain_node(node, deadline_s=DRAIN_S)  # the preemption notice...
        notice = wait_for(lambda: re.search(r"preemption notice after step (\d+)", "".join(lines)), 60,
                          "the preemption notice")
        time.sleep(max(0.0, deadline - time.time()))
        cluster.remove_node(node)  # ...and the node going at its deadline
        shrunk = wait_for(_after(log, seen, world=1), 300, "the group to shrink to 1 worker")
        shrink_s = time.time() - deadline
        wait_for(_after(log, seen, world=1, count=STEPS_PER_EPOCH + 1), 120, "an epoch on 1 worker again")
        proc.send_signal(signal.SIGTERM)  # a clean stop (checkpoint, exit 0) ends the open-ended run
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]

    last = _assert_exactly_once(_history(_records(log)))
    jit = int(notice.group(1))  # the shrunk group resumes from the just-in-time checkpoint
    resumed_at = [r for r in shrunk if r["world"] == 1][0]["step"] - 1
    assert resumed_at >= jit, f"work before the preemption notice (step {jit}) was lost: resumed at {resumed_at}"
    assert f"resumed from checkpoint_{resumed_at:06d}" in out
    assert "[train] 1 worker(s), 4 micro-batch(es) of 2" in out and "[train] 2 worker(s), 2 micro-batch(es)" in out
    print(f"elastic grow (node added -> first 2-worker step): {grow_s:.1f} s; "
          f"shrink (drain deadline, node removed -> first 1-worker step): {shrink_s:.1f} s; {last} steps")
