"""RolloutPool: a named async Ray actor that owns N VLLMEngine actors.

- Requests are queued and dispatched in chunks to the least-loaded ready engine; a chunk
  whose engine dies (or comes back restarted) goes back to the front of the queue, and the
  ledger accepts each request's result once: no prompt is lost or duplicated.
- Two interfaces: `generate` (a batch: returns when all are done) and `submit` +
  `next_batch` (a stream: engines generate ahead while the trainer consumes).
- Weight sync is two-phase: stage on every ready engine, then commit; any stage failure
  aborts everywhere, a commit failure rolls the committed engines back (and restarts the
  failed one), so the version is bumped only once every engine has acknowledged.
- A restarted engine (Ray `max_restarts`) is brought to the current policy before it gets
  work again; meanwhile `status()["degraded"]` is true.
- Samples from a policy more than `max_staleness` versions old are regenerated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import ray
from ray.exceptions import RayActorError

from tunefleet.config.rollout import RolloutConfig
from tunefleet.rollout.dispatch import EngineLoad, Ledger, RateMeter, chunk_size, is_stale, pick_engine
from tunefleet.rollout.engine import CONTROL, VLLMEngine, engine_env
from tunefleet.rollout.metrics import RolloutMetrics
from tunefleet.rollout.samples import Prompt, Request, Rollout, RolloutError, Sampling, SyncError

MAX_CALLS_PER_ENGINE = 2  # one running, one queued behind it: the engine never idles
HEALTH_EVERY_S = 2.0
PING_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class PolicyState:
    """What every engine must serve: full weights `base_version` (a sync.FullWeights; None =
    the model directory's), adapter `lora_version` (None = no adapter), as policy `version`."""

    version: int = 0
    base_version: int = 0
    full: object | None = None
    lora_version: int = 0
    lora: object | None = None


@dataclasses.dataclass
class _Slot:
    handle: object
    load: EngineLoad
    incarnation: str | None = None
    killed: str | None = None  # the incarnation we killed: its replies until it dies are void
    node_id: str | None = None  # where the engine runs (WeightSync picks the transport by it)
    state: str = "starting"  # starting | ready | recovering | stale | dead


class RolloutPool:
    """Create it with `tunefleet.rollout.client.create_pool` (a named actor), not directly."""

    def __init__(self, model_dir: str, cfg: RolloutConfig):
        self.cfg, self.model_dir = cfg, model_dir
        self.state = PolicyState()
        self.ledger = Ledger()
        self.meter = RateMeter()
        self._metrics = RolloutMetrics(cfg.name)
        self._requests: dict[int, Request] = {}
        self._waiters: dict[int, asyncio.Future] = {}
        self._stream: list[Rollout] = []
        self._stream_ids: set[int] = set()
        self._stream_changed = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._syncing = False
        self._next_id = 0
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self.last_sync: dict = {}
        self.slots = [_Slot(self._spawn(i), EngineLoad(i)) for i in range(cfg.num_engines)]

    def _spawn(self, index: int):
        cfg = self.cfg
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor = ray.remote(concurrency_groups={CONTROL: 4})(VLLMEngine)
        # Never inside the creator's placement group: a campaign trial's (Tune captures child
        # actors into it) has no room for an engine; engines are resources of their own.
        return actor.options(
            num_cpus=cfg.resources_per_engine, num_gpus=cfg.gpus_per_engine or None,
            max_restarts=cfg.max_restarts, max_task_retries=0, runtime_env={"env_vars": engine_env(cfg)},
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
        ).remote(self.model_dir, cfg, index)

    # ------------------------------------------------------------ lifecycle
    def _spawn_task(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_started(self) -> None:
        if not self._started:  # tasks need the actor's running loop, which __init__ lacks
            self._started = True
            for slot in self.slots:
                self._spawn_task(self._bring_up(slot))
            self._spawn_task(self._health_loop())

    async def start(self, timeout_s: float | None = None) -> dict:
        """Wait until every engine is ready (or `timeout_s`); returns `status()`."""
        self._ensure_started()
        deadline = time.monotonic() + (timeout_s or self.cfg.ready_timeout_s)
        while any(s.state == "starting" for s in self.slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if not any(s.state == "ready" for s in self.slots):
            raise RolloutError(f"no engine became ready: {self.status()}")
        return self.status()

    async def shutdown(self) -> None:
        """Kill the engines (after they delete their files); waiting requests fail with RolloutError."""
        for task in list(self._tasks):
            task.cancel()
        live = [s for s in self.slots if s.state != "dead"]
        try:  # a killed engine runs no cleanup: its adapter directories would stay on disk
            await asyncio.wait_for(_gather([s.handle.close.remote() for s in live]), PING_TIMEOUT_S)
        except TimeoutError:
            pass
        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)
            slot.state = "dead"
        self._fail(self.ledger.take(len(self.ledger.pending)) + list(self.ledger.running.values()),
                   RolloutError("the pool was shut down"))

    def status(self) -> dict:
        engines = [{"index": s.load.index, "state": s.state, "calls": s.load.calls, "prompts": s.load.prompts}
                   for s in self.slots]
        ready = sum(s.state == "ready" for s in self.slots)
        return {"name": self.cfg.name, "version": self.state.version, "engines": engines, "ready": ready,
                "degraded": ready < len(self.slots), "queue_depth": len(self.ledger.pending),
                "running": len(self.ledger.running), "stream_ready": len(self._stream),
                "last_sync": dict(self.last_sync)}

    def metrics(self) -> dict[str, float]:
        """Driver side logs this to MLflow (rollout/metrics.py: log_to_tracker)."""
        self._metrics.set("tokens_per_s", self.meter.rate())
        return self._metrics.snapshot()

    def describe(self) -> dict:
        """What a client needs to know about the engines (WeightSync casts to `dtype`)."""
        return {"name": self.cfg.name, "dtype": self.cfg.dtype, "num_engines": len(self.slots),
                "enable_lora": self.cfg.enable_lora, "max_lora_rank": self.cfg.max_lora_rank,
                "nodes": sorted({s.node_id for s in self.slots if s.node_id and s.state != "dead"})}

    def engines(self) -> list:
        """The engine actor handles (tests kill one; benchmarks ping them)."""
        return [s.handle for s in self.slots]

    # ------------------------------------------------------------ engine health
    async def _bring_up(self, slot: _Slot) -> None:
        """Wait for the engine (new or restarted), bring it to the current policy, enable it."""
        deadline = time.monotonic() + self.cfg.ready_timeout_s
        while True:
            try:
                info = await asyncio.wait_for(slot.handle.ping.remote(), self.cfg.ready_timeout_s)
                if info["incarnation"] == slot.killed and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)  # ray.kill is asynchronous: the old process answered
                    continue
                slot.node_id = info["node_id"]
                async with self._sync_lock:
                    await self._restore(slot, info, self.state)
                break
            except (TimeoutError, RayActorError) as err:
                if time.monotonic() > deadline:
                    return self._give_up(slot, "dead", err)
                await asyncio.sleep(1.0)
            except Exception as err:  # noqa: BLE001 - alive but cannot load the policy (refs lost?)
                return self._give_up(slot, "stale", err)  # retried after the next sync
        slot.incarnation, slot.state = info["incarnation"], "ready"
        self._update_gauges()
        self._pump()

    def _give_up(self, slot: _Slot, state: str, err: BaseException) -> None:
        slot.state = state
        print(f"[rollout] engine {slot.load.index} is {state}: {err!r}", flush=True)
        self._update_gauges()
        self._pump()

    async def _restore(self, slot: _Slot, info: dict, target: PolicyState) -> None:
        """Stage and commit whatever part of `target` the engine (described by `info`) lacks."""
        staged = False
        if info["base_version"] != target.base_version:
            await slot.handle.stage_full.remote(target.full, target.base_version)
            staged = True
        if info["lora_version"] != target.lora_version:
            await slot.handle.stage_lora.remote(target.lora, target.lora_version)
            staged = True
        if staged or info["version"] != target.version:
            await slot.handle.commit.remote(target.version, allow_empty=not staged)

    def _lost(self, slot: _Slot) -> None:
        """The engine died or restarted: stop using it and bring it back in the background."""
        if slot.state in ("recovering", "dead"):
            return
        slot.state = "recovering"
        self._metrics.inc("engine_restarts")
        self._update_gauges()
        self._spawn_task(self._bring_up(slot))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            for slot in [s for s in self.slots if s.state == "ready"]:
                try:
                    info = await asyncio.wait_for(slot.handle.ping.remote(), PING_TIMEOUT_S)
                except RayActorError:
                    self._lost(slot)
                    continue
                except TimeoutError:
                    continue  # busy, not dead: a dead actor fails fast
                if info["incarnation"] != slot.incarnation:
                    self._lost(slot)

    def _update_gauges(self) -> None:
        self._metrics.set("engines_ready", sum(s.state == "ready" for s in self.slots))
        self._metrics.set("queue_depth", len(self.ledger.pending))
        self._metrics.set("policy_version", self.state.version)

    # ------------------------------------------------------------ requests
    def _enqueue(self, prompts: list[Prompt], sampling: Sampling | None) -> list[Request]:
        self._ensure_started()
        sampling = sampling or Sampling()
        reqs = [Request(self._next_id + i, p, sampling) for i, p in enumerate(prompts)]
        self._next_id += len(reqs)
        self._requests.update({r.id: r for r in reqs})
        self.ledger.add(reqs)
        return reqs

    async def generate(self, prompts: list[Prompt], sampling: Sampling | None = None) -> list[Rollout]:
        """Complete every prompt (`sampling.n` samples each); results in prompt order."""
        loop = asyncio.get_running_loop()
        reqs = self._enqueue(list(prompts), sampling)
        futures = [loop.create_future() for _ in reqs]
        self._waiters.update({r.id: f for r, f in zip(reqs, futures)})
        self._pump()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for r in reqs:
                self._waiters.pop(r.id, None)

    def submit(self, prompts: list[Prompt], sampling: Sampling | None = None) -> list[int]:
        """Queue prompts for the stream; returns their request ids (see `next_batch`)."""
        reqs = self._enqueue(list(prompts), sampling)
        self._stream_ids.update(r.id for r in reqs)
        self._pump()
        return [r.id for r in reqs]

    async def next_batch(self, size: int, timeout_s: float | None = None) -> list[Rollout]:
        """The next `size` finished stream rollouts (completion order). Fewer when fewer are
        outstanding, or what is ready when `timeout_s` passes; [] when none are outstanding."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self._drop_stale_stream()
            if len(self._stream) >= size or len(self._stream) == len(self._stream_ids):
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._stream_changed.clear()
            try:
                await asyncio.wait_for(self._stream_changed.wait(), left)
            except TimeoutError:
                pass
        batch, self._stream = self._stream[:size], self._stream[size:]
        for r in batch:
            self._stream_ids.discard(r.request_id)
            self._forget(r.request_id)
        return batch

    def _drop_stale_stream(self) -> None:
        """Regenerate finished-but-unconsumed rollouts that a sync made too stale."""
        stale = [r for r in self._stream if is_stale(r.version, self.state.version, self.cfg.max_staleness)]
        if stale:
            ids = {r.request_id for r in stale}
            self._stream = [r for r in self._stream if r.request_id not in ids]
            self.ledger.requeue([self._requests[r.request_id] for r in stale])
            self._metrics.inc("stale_regenerated", len(stale))
            self._pump()

    def _forget(self, request_id: int) -> None:
        self.ledger.forget(request_id)
        self._requests.pop(request_id, None)

    # ------------------------------------------------------------ dispatch
    def _pump(self) -> None:
        """Hand queued requests to engines while some engine has room (not during a sync)."""
        loads = [s.load for s in self.slots]
        for s in self.slots:
            s.load.ready = s.state == "ready"
        if self.ledger.pending and all(s.state == "dead" for s in self.slots):
            self._fail(self.ledger.take(len(self.ledger.pending)), RolloutError("every engine is dead"))
        while self.ledger.pending and not self._syncing:
            load = pick_engine(loads, MAX_CALLS_PER_ENGINE)
            if load is None:
                break
            ready = sum(slot_load.ready for slot_load in loads)
            chunk = self.ledger.take(chunk_size(len(self.ledger.pending), ready, self.cfg.max_prompts_per_call))
            load.calls += 1
            load.prompts += sum(r.sampling.n for r in chunk)
            self._spawn_task(self._run_chunk(self.slots[load.index], chunk))
        self._metrics.set("queue_depth", len(self.ledger.pending))

    async def _run_chunk(self, slot: _Slot, chunk: list[Request]) -> None:
        incarnation = slot.incarnation
        try:
            out = await slot.handle.generate.remote(chunk)
        except RayActorError:
            self._retry(slot, chunk)
        except Exception as err:  # noqa: BLE001 - the engine rejected the chunk itself
            self._fail(chunk, err)
        else:
            if out["incarnation"] != incarnation:  # ran on a restarted engine: wrong weights
                self._retry(slot, chunk)
            else:
                for rollout in out["rollouts"]:
                    self._deliver(rollout)
        finally:
            slot.load.calls -= 1
            slot.load.prompts -= sum(r.sampling.n for r in chunk)
            self._pump()

    def _retry(self, slot: _Slot, chunk: list[Request]) -> None:
        """The chunk's engine died or restarted: requeue it (front) for the other engines."""
        self.ledger.requeue(chunk)
        self._metrics.inc("requests_retried", len(chunk))
        self._lost(slot)

    def _deliver(self, rollout: Rollout) -> None:
        req = self._requests.get(rollout.request_id)
        if req is None or rollout.request_id not in self.ledger.running:
            return  # a duplicate (never expected) or a request already failed
        if is_stale(rollout.version, self.state.version, self.cfg.max_staleness):
            self.ledger.requeue([req])
            self._metrics.inc("stale_regenerated")
            return
        self.ledger.finish(rollout)
        self.meter.add(rollout.num_tokens)
        self._metrics.inc("tokens_total", rollout.num_tokens)
        waiter = self._waiters.get(rollout.request_id)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(rollout)
            self._forget(rollout.request_id)
        elif rollout.request_id in self._stream_ids:
            self._stream.append(rollout)
            self._stream_changed.set()

    def _fail(self, chunk: list[Request], err: Exception) -> None:
        for r in chunk:
            self.ledger.running.pop(r.id, None)
            self._requests.pop(r.id, None)
            waiter = self._waiters.get(r.id)
            if waiter is not None and not waiter.done():
                waiter.set_exception(RolloutError(f"request {r.id} failed: {err}"))
            self._stream_ids.discard(r.id)  # the stream skips it; next_batch will not wait for it
        self._stream_changed.set()

    # ------------------------------------------------------------ weight sync
    async def sync_full(self, weights, version: int | None = None) -> int:
        """Load full weights (a sync.FullWeights) into every engine. `version`: the policy
        version to serve them as (default: the next one)."""
        v = self._next_version(version)
        new = dataclasses.replace(self.state, version=v, base_version=v, full=weights)
        return await self._transition(new, lambda h: h.stage_full.remote(weights, v))

    async def sync_lora(self, payload, version: int | None = None) -> int:
        """Serve a new LoRA adapter (an AdapterPayload) on every engine, as a new version."""
        v = self._next_version(version)
        new = dataclasses.replace(self.state, version=v, lora_version=v, lora=payload)
        return await self._transition(new, lambda h: h.stage_lora.remote(payload, v))

    def _next_version(self, version: int | None) -> int:
        """Versions only grow (staleness is a difference of versions); an explicit one lets a
        rebuilt pool continue the numbering of the pool it replaces."""
        if version is None:
            return self.state.version + 1
        if version <= self.state.version:
            raise SyncError(f"policy version {version} is not after the current {self.state.version}")
        return version

    async def _transition(self, new: PolicyState, stage) -> int:
        self._ensure_started()
        async with self._sync_lock:
            start, old = time.perf_counter(), self.state
            self._syncing = True
            try:
                slots = [s for s in self.slots if s.state == "ready"]
                errors, staged = await _gather([stage(s.handle) for s in slots])
                if any(errors):
                    await _gather([s.handle.abort.remote() for s in slots])
                    raise SyncError(f"staging failed, every engine kept version {old.version}: {_first(errors)}")
                staged_at = time.perf_counter()
                errors, committed = await _gather([s.handle.commit.remote(new.version) for s in slots])
                if any(errors):
                    await self._roll_back(slots, errors, old)
                    raise SyncError(f"commit failed, every engine back on version {old.version}: {_first(errors)}")
                self.state = new
            finally:
                self._syncing = False
            done = time.perf_counter()
            # Where a sync's time goes (the slowest engine per phase), for benchmarks and logs.
            self.last_sync = {"version": new.version, "engines": len(slots), "seconds": done - start,
                              "stage_s": staged_at - start, "commit_s": done - staged_at,
                              "engine_stage_s": max(staged, default=0.0),
                              "engine_commit_s": max((c["seconds"] for c in committed), default=0.0),
                              "load": sorted({str(c.get("load")) for c in committed})}
            self._metrics.observe_sync(done - start)
            self._update_gauges()
        for slot in [s for s in self.slots if s.state == "stale"]:
            self._lost(slot)
        self._pump()
        return new.version

    async def _roll_back(self, slots: list[_Slot], errors: list, old: PolicyState) -> None:
        """Engines that committed go back to `old`; failed ones (maybe half-updated) restart."""
        for slot, err in zip(slots, errors):
            if err is None:
                try:
                    await self._restore(slot, await slot.handle.ping.remote(), old)
                    continue
                except Exception:  # noqa: BLE001 - cannot restore: restart it instead
                    pass
            slot.killed = slot.incarnation
            ray.kill(slot.handle, no_restart=False)
            self._lost(slot)


async def _gather(calls: list) -> tuple[list[BaseException | None], list]:
    """Await all: (the exception of each or None, the results)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results], results


def _first(errors: list) -> BaseException | None:
    return next(e for e in errors if e is not None)
