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
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

METRICS_FILE = "metrics.json"


def point_dir(eval_dir: str | Path, step: int) -> Path:
    return Path(eval_dir) / f"step_{step:06d}"


def read_point(eval_dir: str | Path, step: int) -> dict | None:
    """The metrics.json of an earlier point ({"step", "metrics", "errors", ...}), or None."""
    path = point_dir(eval_dir, step) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class EvalHook:
    """Owned by the loop on every rank; only rank 0 evaluates."""

    def __init__(self, cfg, loop_config: dict, ctx, rank: int, reporter):
        import ray

        self.cfg, self.ctx, self.rank, self.reporter = cfg, ctx, rank, reporter
        ref = loop_config.get("eval_ref")
        self.plan = ray.get(ref) if ref is not None else None
        self.eval_dir, self.model_dir = loop_config.get("eval_dir"), loop_config["model_dir"]
        self.rewards = loop_config.get("rewards")
        self.state: dict = {}
        self._copy = None
        self._reward = None
        self._tokenizer = None

    @property
    def active(self) -> bool:
        return self.plan is not None and bool(self.plan.names())

    def due(self, done: int) -> bool:
        every = self.plan.every_steps if self.active else 0
        return self.active and (done == self.cfg.trainer.max_steps or bool(every and done % every == 0))

    def start(self, start: int) -> None:
        """Step 0: every suite when `eval.before`, and general suites whose base score is not
        cached (forgetting needs it); a resumed run takes the base from its step-0 point."""
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

    def after_step(self, done: int) -> None:
        if self.due(done):
            self._point(done, self.plan.names())

    # ------------------------------------------------------------------ rank 0

    def _point(self, step: int, names: list[str]) -> None:
        from tunefleet.train.state import gather_trainable

        weights = gather_trainable(self.ctx.policy) if self.ctx.policy.sharded else None
        if self.rank != 0:
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
        self.reporter.metrics(flat, step=step)
        self._write(result, flat, base if step == 0 else None)

    def _write(self, result, flat: dict, base: dict | None) -> None:
        from tunefleet.eval.runner import write_rows

        d = point_dir(self.eval_dir, result.step)
        d.mkdir(parents=True, exist_ok=True)
        for name, rows in result.rows.items():
            write_rows(name, rows, d / f"{name}.parquet")
        final = result.step == self.cfg.trainer.max_steps
        record = {"step": result.step, "final": final, "metrics": result.metrics, "flat": flat,
                  "errors": result.errors, "base": base}
        tmp = d / (METRICS_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
        tmp.replace(d / METRICS_FILE)  # atomic: the driver never reads half a file

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
