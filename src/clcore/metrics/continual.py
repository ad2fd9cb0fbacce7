"""The accuracy matrix and the continual-learning metrics derived from it.

$R[i, j]$ = test accuracy on task $j$ after training task $i$ (GEM, Lopez-Paz & Ranzato 2017, Sec. 2;
forgetting from Chaudhry et al. 2018, "Riemannian Walk", Sec. 4). Stored 0-based, NaN where
$j > i$ (not yet trained) or not evaluated; files and plots present tasks 1-based.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def average_accuracy(R: Tensor) -> Tensor:
    r"""$\mathrm{AA}_i = \operatorname{mean}_{j \le i} R[i, j]$ for every trained step $i$ (GEM Sec. 2, "ACC" at
    $i = T$).
    """
    T = R.shape[0]
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return torch.where(lower, R, torch.zeros_like(R)).sum(1) / lower.sum(1)


def backward_transfer(R: Tensor) -> float:
    r"""$\mathrm{BWT} = \frac{1}{T-1} \sum_{j<T} (R[T, j] - R[j, j])$ (GEM Sec. 2). NaN for a single task."""
    T = R.shape[0]
    if T < 2:
        return math.nan
    return float((R[T - 1, : T - 1] - R.diagonal()[: T - 1]).mean())


def forward_transfer(R: Tensor, before_training: Tensor, untrained: Tensor) -> float:
    r"""$\mathrm{FWT} = \frac{1}{T-1} \sum_{j \ge 2} (R[j-1, j] - b_j)$ (GEM Sec. 2).

    ``before_training[j]`` $= R[j-1, j]$, accuracy on task $j$ just before training it;
    ``untrained[j]`` $= b_j$, accuracy of the randomly initialised model on task $j$.
    """
    T = R.shape[0]
    if T < 2:
        return math.nan
    return float((before_training[1:T] - untrained[1:T]).mean())


def forgetting(R: Tensor) -> Tensor:
    r"""$f_j^k = \max_{j \le l < k} R[l, j] - R[k, j]$ for the last step $k = T$; entry $j$ for $j < T$.

    Chaudhry et al. 2018, Eq. 8, with the maximum over the steps since task $j$ was trained
    ($l \ge j$, 0-based rows): the entries before it are not measured (NaN) unless
    ``eval.zero_shot`` is on, and an accuracy a task had before it was learned is not one it can
    forget. The average $F_T$ is ``forgetting(R).mean()``.
    """
    T = R.shape[0]
    return (
        torch.stack([R[j : T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]) if T > 1 else R.new_zeros(0)
    )
