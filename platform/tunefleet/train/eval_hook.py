"""Eval points inside the training loop (the `eval:` section's suites; eval/points.py).

When: step 0 (with `eval.before`, or when a general suite's base score is not cached), every
`eval.every_steps`, and after the last step (after its checkpoint is written, so a failing
final eval cannot make Ray Train retry the run; the driver fails it instead).

How: collective. Under FSDP2 every rank joins the gather of the trainable weights and rank 0
loads them into an unsharded copy; with one worker rank 0 scores the training module itself
(in eval mode, no grad). Other ranks go on to the next step and wait at its first collective.
Rank 0 logs `eval/<suite>/<metric>` and `forgetting/<suite>` at the step through the run's
reporter and writes `<eval_dir>/step_NNNNNN/` (metrics.json, one Parquet per suite), which
the driver logs as artifacts and plots after the fit (pipelines/eval_steps.py).

A campaign trial (`loop_config["report_evals"]`) also hands each point to Ray Tune: rank 0
broadcasts its flat metrics plus `step`, `train_tokens` (cumulative global target tokens)
and `final`, and every rank calls `ray.train.report` with them (Ray Train needs all ranks;
rank 0's dict is what TuneReportCallback forwards). `eval.every_tokens` adds points each time
`train_tokens` crosses a multiple of it: budgets comparable across methods whose steps hold
different numbers of tokens. The token counter restarts at 0 when a run resumes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from tunefleet import storage
from tunefleet.telemetry import loop_metrics

METRICS_FILE = "metrics.json"


def point_dir(eval_dir: str | Path, step: int) -> str:
    """The point's directory: a local path or a URI (`eval_dir` is under `run.storage`)."""
    return storage.join(eval_dir, f"step_{step:06d}")


def read_point(eval_dir: str | Path, step: int) -> dict | None:
    """The metrics.json of an earlier point ({"step", "metrics", "errors", ...}), or None."""
    path = storage.join(point_dir(eval_dir, step), METRICS_FILE)
    return json.loads(storage.read_text(path)) if storage.is_file(path) else None


class EvalHook:
    """Owned by the loop on every rank; only rank 0 evaluates."""

    def __init__(self, cfg, loop_config: dict, ctx, rank: int, reporter):
        import ray

        self.cfg, self.ctx, self.rank, self.reporter = cfg, ctx, rank, reporter
        ref = loop_config.get("eval_ref")
        self.plan = ray.get(ref) if ref is not None else None
        self.eval_dir, self.model_dir = loop_config.get("eval_dir"), loop_config["model_dir"]
        self.rewards = loop_config.get("rewards")
        self.report_evals = bool(loop_config.get("report_evals"))
        self.every_tokens = getattr(cfg.eval, "every_tokens", 0)
        self.next_tokens = self.every_tokens  # the next token budget point
        self.tokens = 0
        self.state: dict = {}
        self._copy = None
        self._reward = None
        self._tokenizer = None
        self.gauges = loop_metrics(cfg, loop_config)  # Prometheus: the objective (telemetry/)

    @property
    def active(self) -> bool:
        return self.plan is not None and bool(self.plan.names())

    def due(self, done: int, tokens: int = 0) -> bool:
        every = self.plan.every_steps if self.active else 0
        by_tokens = bool(self.every_tokens and tokens >= self.next_tokens)
        return self.active and (done == self.cfg.trainer.max_steps or bool(every and done % every == 0) or by_tokens)

    def start(self, start: int, tokens: int = 0) -> None:
        """Step 0: every suite when `eval.before`, and general suites whose base score is not
        cached (forgetting needs it); a resumed run takes the base from its step-0 point.
        `tokens`: the target tokens trained before `start` (a resumed run's checkpoint)."""
        self.tokens = tokens
        while self.every_tokens and self.next_tokens <= tokens:
            self.next_tokens += self.every_tokens
        if not self.active:
            return
        if start == 0:
            plan = self.plan
            todo = [n for n in plan.names() if (n not in plan.general and plan.before)
                    or (n in plan.general and n not in plan.base)]
            self._point(0, todo)
        elif self.rank == 0:
            saved = read_point(self.eval_dir, 0) or {}
            self.state["base"] = {**(saved.get("base") or {}), **self.plan.base}

    def after_step(self, done: int, tokens: int = 0) -> None:
        """`tokens`: the run's global target tokens so far (the same on every rank)."""
        due = self.due(done, tokens)
        self.tokens = tokens
        while self.every_tokens and self.next_tokens <= tokens:  # one point, however many multiples a step crossed
            self.next_tokens += self.every_tokens
        if due:
            self._point(done, self.plan.names())

    # ------------------------------------------------------------------ rank 0

    def _point(self, step: int, names: list[str]) -> None:
        from tunefleet.train.state import gather_trainable

        weights = gather_trainable(self.ctx.policy) if self.ctx.policy.sharded else None
        if self.rank != 0:
            self._report(None, step)
            return
        from tunefleet.eval.points import forgetting, run_point

        models = self._models(weights)
        was_training = models.scorer.training
        models.scorer.eval()
        try:
            with torch.no_grad():
                result = run_point(models, self._tok(), self.plan, step, names, self.state)
        finally:
            models.scorer.train(was_training)
        base = self.state.setdefault("base", dict(self.plan.base))
        if step == 0:  # the base model's scores: computed now, or cached (logged for the curves)
            base.update({n: m for n, m in result.metrics.items() if n in self.plan.general})
            result.metrics = {**{n: base[n] for n in self.plan.general if n in base}, **result.metrics}
        flat = {**result.flat(), **forgetting(self.plan, base, result.metrics),
                "eval/errors": float(len(result.errors))}
        # train_tokens only for trials (it is their budget axis)
        tokens = {"train_tokens": float(self.tokens)} if self.report_evals else {}
        self.reporter.metrics({**flat, **tokens}, step=step)
        objective = self.plan.objective[0] if self.plan.objective else None
        if objective in flat:
            self.gauges.eval_objective(flat[objective], objective)
        self._write(result, flat, base if step == 0 else None)
        self._report(flat, step)

    def _report(self, flat: dict | None, step: int) -> None:
        """Collective (campaign trials only): rank 0's point to Ray Tune, from every rank."""
        if not self.report_evals:
            return
        import ray.train

        from tunefleet.train.collectives import broadcast_object

        mine = None if flat is None else {**flat, "step": step, "train_tokens": self.tokens,
                                          "final": step == self.cfg.trainer.max_steps}
        ray.train.report(broadcast_object(mine, self.rank, self.ctx.world))

    def _write(self, result, flat: dict, base: dict | None) -> None:
        from tunefleet.eval.runner import write_rows

        d = point_dir(self.eval_dir, result.step)
        with tempfile.TemporaryDirectory(prefix="tunefleet-eval-") as tmp:  # Parquet locally, then to storage
            for name, rows in result.rows.items():
                write_rows(name, rows, Path(tmp) / f"{name}.parquet")
            storage.upload_dir(tmp, d)
        final = result.step == self.cfg.trainer.max_steps
        record = {"step": result.step, "final": final, "metrics": result.metrics, "flat": flat,
                  "errors": result.errors, "base": base}
        # metrics.json last and atomic: the driver never reads half a point
        storage.write_text_atomic(storage.join(d, METRICS_FILE), json.dumps(record, indent=1, sort_keys=True,
                                                                             default=float))

    def _tok(self):
        if self._tokenizer is None:
            from tunefleet.models.registry import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def _models(self, weights):
        from tunefleet.eval.points import EvalModels

        module = self.ctx.policy.module
        if weights is not None:  # sharded training: an unsharded copy on this rank's CPU
            module = self._unsharded(weights)
        return EvalModels(lm=module.lm, scorer=module, reward=self._rewards())

    def _unsharded(self, weights):
        from tunefleet.models.policy import build_policy

        cfg = self.cfg
        if self._copy is None:
            self._copy = build_policy(self.model_dir, cfg.model.dtype, cfg.model.lora, torch.device("cpu"), 1,
                                      value_head=cfg.algorithm.VALUE_HEAD).module
        missing = set(weights) - set(self._copy.state_dict())
        if missing:
            raise RuntimeError(f"eval copy lacks trained weights {sorted(missing)[:3]}")
        self._copy.load_state_dict(weights, strict=False)
        return self._copy

    def _rewards(self):
        if self._reward is None and self.plan.heldout is not None and self.plan.heldout.kind == "rl":
            from tunefleet.rewards import build_reward

            self._reward = build_reward(self.rewards, self.cfg.data.task)
        return self._reward
