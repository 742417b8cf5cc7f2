"""The one training loop and the Ray Train plumbing around it."""
