"""RolloutSource: the batches of online RL, for the one training loop (loop.py).

Per step:
1. rank 0 takes the step's prompts (a seeded global order, so a resumed run continues the
   same stream), asks the RolloutPool for `group_size` samples each, scores them with the
   reward functions, optionally drops zero-variance groups and resamples;
2. rank 0 broadcasts the rows (token ids, behaviour log-probs, rewards) to every rank;
3. every rank computes the same advantages over the whole batch (if the estimator folds the
   KL into the reward, a reference pre-pass first, each rank over its own rows);
4. the loop runs the update; `after_step` gathers the new weights (collective) and rank 0
   pushes them to the pool: the LoRA adapter only, or full weights.

`rollout.max_staleness >= 1` lets the pool generate step k+1's samples while step k
updates; samples then are one policy version behind, and the loss's importance ratio uses
their behaviour log-probs. Every sample carries its policy version.

Faults: a dead engine is the pool's business (it retries elsewhere; rank 0 just waits). A
lost pool (killed, or every engine dead) is rebuilt by rank 0 under the same name and given
the last weights it was sent, at the same policy version, before generation resumes.
"""

from __future__ import annotations

import math
import time

import torch

from tunefleet.algorithms.rl import AdvantageInputs, get_advantage, kl_estimate
from tunefleet.data.batching import BATCHERS
from tunefleet.train.collectives import all_gather_object, broadcast_object
from tunefleet.train.order import GlobalOrder, rank_micro_batches
from tunefleet.train.sources import StepPlan, plan_rows

RESAMPLE_SEED_OFFSET = 7919  # resampling rounds draw from their own seeded streams
POOL_REBUILDS = 3  # per call: a pool that dies again right after a rebuild is not a blip


class RolloutSource:
    """See the module docstring. `reporter`: rank 0's Tracker (or None) for artifacts."""

    def __init__(self, cfg, loop_config: dict, ctx, rank: int, world: int, reporter=None):
        import ray

        self.cfg, self.algo, self.ctx, self.rank, self.world = cfg, cfg.algorithm, ctx, rank, world
        self.pad_id, self.tracker = loop_config["pad_id"], reporter
        self.prompts = ray.get(loop_config["data_ref"])  # prompt rows (data/rl_prompts.py)
        self.per_step = cfg.trainer.batch_size // self.algo.group_size
        self.order = GlobalOrder(len(self.prompts), cfg.trainer.seed)
        self.advantage = get_advantage(self.algo.type)
        self.version = 0  # the pool's policy version that holds this trainer's weights
        self._pending: dict[int, object] = {}  # step -> ObjectRef of its rollouts (generate-ahead)
        self.pool = self.sync = self.reward = None
        self._merged: dict = {}  # merged-LoRA weight buffers, reused every sync (rank 0)
        self.model_dir, self.pool_cfg = loop_config["model_dir"], loop_config.get("pool_config")
        self.keeper = loop_config.get("pool_keeper")  # the driver's PoolKeeper (pipelines/rl_pool.py)
        self.rebuilds = 0
        if rank == 0:
            from tunefleet.rewards import build_reward
            from tunefleet.rollout.client import get_pool
            from tunefleet.rollout.sync import WeightSync

            try:
                self.pool = get_pool(loop_config["pool_name"])
            except ValueError:  # lost with an earlier worker group that had rebuilt it
                self.pool = self._new_pool()
            self.sync = WeightSync(self.pool, cfg.rollout.bucket_mb)
            self.reward = build_reward(loop_config["rewards"], cfg.data.task)

    # ------------------------------------------------------------ lifecycle
    def start(self, step: int, saved: dict) -> None:
        """Make the pool serve this trainer's weights before any sample is drawn. A fresh
        run starts on the pool's base weights. After any restart or resume the pool may
        serve weights this trainer no longer has (a group restarted before its first
        checkpoint is back at the base model, while the pool holds the lost steps'
        weights): the restored weights are pushed, as the version after the pool's current
        one (versions only grow, so staleness stays a true difference of versions)."""
        served = None
        if self.rank == 0:
            import ray

            served = self.version = ray.get(self.pool.status.remote())["version"]
        served = broadcast_object(served, self.rank, self.world)
        if step > 0 or served > 0:
            self._push()
            if self.rank == 0:
                print(f"[rollout] starting at step {step}: the pool served policy version {served}; it now serves "
                      f"the restored weights as version {self.version}", flush=True)

    def state(self) -> dict:
        return {"policy_version": self.version}

    def close(self) -> None:
        self._pending.clear()
        if self.sync is not None:
            self.sync.close()

    # ------------------------------------------------------------ rank 0: sampling
    def _sampling(self):
        from tunefleet.rollout.samples import Sampling

        a = self.algo
        return Sampling(n=a.group_size, temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_new_tokens,
                        seed=self.cfg.trainer.seed)

    def _submit(self, indices: list[int]):
        return self.pool.generate.remote([self.prompts[i]["prompt_ids"] for i in indices], self._sampling())

    def _rollouts(self, ref, indices: list[int]):
        """The rollouts of a generate call; a lost pool is rebuilt and the call repeated."""
        import ray

        for attempt in range(POOL_REBUILDS + 1):
            try:
                return ray.get(ref)
            except _pool_errors() as err:
                if attempt == POOL_REBUILDS or self.pool_cfg is None:
                    raise
                self._rebuild_pool(err)
                ref = self._submit(indices)

    def _new_pool(self):
        """A replacement pool under the run's pool name, made by the driver's PoolKeeper:
        it outlives this worker (a restarted group finds it again) but not the driver (a
        detached pool outlived a crashed driver). Without a keeper this worker owns it."""
        import ray

        from tunefleet.rollout.client import create_pool

        if self.pool_cfg is None:
            raise RuntimeError("the rollout pool is gone and this run has no pool config to rebuild it")
        if self.keeper:
            return ray.get(ray.get_actor(self.keeper).create.remote())
        return create_pool(self.model_dir, self.pool_cfg)

    def _rebuild_pool(self, err: BaseException, resend: bool = True) -> None:
        """Replace a lost pool (same name) and load the last weights sent into it, at the
        trainer's current policy version, so versions stay consistent across the rebuild."""
        import ray

        start = time.perf_counter()
        print(f"[rollout] pool lost ({type(err).__name__}: {str(err)[:200]}); rebuilding {self.pool_cfg.name} "
              f"at policy version {self.version}", flush=True)
        try:
            ray.kill(self.pool)  # a pool whose engines all died still holds the name
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._pending.clear()  # generate-ahead calls died with the old pool
        self.pool = self._new_pool()
        if resend and self.version > 0:
            self.sync.resend(self.pool, self.version)
        self.sync.pool = self.pool
        self.rebuilds += 1
        print(f"[rollout] pool rebuilt in {time.perf_counter() - start:.1f}s (rebuild {self.rebuilds})", flush=True)

    def _prompt_indices(self, step: int, round_: int, count: int) -> list[int]:
        if round_ == 0:
            return self.order.batch(step, count)
        extra = GlobalOrder(len(self.prompts), self.cfg.trainer.seed + RESAMPLE_SEED_OFFSET * round_)
        return extra.batch(step, count)

    def _groups(self, indices: list[int], rollouts) -> list[dict]:
        """One group per prompt: its samples, their rewards and reward components."""
        from tunefleet.rewards import RewardInput

        inputs, owners = [], []
        for i, r in zip(indices, rollouts):
            p = self.prompts[i]
            for s in r.samples:
                inputs.append(RewardInput(p["prompt"], s.text, p["answer"], p["meta"], len(s.token_ids)))
                owners.append((i, r, s))
        totals, parts = self.reward(inputs)
        groups: dict[int, dict] = {}
        for j, (i, r, s) in enumerate(owners):
            g = groups.setdefault(r.request_id, {"prompt": i, "samples": [], "rewards": [], "parts": []})
            g["samples"].append(s)
            g["rewards"].append(totals[j])
            g["parts"].append({k: v[j] for k, v in parts.items()})
        return list(groups.values())

    def _collect(self, step: int) -> tuple[list[dict], list[dict], dict[str, float]]:
        """The step's groups to train on, every group generated for it, and counts/timings.

        With `drop_zero_variance`, groups whose rewards are all equal are dropped and only
        freshly sampled groups (up to `max_resample` rounds) take their place: a dropped
        group never trains. Too few left: the step trains on fewer groups (the loss divides
        by the step's global counts, so a smaller step is still a consistent update)."""
        start = time.perf_counter()
        ref = self._pending.pop(step, None)
        indices = self._prompt_indices(step, 0, self.per_step)
        if ref is None:
            ref = self._submit(indices)
        if self.cfg.rollout.max_staleness >= 1 and step + 1 < self.cfg.trainer.max_steps:
            # Generate ahead: the pool samples step+1 while this step updates.
            self._pending[step + 1] = self._submit(self._prompt_indices(step + 1, 0, self.per_step))
        generated = self._groups(indices, self._rollouts(ref, indices))
        kept = generated
        if self.algo.drop_zero_variance:
            kept = [g for g in generated if _has_signal(g)]
            for round_ in range(1, self.algo.max_resample + 1):
                missing = self.per_step - len(kept)
                if missing <= 0:
                    break
                extra_idx = self._prompt_indices(step, round_, missing)
                extra = self._groups(extra_idx, self._rollouts(self._submit(extra_idx), extra_idx))
                generated += extra
                kept += [g for g in extra if _has_signal(g)]
        kept = kept[:self._fits(len(kept))]
        counts = {"groups_kept": float(len(kept)), "groups_generated": float(len(generated)),
                  "groups_dropped": float(sum(not _has_signal(g) for g in generated))
                  if self.algo.drop_zero_variance else 0.0,
                  "step_shrunk": float(len(kept) < self.per_step)}
        if counts["step_shrunk"]:
            print(f"[rollout] step {step + 1}: {len(kept)} of {self.per_step} groups carry a learning signal after "
                  f"{self.algo.max_resample} resample round(s); training on those", flush=True)
        return kept, generated, {"rollout_s": time.perf_counter() - start, **counts}

    def _fits(self, groups: int) -> int:
        """The most of `groups` (at most a step's) whose rows split evenly over the ranks
        (rank_micro_batches gives every rank the same share)."""
        n = min(groups, self.per_step)
        while n and (n * self.algo.group_size) % self.world:
            n -= 1
        return n

    def _rows(self, groups: list[dict]) -> list[dict]:
        rows = []
        for g in groups:
            prompt_ids = self.prompts[g["prompt"]]["prompt_ids"]
            for s, reward in zip(g["samples"], g["rewards"]):
                rows.append({"input_ids": list(prompt_ids) + list(s.token_ids),
                             "loss_mask": [0] * len(prompt_ids) + [1] * len(s.token_ids),
                             "behaviour_logps": list(s.logprobs), "reward": float(reward),
                             "version": s.version})
        return rows

    def _rollout_metrics(self, kept: list[dict], generated: list[dict]) -> dict[str, float]:
        """Rewards over every sample generated for the step (`reward_mean` = `reward/mean_all`,
        `reward_std`, `reward/<term>`: each term's raw score, `accuracy`: the `task` verifier's
        when there is one), and over the batch trained on (`reward/mean_kept`)."""
        everything = torch.tensor([r for g in generated for r in g["rewards"]])
        samples = [s for g in generated for s in g["samples"]]
        lengths = torch.tensor([float(len(s.token_ids)) for s in samples])
        stale = torch.tensor([float(self.version - s.version) for s in samples])
        metrics = {"reward_mean": float(everything.mean()), "reward/mean_all": float(everything.mean()),
                   "reward_std": float(everything.std()) if len(everything) > 1 else 0.0,
                   "response_len": float(lengths.mean()), "staleness_mean": float(stale.mean()),
                   "staleness_max": float(stale.max()), "policy_version": float(self.version)}
        if kept:
            metrics["reward/mean_kept"] = float(torch.tensor([r for g in kept for r in g["rewards"]]).mean())
        parts = [p for g in generated for p in g["parts"]]
        for name in parts[0]:  # component names: a built-in's type ("task", "format", ...)
            metrics[f"reward/{name}"] = math.fsum(p[name] for p in parts) / len(parts)
        if "reward/task" in metrics:  # only the task's verifier is an accuracy
            metrics["accuracy"] = metrics["reward/task"]
        return metrics

    # ------------------------------------------------------------ every rank
    def plan(self, step: int) -> StepPlan:
        payload = None
        if self.rank == 0:
            groups, generated, counts = self._collect(step)
            rows = self._rows(groups)
            metrics = {**counts, **self._rollout_metrics(groups, generated)}
            self._save_sample(step + 1, generated)
            payload = (rows, metrics)
        rows, metrics = broadcast_object(payload, self.rank, self.world)
        self._add_advantages(rows)
        t = self.cfg.trainer
        num_tokens = sum(len(r["behaviour_logps"]) for r in rows)
        plan = plan_rows(rows, list(range(len(rows))), self.rank, self.world, t.micro_batch_size,
                         BATCHERS["rl"], self.pad_id, num_tokens=num_tokens)
        plan.metrics.update(metrics)
        return plan

    def _add_advantages(self, rows: list[dict]) -> None:
        """Per-token advantages of every row (identical on every rank), in place."""
        if not rows:  # a step left without any group to learn from
            return
        mask_lists = [[1.0] * len(r["behaviour_logps"]) for r in rows]
        width = max(len(m) for m in mask_lists)
        mask = torch.tensor([m + [0.0] * (width - len(m)) for m in mask_lists])
        kl = None
        if self.algo.KL_IN_REWARD and self.algo.kl_beta > 0:
            ref = self._reference_logps(rows)
            kl = torch.zeros_like(mask)
            for b, (r, lp) in enumerate(zip(rows, ref)):
                r["ref_logps"] = lp
                kl[b, :len(lp)] = kl_estimate(torch.tensor(r["behaviour_logps"]), torch.tensor(lp),
                                              self.algo.kl_estimator)
        rewards = torch.tensor([r["reward"] for r in rows])
        adv = self.advantage(AdvantageInputs(rewards, mask, self.algo.group_size, kl), self.algo)
        for b, r in enumerate(rows):
            r["advantages"] = adv[b, :len(r["behaviour_logps"])].tolist()

    def _reference_logps(self, rows: list[dict]) -> list[list[float]]:
        """Reference log-probs of every row's response tokens: each rank scores its own
        micro-batches (a collective forward under FSDP), then all ranks exchange them."""
        from tunefleet.data.tokenize import collate

        ctx, mine = self.ctx, {}
        idx = list(range(len(rows)))
        with torch.no_grad():
            for chunk in rank_micro_batches(idx, self.rank, self.world, self.cfg.trainer.micro_batch_size):
                seqs = collate([rows[i] for i in chunk], self.pad_id)
                seqs = {k: v.to(ctx.device) for k, v in seqs.items()}
                logps = ctx.reference(seqs).float().cpu()
                sel = seqs["labels"].cpu() != -100
                for b, i in enumerate(chunk):
                    mine[i] = logps[b][sel[b]].tolist()
        merged = {}
        for part in all_gather_object(mine, self.world):
            merged.update(part)
        return [merged[i] for i in idx]

    def after_step(self, done: int) -> dict[str, float]:
        """Push the updated weights to the pool (collective gather, rank 0 sends)."""
        return self._push()

    def _push(self) -> dict[str, float]:
        """Collective: every rank gathers; rank 0 sends (adapter, merged or full weights)."""
        from tunefleet.train.state import gather_full, gather_trainable

        start = time.perf_counter()
        policy = self.ctx.policy
        adapter = policy.is_lora and self.cfg.rollout.lora_sync == "adapter"
        weights = gather_trainable(policy) if adapter or not policy.is_lora else gather_full(policy)
        if self.rank != 0:
            return {}
        if adapter:
            from tunefleet.rollout.sync import adapter_from_peft

            payload = adapter_from_peft(policy.module.lm, weights)
            send = self.sync.lora
        else:
            from tunefleet.models.lora import merged_weights

            payload = weights
            if policy.is_lora:
                payload = merged_weights(weights, policy.module.lm.peft_config["default"], self._merged)
            send = self.sync.full
        for attempt in range(POOL_REBUILDS + 1):
            try:
                self.version = send(payload, self.version + 1).version
                break
            except _pool_errors() as err:
                if attempt == POOL_REBUILDS or self.pool_cfg is None:
                    raise
                self._rebuild_pool(err, resend=False)  # the new weights go in right after
        return {"sync_s": time.perf_counter() - start, "policy_version": float(self.version),
                "pool_rebuilds": float(self.rebuilds)}

    def _save_sample(self, done: int, groups: list[dict]) -> None:
        every = self.algo.rollout_sample_every
        if self.tracker is None or not every or done % every:
            return
        from tunefleet.train.rollout_samples import log_rollout_sample

        log_rollout_sample(self.tracker, done, [self.prompts[g["prompt"]] for g in groups], groups)


def _has_signal(group: dict) -> bool:
    """A group whose rewards are not all equal (a zero-variance group has no advantage)."""
    return len(set(group["rewards"])) > 1


def _pool_errors() -> tuple[type[BaseException], ...]:
    """What a lost pool raises: its actor died, or it has no live engine left."""
    from ray.exceptions import RayActorError

    from tunefleet.rollout.samples import RolloutError

    return (RayActorError, RolloutError)
