"""Online RL pieces, pure torch: advantage estimators, KL estimators, the clipped policy loss.

Shapes: N sequences in a step (P prompts x G samples, grouped contiguously: rows g*G..g*G+G-1
are one prompt's samples), T token positions aligned with the collated labels, `mask` [N, T]
1.0 on response tokens.

Every estimator returns per-token advantages [N, T] (0 off the mask), so one loss serves
GRPO, RLOO and REINFORCE++; their configs are in config/rl.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunefleet.algorithms.base import LossInputs, LossOutput, masked_sum


@dataclass
class AdvantageInputs:
    """What an estimator sees for a whole optimizer step (every rank's rows, in order).

    rewards: [N] scalar reward per sequence; mask: [N, T]; group_size: G;
    kl: [N, T] per-token KL estimate of the behaviour policy against the reference (only
    for estimators that fold the KL into the reward; zeros otherwise).
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    group_size: int
    kl: torch.Tensor | None = None


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] -> [N / G, G] in float64: a float32 group mean of equal rewards rounds (3 x 0.9
    averages to 0.9 + 6e-8), and dividing that residue by `std + eps` made a gradient."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.to(torch.float64).view(-1, group_size)


def _flat_groups(r: torch.Tensor) -> torch.Tensor:
    """[P, G] -> [P, 1] bool: the groups whose rewards are all equal (no learning signal)."""
    return r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)


def _per_token(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] float64 -> [N, T] in the mask's float dtype (at least float32), 0 off the mask."""
    dtype = torch.promote_types(mask.dtype, torch.float32)
    return seq_adv.to(dtype).unsqueeze(-1) * mask.to(dtype)


def grpo_advantages(inp: AdvantageInputs, cfg) -> torch.Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps) (std unbiased, as torch.std); without
    `scale_by_std`, A_i = r_i - mean_g. A group of equal rewards gets exactly 0. Returns [N, T]."""
    r = _groups(inp.rewards, inp.group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if cfg.scale_by_std:
        adv = adv / (r.std(dim=1, keepdim=True) + cfg.eps)
    adv = adv.masked_fill(_flat_groups(r), 0.0)
    return _per_token(adv.reshape(-1), inp.mask)


def rloo_advantages(inp: AdvantageInputs, cfg) -> torch.Tensor:
    """A_i = r_i - (sum_g - r_i) / (G - 1): each sample's baseline is the mean of the
    others in its group (unbiased). A group of equal rewards gets exactly 0 (rounding of
    sum_g - r_i could leave a residue). Returns [N, T]."""
    r = _groups(inp.rewards, inp.group_size)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (inp.group_size - 1)
    adv = (r - baseline).masked_fill(_flat_groups(r), 0.0)
    return _per_token(adv.reshape(-1), inp.mask)


def reinforce_pp_advantages(inp: AdvantageInputs, cfg) -> torch.Tensor:
    """REINFORCE++: token rewards -kl_beta * kl_t, plus the sequence reward on its last
    response token; returns-to-go (gamma 1) G_t = sum_{s >= t} r_s; then whitened over every
    response token of the batch: (G - mean) / (std + eps); exactly 0 everywhere when every
    return is equal (no signal). Computed in float64. Returns [N, T]."""
    mask = inp.mask.to(torch.float64)
    kl = inp.kl.to(torch.float64) if inp.kl is not None else torch.zeros_like(mask)
    token_r = -cfg.kl_beta * kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values  # [N]; -1: empty response
    has = last >= 0
    token_r[has, last[has]] += inp.rewards.to(torch.float64)[has]
    returns = token_r.flip(-1).cumsum(-1).flip(-1) * mask
    n = mask.sum().clamp(min=1)
    mean = returns.sum() / n
    var = (((returns - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    adv = (returns - mean) / (var.sqrt() + cfg.eps) * mask
    on = returns[mask > 0]
    if on.numel() == 0 or on.max() == on.min():
        adv = torch.zeros_like(adv)
    return adv.to(torch.promote_types(inp.mask.dtype, torch.float32))


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi: [.., T] -> [.., T].

    k1 = log pi - log pi_ref (unbiased, can be negative);
    k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, always >= 0; Schulman's k3).
    """
    log_ratio = logps - ref_logps
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; known: k1, k3")


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """The per-token KL term of the loss: the estimator's value, with a gradient that pulls
    pi toward pi_ref (tokens sampled from pi). [.., T] -> [.., T].

    k3: its own gradient (1 - pi_ref / pi) d log pi; under pi its expectation is
        -sum_x pi_ref(x) d log pi(x) = d KL(pi_ref || pi): a pull toward the reference.
    k1: its own gradient would be d log pi, whose expectation under pi is sum_x d pi(x) = 0
        whatever pi_ref is: no pull at all. So k1 keeps its value (the loss still adds
        beta * the estimate) but takes the score-function gradient of KL(pi || pi_ref),
        (log pi - log pi_ref) d log pi (the gradient of k2 = (log pi - log pi_ref)^2 / 2),
        whose expectation under pi is exactly d KL(pi || pi_ref).
    """
    kl = kl_estimate(logps, ref_logps, estimator)
    if estimator != "k1":
        return kl
    log_ratio = (logps - ref_logps).detach()
    return kl.detach() + log_ratio * (logps - logps.detach())


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, inputs: LossInputs, how: str) -> torch.Tensor:
    """Token: sum over every response token of the step / its token count. Sequence: each
    response's token mean, summed / the step's sequence count. Both use global counts."""
    if how == "token":
        return masked_sum(per_token, mask) / inputs.num_tokens
    lengths = mask.sum(-1).clamp(min=1)
    return ((per_token * mask).sum(-1) / lengths).sum() / inputs.num_sequences


def policy_loss(inputs: LossInputs, cfg) -> LossOutput:
    """PPO-clip policy-gradient loss against the behaviour policy that sampled the tokens.

    extras: "advantages" [B, T], "behaviour_logps" [B, T] (the rollout engine's log-probs),
    "ref_logps" [B, T] when `cfg.kl_beta > 0` and the KL goes into the loss, and "entropy" [B, T]
    (the policy's per-token entropy, no grad) when the model was asked for it.
    per-token loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
                     + kl_beta * KL_t(pi || pi_ref)
    Metrics (sums over the step, so they add up across micro-batches and ranks): clip
    fraction (tokens whose clipped term is active, so their gradient is 0), KL, entropy (token mean
    of the distribution's entropy), neg_logp (-log pi of the sampled tokens), mean ratio.
    """
    mask, logps = inputs.mask, inputs.logps
    adv, old = inputs.extras["advantages"], inputs.extras["behaviour_logps"]
    log_ratio = (logps - old) * mask
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = torch.maximum(-adv * ratio, -adv * clipped)
    metrics = {}
    n = inputs.num_tokens
    if "ref_logps" in inputs.extras:
        kl = kl_estimate(logps, inputs.extras["ref_logps"], cfg.kl_estimator)
        if not cfg.KL_IN_REWARD:
            per_token = per_token + cfg.kl_beta * kl_penalty(logps, inputs.extras["ref_logps"], cfg.kl_estimator)
        metrics["kl"] = masked_sum(kl.detach(), mask) / n
    with torch.no_grad():
        # Tokens whose clipped term is the one in force (as TRL counts them): their gradient is 0.
        hit = ((adv > 0) & (ratio > 1.0 + cfg.clip_high)) | ((adv < 0) & (ratio < 1.0 - cfg.clip_low))
        metrics["clip_frac"] = masked_sum(hit.float(), mask) / n
        # neg_logp: the sampled tokens' NLL, a noisy one-sample estimate of the entropy (and off
        # by the ratio when off-policy); entropy: -sum_v p_v log p_v of the whole distribution,
        # when the model computed it (extras["entropy"] [B, T], models/policy.py).
        metrics["neg_logp"] = masked_sum(-logps, mask) / n
        if "entropy" in inputs.extras:
            metrics["entropy"] = masked_sum(inputs.extras["entropy"], mask) / n
        metrics["ratio"] = masked_sum(ratio, mask) / n
    return LossOutput(_aggregate(per_token, mask, inputs, cfg.aggregation), metrics)


ADVANTAGES = {"grpo": grpo_advantages, "rloo": rloo_advantages, "reinforce_pp": reinforce_pp_advantages}


def get_advantage(algorithm_type: str):
    """The estimator registered for `algorithm.type` (KeyError lists what is registered)."""
    try:
        return ADVANTAGES[algorithm_type]
    except KeyError:
        raise KeyError(f"no advantage estimator for algorithm.type={algorithm_type!r}; "
                       f"known: {sorted(ADVANTAGES)}") from None
