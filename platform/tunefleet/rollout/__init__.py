"""Rollout generation: vLLM engine actors in a RolloutPool, weight sync, offline datasets.

Import the pieces from their modules (`tunefleet.rollout.pool`, `.sync`, `.offline`); this
package module stays import-light (no vLLM: engines import it inside their actors).
"""

from tunefleet.rollout.samples import Request, Rollout, RolloutError, Sample, Sampling, SyncError

__all__ = ["Request", "Rollout", "RolloutError", "Sample", "Sampling", "SyncError"]
