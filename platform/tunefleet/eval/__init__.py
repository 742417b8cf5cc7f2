"""Evaluation: task accuracy with greedy decoding."""
