"""Evaluation: task metrics on held-out examples, base model vs adapter, and the results table."""
