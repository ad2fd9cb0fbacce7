"""Finetuning: the lower-bound baseline."""

from __future__ import annotations

from clcore.algorithms.base import CLAlgorithm


class Finetuning(CLAlgorithm):
    """Train backbone and the current heads on each task in turn, with nothing against forgetting.

    The naive sequential baseline of every CL paper (e.g. HAT, Serra et al. 2018, Sec. 4 "SGD").
    Everything it does is ``CLAlgorithm``'s default behaviour.
    """
