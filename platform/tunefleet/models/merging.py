"""Model merging on state dicts: linear, TIES and DARE over task vectors (torch only).

Every parent is a fine-tune of one base; its task vector is tau_i = theta_i - theta_base,
per tensor. A method turns the task vectors into one merged delta and the result is
theta = base + scale * delta:

* linear: delta = sum_i w_i tau_i (w_i default 1/n; task arithmetic).
* ties (Yadav et al. 2023, "TIES-Merging"): trim each tau_i to its top-`density` fraction by
  magnitude, elect a sign per element as sign(sum_i w_i trim(tau_i)), and take the disjoint
  (weighted) mean over the parents whose trimmed value is nonzero and agrees with it.
  Worked example, one tensor of 4 elements, density 0.5 (keep the top 2 of 4), w = 1::

      tau_1 = [ 3, -1,  0.5, -2]  -> trim -> [ 3,  0, 0, -2]
      tau_2 = [-1, -4,  2,    1]  -> trim -> [ 0, -4, 2,  0]
      sum   = [ 3, -4,  2,   -2]  -> elect sign [+, -, +, -]
      delta = [ 3, -4,  2,   -2]  (each element has exactly one agreeing parent)

  and with tau_3 = [-2, 0.1, 0.2, -3] -> trim -> [-2, 0, 0, -3] added, sum = [1, -4, 2, -5],
  signs [+, -, +, -]: element 0 keeps only parent 1 (parent 3 disagrees), element 3 averages
  parents 1 and 3: delta = [3, -4, 2, (-2 - 3)/2] = [3, -4, 2, -2.5].
* dare (Yu et al. 2024, "Language Models are Super Mario"): drop each element of tau_i with
  probability p = 1 - density and rescale the survivors by 1/(1 - p), then combine linearly.
  The drop masks come from a torch.Generator seeded by (seed, parent index, tensor name)
  through a stable hash, so a merge is reproducible across processes and machines.
* dare_ties: the DARE drop-and-rescale, then TIES's sign election and disjoint mean.

`check_specs` runs before any weights are read: the same tensor names, shapes and dtypes
in the base and every parent, else MergeError naming the first mismatch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]
Spec = Mapping[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, dtype name)


class MergeError(ValueError):
    """A merge that cannot be done as asked; raised before any work, naming the mismatch."""


def spec_of(sd: StateDict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The Spec of a state dict (what `check_specs` compares)."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}


def check_specs(base: Spec, parents: Mapping[str, Spec], base_label: str = "base") -> None:
    """MergeError unless every parent (label -> Spec) has exactly the base's tensors, with
    equal shapes and dtypes. The message names the tensor, the two shapes (or dtypes), or
    which side lacks the tensor."""
    for label, spec in parents.items():
        missing = sorted(set(base) - set(spec))
        if missing:
            raise MergeError(f"parent {label} lacks tensor {missing[0]!r} that {base_label} has "
                             f"({len(missing)} missing in all)")
        extra = sorted(set(spec) - set(base))
        if extra:
            raise MergeError(f"parent {label} has tensor {extra[0]!r} that {base_label} lacks "
                             f"({len(extra)} extra in all)")
        for name in sorted(base):
            (bshape, bdtype), (pshape, pdtype) = base[name], spec[name]
            if tuple(bshape) != tuple(pshape):
                raise MergeError(f"tensor {name!r}: shape {list(pshape)} in parent {label} but "
                                 f"{list(bshape)} in {base_label}")
            if bdtype != pdtype:
                raise MergeError(f"tensor {name!r}: dtype {pdtype} in parent {label} but {bdtype} in {base_label}")


def check_same_base(bases: Mapping[str, str]) -> str:
    """`bases`: parent label -> its recorded base model. Returns the common base; MergeError
    naming two parents and both bases when they differ."""
    if not bases:
        raise MergeError("no parent records its base model: give the base explicitly")
    (first, want), *rest = bases.items()
    for label, got in rest:
        if got != want:
            raise MergeError(f"parents have different bases: {first} is a fine-tune of {want}, "
                             f"{label} of {got}")
    return want


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights for {n} parents: give one weight per parent")
    return [float(w) for w in weights]


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density {density}: must be in (0, 1]")


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ceil(density * numel) largest-magnitude elements of `tau` (any shape), zero the rest."""
    k = math.ceil(density * tau.numel())
    if k >= tau.numel():
        return tau.clone()
    flat = tau.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(tau.shape)


def disjoint_mean(taus: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`taus`: [n, *shape] (already trimmed/dropped), `weights`: [n]. Elect the sign of
    sum_i w_i tau_i per element; average w-weighted over the tau_i that are nonzero with that
    sign (0 where none agree). Returns [*shape]."""
    w = weights.view(-1, *([1] * (taus.dim() - 1)))
    sign = torch.sign((w * taus).sum(0))
    agree = (taus != 0) & (torch.sign(taus) == sign)
    den = (w * agree).sum(0)
    return torch.where(den != 0, (w * taus * agree).sum(0) / den.clamp_min(1e-12), torch.zeros_like(den))


def stable_seed(seed: int, parent: int, name: str) -> int:
    """A 63-bit generator seed from (seed, parent index, tensor name); stable, unlike hash()."""
    digest = hashlib.sha256(f"{seed}:{parent}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare(tau: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Drop each element with probability 1 - density (Bernoulli mask from a Generator seeded
    `seed`), rescale the survivors by 1 / density. Same shape as `tau`."""
    if density >= 1.0:
        return tau.clone()
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(tau.shape, generator=gen) < density
    return torch.where(keep, tau / density, torch.zeros_like(tau))


# Each combine: (task vectors [n, *shape], weights [n], tensor name, options) -> delta [*shape].
def _linear(taus, w, name, opt):
    return (w.view(-1, *([1] * (taus.dim() - 1))) * taus).sum(0)


def _ties(taus, w, name, opt):
    return disjoint_mean(torch.stack([trim(t, opt["density"]) for t in taus]), w)


def _dropped(taus, name, opt):
    return torch.stack([dare(t, opt["density"], stable_seed(opt["seed"], i, name)) for i, t in enumerate(taus)])


def _dare(taus, w, name, opt):
    return _linear(_dropped(taus, name, opt), w, name, opt)


def _dare_ties(taus, w, name, opt):
    return disjoint_mean(_dropped(taus, name, opt), w)


# method -> (combine, default weights are 1/n (True) or 1 each (False: TIES's disjoint mean
# normalises by the agreeing weights itself)).
METHODS: dict[str, tuple[Callable, bool]] = {
    "linear": (_linear, True),
    "ties": (_ties, False),
    "dare": (_dare, True),
    "dare_ties": (_dare_ties, False),
}


def check_options(method: str, n: int, weights: Sequence[float] | None = None, density: float = 1.0) -> None:
    """MergeError for an unknown method, too few parents, a wrong number of weights or a bad density."""
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if n < 2:
        raise MergeError(f"a merge needs at least two parents, got {n}")
    _weights(weights, n)
    _check_density(density)


def merge_state_dicts(base: StateDict, parents: Sequence[StateDict], method: str = "linear",
                      weights: Sequence[float] | None = None, density: float = 1.0, scale: float = 1.0,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """theta = base + scale * combine(tau_1..tau_n) per tensor (see the module doc).

    Arithmetic is float32; each result is cast back to the base tensor's dtype. Tensors that
    are not floating point (buffers such as position ids) are the base's, unchanged."""
    check_options(method, len(parents), weights, density)
    check_specs(spec_of(base), {f"#{i}": spec_of(p) for i, p in enumerate(parents)})
    combine, mean = METHODS[method]
    w = torch.tensor(_weights(weights, len(parents)) if (weights is not None or mean) else [1.0] * len(parents))
    opt = {"density": density, "seed": seed}
    out = {}
    for name, b in base.items():
        if not b.is_floating_point():
            out[name] = b.clone()
            continue
        b32 = b.float()
        taus = torch.stack([p[name].float() - b32 for p in parents])
        out[name] = (b32 + scale * combine(taus, w, name, opt)).to(b.dtype)
    return out
