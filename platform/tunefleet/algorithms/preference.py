"""Offline preference losses: DPO, cDPO, IPO, SimPO, ORPO, KTO. Pure torch.

Pairwise layout: a micro-batch of b pairs has B = 2b rows, rows [0, b) chosen and rows
[b, 2b) rejected, pair i = (row i, row b + i). `num_sequences` counts *pairs* of the whole
optimizer step, so each loss is sum(per-pair terms) / num_sequences and micro-batch losses
add up to the full-batch loss. Metrics are contributions of the same kind (they sum to
batch means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunefleet.algorithms.base import LossInputs, LossOutput, StepStatistic, sequence_sum


def split_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[2b, ...] -> (chosen [b, ...], rejected [b, ...]); an odd row count is a layout bug."""
    if x.shape[0] % 2:
        raise ValueError(f"pairwise batch needs an even number of rows (chosen then rejected), got {x.shape[0]}")
    b = x.shape[0] // 2
    return x[:b], x[b:]


def reference_seq_logps(inputs: LossInputs) -> torch.Tensor:
    """Reference sequence log-probs [B]: precomputed sums, or summed per-token values."""
    if "ref_seq_logps" in inputs.extras:
        return inputs.extras["ref_seq_logps"].to(inputs.logps.dtype)
    if "ref_logps" in inputs.extras:
        return sequence_sum(inputs.extras["ref_logps"], inputs.mask)
    raise KeyError("this loss needs reference log-probs: extras['ref_seq_logps'] or extras['ref_logps']")


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, n: float) -> dict[str, torch.Tensor]:
    """Implicit rewards per pair [b] -> summed contributions to the batch means."""
    c, r = chosen.detach(), rejected.detach()
    return {"rewards/chosen": c.sum() / n, "rewards/rejected": r.sum() / n, "rewards/margin": (c - r).sum() / n,
            "accuracy": (c > r).float().sum() / n}


def _dpo_margin(inputs: LossInputs, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = beta * [(pi_c - ref_c) - (pi_r - ref_r)] per pair [b], and the two rewards."""
    delta = sequence_sum(inputs.logps, inputs.mask) - reference_seq_logps(inputs)
    dc, dr = split_pairs(delta)
    return beta * (dc - dr), beta * dc, beta * dr


def dpo_loss(inputs: LossInputs, cfg) -> LossOutput:
    """-log sigmoid(h); exactly ln 2 when policy == reference."""
    h, rc, rr = _dpo_margin(inputs, cfg.beta)
    loss = -F.logsigmoid(h).sum() / inputs.num_sequences
    return LossOutput(loss, _pair_metrics(rc, rr, inputs.num_sequences))


def cdpo_loss(inputs: LossInputs, cfg) -> LossOutput:
    """Conservative DPO (label smoothing eps): -(1-eps) log sigmoid(h) - eps log sigmoid(-h)."""
    h, rc, rr = _dpo_margin(inputs, cfg.beta)
    per_pair = -(1 - cfg.eps) * F.logsigmoid(h) - cfg.eps * F.logsigmoid(-h)
    return LossOutput(per_pair.sum() / inputs.num_sequences, _pair_metrics(rc, rr, inputs.num_sequences))


def _mean_logps(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-averaged sequence log-probs [B]."""
    return sequence_sum(logps, mask) / mask.sum(-1).clamp(min=1)


def ipo_loss(inputs: LossInputs, cfg) -> LossOutput:
    """IPO: (h - 1/(2 beta))^2 with h on length-averaged log-ratios (the convention of the
    IPO paper's token-level form and TRL's `ipo`): h = (pi_c - ref_c)/|y_c| - (pi_r - ref_r)/|y_r|."""
    lengths = inputs.mask.sum(-1).clamp(min=1)
    delta = (sequence_sum(inputs.logps, inputs.mask) - reference_seq_logps(inputs)) / lengths
    dc, dr = split_pairs(delta)
    h = dc - dr
    loss = ((h - 1 / (2 * cfg.beta)) ** 2).sum() / inputs.num_sequences
    return LossOutput(loss, _pair_metrics(cfg.beta * dc, cfg.beta * dr, inputs.num_sequences))


def simpo_loss(inputs: LossInputs, cfg) -> LossOutput:
    """SimPO: -log sigmoid(beta/|y_c| pi_c - beta/|y_r| pi_r - gamma); no reference."""
    rewards = cfg.beta * _mean_logps(inputs.logps, inputs.mask)
    rc, rr = split_pairs(rewards)
    loss = -F.logsigmoid(rc - rr - cfg.gamma).sum() / inputs.num_sequences
    return LossOutput(loss, _pair_metrics(rc, rr, inputs.num_sequences))


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) for p = exp(mean_logp) < 1, computed stably."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def orpo_loss(inputs: LossInputs, cfg) -> LossOutput:
    """ORPO: NLL(y_c) - lam * log sigmoid(log odds(y_c) - log odds(y_r)), where NLL is the
    chosen response's mean per-token NLL and odds use p = exp(mean per-token log-prob)."""
    mean = _mean_logps(inputs.logps, inputs.mask)
    mc, mr = split_pairs(mean)
    odds_term = F.logsigmoid(_log_odds(mc) - _log_odds(mr))
    per_pair = -mc - cfg.lam * odds_term
    n = inputs.num_sequences
    metrics = _pair_metrics(mc, mr, n)
    metrics.update({"nll": (-mc.detach()).sum() / n, "log_odds_ratio": odds_term.detach().sum() / n})
    return LossOutput(per_pair.sum() / n, metrics)


def _kto_sums(extras: dict[str, torch.Tensor]) -> dict[str, float]:
    """One micro-batch's part of the step's KTO statistics: the sum and count of its
    mismatched pairs' log-ratios kl_logps - ref_kl_logps [B], and its desirable and
    undesirable rows (kto_label [B])."""
    kl = (extras["kl_logps"].double() - extras["ref_kl_logps"].double())
    good = extras["kto_label"].double()
    return {"kl_sum": float(kl.sum()), "kl_rows": float(kl.numel()), "desirable": float(good.sum()),
            "undesirable": float((1 - good).sum())}


def _kto_finish(sums: dict[str, float]) -> dict[str, torch.Tensor]:
    """z0 = clamp(mean log-ratio of the step's mismatched pairs, min=0) (no gradient: it is
    a baseline, not a target) and the step's row counts of each side."""
    z0 = max(sums["kl_sum"] / max(sums["kl_rows"], 1.0), 0.0)
    return {"kl_z0": torch.tensor(z0), "kto_desirable": torch.tensor(sums["desirable"]),
            "kto_undesirable": torch.tensor(sums["undesirable"])}


# Evaluated by the step over every micro-batch and rank (algorithms/base.py StepStatistic).
KTO_STEP_STATISTIC = StepStatistic(_kto_sums, _kto_finish)


def kto_loss(inputs: LossInputs, cfg) -> LossOutput:
    """KTO on unpaired rows [B] with extras kto_label (1 desirable / 0 undesirable).

    r = pi - ref; z0 = clamp(mean(kl_logps - ref_kl_logps), min=0) over the mismatched
    prompt/completion pairs of the whole step, detached: extras "kl_z0" (and the step's
    side counts "kto_desirable", "kto_undesirable") from KTO_STEP_STATISTIC; without them
    this micro-batch is taken as the whole step. Desirable rows: w_d (1 - sigmoid(beta (r -
    z0))); undesirable: w_u (1 - sigmoid(beta (z0 - r))). Metrics: kl (z0), and the step
    means of beta * r over its desirable rows (rewards/chosen) and its undesirable ones
    (rewards/rejected; 0 for a side the step lacks).
    """
    r = sequence_sum(inputs.logps, inputs.mask) - reference_seq_logps(inputs)
    step = inputs.extras if "kl_z0" in inputs.extras else _kto_finish(_kto_sums(inputs.extras))
    z0 = step["kl_z0"].to(r.device, r.dtype).detach()
    good = inputs.extras["kto_label"].to(r.dtype)
    desirable = cfg.desirable_weight * (1 - torch.sigmoid(cfg.beta * (r - z0)))
    undesirable = cfg.undesirable_weight * (1 - torch.sigmoid(cfg.beta * (z0 - r)))
    per_row = good * desirable + (1 - good) * undesirable
    n = inputs.num_sequences
    rewards = cfg.beta * r.detach()
    n_good = step["kto_desirable"].to(r.device, r.dtype).clamp(min=1)
    n_bad = step["kto_undesirable"].to(r.device, r.dtype).clamp(min=1)
    # Contributions to step-wide values: z0 by this micro-batch's share of the rows, each
    # side's reward sum over the step's count of that side.
    metrics = {"kl": z0 * (r.shape[0] / n),
               "rewards/chosen": (rewards * good).sum() / n_good,
               "rewards/rejected": (rewards * (1 - good)).sum() / n_bad}
    return LossOutput(per_row.sum() / n, metrics)
