"""A one-line status at a fixed interval: step/total, loss, tokens/s, ETA."""

from __future__ import annotations

import time


def _fmt_secs(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class StatusLine:
    """Prints at most every `every_s` seconds (and always on the last step)."""

    def __init__(self, total: int, every_s: float, start_step: int = 0, prefix: str = "train"):
        self.total, self.every_s, self.prefix = total, every_s, prefix
        self.t0 = time.monotonic()
        self.start_step = start_step
        self.last = 0.0

    def update(self, step: int, metrics: dict[str, float], force: bool = False) -> str | None:
        now = time.monotonic()
        if not force and step < self.total and now - self.last < self.every_s:
            return None
        self.last = now
        done = step - self.start_step
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = [f"[{self.prefix}] step {step}/{self.total}"]
        # RL steps also show what matters there: reward, accuracy, staleness.
        for key in ("loss", "reward_mean", "accuracy", "staleness_mean", "lr", "grad_norm", "tokens_per_s"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4g}")
        parts.append(f"{rate:.2f} step/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.1f} s/step")
        parts.append(f"eta {_fmt_secs(eta) if eta != float('inf') else '?'}")
        line = " | ".join(parts)
        print(line, flush=True)
        return line
