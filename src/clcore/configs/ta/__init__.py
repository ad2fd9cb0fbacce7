"""Hydra configs of ``clta``, the task-arithmetic protocol (primary config: task_arithmetic.yaml)."""
