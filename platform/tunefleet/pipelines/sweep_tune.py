"""The Ray Tune side of `tunefleet sweep`: the scheduler, the searcher, the token budget and
the live status line (pipelines/sweep_job.py wires them into its Tuner).

Everything here lives in the campaign's driver and is pickled into Tune's experiment state,
so a restored campaign (`tunefleet sweep --resume`) gets copies of these objects as they were
when it started: whatever must survive the driver (what was stopped and why, the tokens
spent) is kept on disk by pipelines/sweep_state.py instead of in their attributes.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from pathlib import Path

from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

from tunefleet.pipelines.sweep_plan import Rungs
from tunefleet.pipelines.sweep_state import StopLog, TokenLog
from tunefleet.telemetry import campaign_status

STATUS_EVERY_S = 30.0
# A trial directory is `<trainable>_<trial id>_<N>_<params>`: N counts the experiment's trials
# from 1, and Tune's saved state keeps counting after a restore.
_TRIAL_DIR = re.compile(r"_[0-9a-f]{5,8}(?:_\d{5})?_(\d+)_")


def trial_index(trial) -> int:
    """Our trial index: `config["trial"]` (random and grid search plan trials up front), else
    Tune's own count of the experiment's trials (Optuna proposes each trial as it goes)."""
    if "trial" in (trial.config or {}):
        return int(trial.config["trial"])
    return int(str(trial.experiment_tag).split("_", 1)[0]) - 1


def index_from_dir(path: str) -> int | None:
    """trial_index from a trial's directory (what a trainable and a ResultGrid entry have)."""
    m = _TRIAL_DIR.search(Path(str(path)).name)
    return int(m.group(1)) - 1 if m else None


def result_index(res) -> int | None:
    """trial_index for a finished ResultGrid entry."""
    if "trial" in (res.config or {}):
        return int(res.config["trial"])
    return index_from_dir(getattr(res, "path", "") or "")


class FinalPointASHA(ASHAScheduler):
    """ASHA that records each trial it stops, and the result it stopped it on, in a StopLog
    (Tune kills the trial's driver a moment later, while its workers may still log a step or
    two). A trial's last eval point is no rung: stopping it there would kill its driver while
    it logs the final evaluation, and it has finished anyway."""

    def __init__(self, stop_log: StopLog, **kwargs):
        super().__init__(**kwargs)
        self.stop_log = stop_log

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("final"):
            return self.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP:
            self.stop_log.record(trial_index(trial), "asha", result)
        return action


class TrainCheckpointPBT(PopulationBasedTraining):
    """PBT over the trials' own Ray Train checkpoints. A trial's Tune function reports no
    Tune checkpoint of its own (TuneReportCallback forwards each Train checkpoint's path as
    the `checkpoint_path` metric), so a top trial's "save" is its newest Train checkpoint, and
    an exploiting trial restarts with it as its Tune checkpoint: the trainable starts a new
    Train run from it (pipelines/sweep_job.py). The exploiting trial keeps its own index and
    MLflow run; `pbt` in its config counts its generations and names the donor."""

    def __init__(self, storage_filesystem=None, max_step: int | None = None, **kwargs):
        super().__init__(require_attrs=False, **kwargs)  # checkpoint reports carry no objective
        self.filesystem, self.max_step = storage_filesystem, max_step
        self.newest: dict[str, tuple[str, int]] = {}  # Tune trial id -> (checkpoint path, step)

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("checkpoint_path"):
            self.newest[trial.trial_id] = (result["checkpoint_path"], int(result.get("step", 0)))
        if result.get("final"):  # the last point ends the trial: nothing to exploit any more
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        """Exploit the newest Train checkpoint of a top trial (not the one it had at its own
        last perturbation point: with trials reporting asynchronously, that can be a point older)."""
        from ray.tune import Checkpoint

        if trial not in lower_quantile:
            return
        donor = random.choice(upper_quantile)
        path, step = self.newest.get(donor.trial_id, (None, 0))
        if path is None or (self.max_step is not None and step >= self.max_step):
            # none yet, or its final one: restoring that would leave nothing to train
            print(f"[sweep] pbt: t{trial_index(donor):03d} has {'its final' if path else 'no'} checkpoint; "
                  f"t{trial_index(trial):03d} goes on as it is", flush=True)
            return
        self._trial_state[donor].last_checkpoint = Checkpoint(path, filesystem=self.filesystem)
        self._num_checkpoints += 1
        self._exploit(tune_controller, trial, donor)

    def _get_new_config(self, trial, trial_to_clone):
        new, operations = super()._get_new_config(trial, trial_to_clone)
        generation = int((trial.config.get("pbt") or {}).get("generation", 0)) + 1
        step = self.newest.get(trial_to_clone.trial_id, ("", 0))[1]
        new["trial"] = trial.config["trial"]  # PBT copies the donor's config; the trial stays itself
        new["pbt"] = {"generation": generation, "from": f"t{trial_index(trial_to_clone):03d}", "step": step}
        print(f"[sweep] pbt: t{trial_index(trial):03d} restores t{trial_index(trial_to_clone):03d}'s checkpoint "
              f"at step {step} (generation {generation}): {new['method']} {new['values']}", flush=True)
        return new, operations


def scheduler(r: Rungs | None, stop_log: StopLog, pbt: dict | None = None, storage_filesystem=None):
    """ASHA over `r` (FIFO without); PBT at `r`'s points when `pbt` holds its settings
    (hyperparam_mutations, quantile_fraction, resample_probability)."""
    if pbt is not None:
        return TrainCheckpointPBT(storage_filesystem, r.max_t, time_attr=r.time_attr,
                                  perturbation_interval=r.grace_period, **pbt)
    if r is None:
        return FIFOScheduler()
    # stop_last_trials=False: max_t places the rungs; a trial past it still runs to its last step
    return FinalPointASHA(stop_log, time_attr=r.time_attr, max_t=r.max_t, grace_period=r.grace_period,
                          reduction_factor=r.reduction_factor, stop_last_trials=False)


class ScoredOptuna(OptunaSearch):
    """Tune's OptunaSearch fed only the results that carry the objective: a trial also reports
    its checkpoints (no objective) through the same channel. A trial that ends on such a report
    is told with its last scored one. At module level: Tune pickles the searcher."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._scored: dict = {}

    def on_trial_result(self, trial_id: str, result: dict):
        if self.metric in result:
            self._scored[trial_id] = result
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if not result or self.metric not in result:
            result = self._scored.get(trial_id)
        super().on_trial_complete(trial_id, result, error)


def optuna_search(space, metric: str, mode: str, seed: int) -> ScoredOptuna:
    return ScoredOptuna(space=space, metric=metric, mode=mode, seed=seed)


class TokenBudget(Stopper):
    """Stops the whole campaign once its trials together have trained `budget` target tokens.
    Trials report their count at each eval point, so the campaign stops at one: the running
    trials are reported as stopped by the budget."""

    def __init__(self, budget: int | None, tokens: TokenLog):
        self.budget, self.tokens, self.hit = budget, tokens, False

    def __call__(self, trial_id, result) -> bool:
        if "train_tokens" in result:
            total = self.tokens.update(str(trial_id), float(result["train_tokens"]))
            self.hit = self.hit or (self.budget is not None and total >= self.budget)
        return False

    def stop_all(self) -> bool:
        return self.hit


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def eta(elapsed: float, done: int, total: int, wall_s: float | None, tokens: float,
        token_budget: int | None) -> str:
    """The soonest of: the trials left at the pace so far, the wall budget left, and the token
    budget left at the token rate so far. "?" before anything can be estimated."""
    guesses = []
    if done:
        guesses.append(elapsed / done * (total - done))
    if wall_s is not None:
        guesses.append(wall_s - elapsed)
    if token_budget and tokens > 0:
        guesses.append(elapsed * max(0.0, token_budget - tokens) / tokens)
    return _duration(min(guesses)) if guesses else "?"


class StatusLine(Callback):
    """A one-line status every STATUS_EVERY_S: trials by state, the best score so far, the
    budgets spent and an ETA; also exported as the campaign's Prometheus gauges."""

    def __init__(self, metric: str, mode: str, campaign: str, total: int, wall_s: float | None,
                 token_budget: int | None, tokens: TokenLog, stop_log: StopLog):
        self.metric, self.mode, self.campaign, self.total = metric, mode, campaign, total
        self.wall_s, self.token_budget, self.tokens, self.stop_log = wall_s, token_budget, tokens, stop_log
        self.last, self.best, self.started = 0.0, None, None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if v is not None and (self.best is None or (v > self.best[0] if self.mode == "max" else v < self.best[0])):
            self.best = (v, f"t{trial_index(trial):03d}")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        self.started = self.started or now  # a restored campaign counts from its restore
        if now - self.last < STATUS_EVERY_S:
            return
        self.last = now
        print(self.line(trials, now - self.started), flush=True)

    def line(self, trials, elapsed: float) -> str:
        state = [t.status for t in trials]
        stopped = set(self.stop_log.load())
        done = sum(s in ("TERMINATED", "ERROR") for s in state)
        n_stopped = sum(s == "TERMINATED" and trial_index(t) in stopped for s, t in zip(state, trials))
        running, failed = state.count("RUNNING"), state.count("ERROR")
        _export(self.campaign, running, n_stopped, done - n_stopped - failed, failed)
        best = f"{self.best[0]:.4g} ({self.best[1]})" if self.best else "none yet"
        spent = self.tokens.total()
        budget = f"{_duration(elapsed)}" + (f" of {_duration(self.wall_s)}" if self.wall_s else "")
        budget += f", {spent:.0f}" + (f" of {self.token_budget}" if self.token_budget else "") + " tokens"
        total = max(self.total, len(trials))  # Tune creates trials as it starts them
        pending = total - len(trials) + state.count("PENDING")
        return (f"[sweep] {total} trials: {running} running, {done - n_stopped - failed} done, {n_stopped} stopped, "
                f"{failed} failed, {pending} pending; best {self.metric} {best}; spent {budget}; "
                f"ETA {eta(elapsed, done, total, self.wall_s, spent, self.token_budget)}")


def _export(campaign: str, running: int, stopped: int, done: int, failed: int) -> None:
    """The campaign's Prometheus gauges (done: finished or failed). A metrics error warns
    once and never stops the campaign."""
    global _EXPORT_WARNED
    try:
        campaign_status(campaign, running=running, stopped=stopped, done=done + failed)
    except Exception as err:  # noqa: BLE001 - observability must not end a campaign
        if not _EXPORT_WARNED:
            warnings.warn(f"campaign metrics not exported: {err!r}", stacklevel=2)
            _EXPORT_WARNED = True


_EXPORT_WARNED = False
