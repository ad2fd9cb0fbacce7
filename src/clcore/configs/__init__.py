"""Hydra configs shipped with clcore (found by `clrun` from any directory)."""
