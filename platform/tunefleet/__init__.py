"""tunefleet: elastic LLM post-training on Ray Train, vLLM and MLflow."""

__version__ = "0.1.0"
