"""Choosing the scaling coefficient alpha on validation data.

Ilharco et al., ICLR 2023, Sec. 3-4 and App. B; rule as in the reference code of Ortiz-Jimenez et
al. (``find_optimal_coef``): alphas are visited in grid order and the first best one wins.

- Task addition: the alpha with the highest validation score (average normalised accuracy by
  default, i.e. mean over tasks of merged accuracy / fine-tuned accuracy).
- Task negation: among the alphas that keep the control task's validation accuracy at or above
  ``control_floor`` (95% of the pre-trained model's), the one with the lowest validation accuracy
  on the target task: the strongest forgetting the control task allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def _check_scores(scores: Mapping[float, float], what: str) -> None:
    if not scores:
        raise ValueError(f"no {what} scores to choose alpha from")
    bad = {alpha: score for alpha, score in scores.items() if not math.isfinite(score)}
    if bad:
        raise ValueError(f"{what} scores must be finite; got {bad}")


def select_addition_alpha(val_scores: Mapping[float, float]) -> float:
    """argmax over alpha of ``val_scores`` (first of equal maxima in the mapping's order)."""
    _check_scores(val_scores, "validation")
    best_alpha, best_score = None, -math.inf
    for alpha, score in val_scores.items():
        if score > best_score:
            best_alpha, best_score = alpha, score
    return best_alpha


def select_negation_alpha(
    target_val: Mapping[float, float], control_val: Mapping[float, float], control_floor: float
) -> float | None:
    """argmin over the admissible alphas of the target accuracy; None if no alpha keeps the control above the floor.

    Admissible: ``control_val[alpha] >= control_floor``. First of equal minima in the mapping's order.
    """
    _check_scores(target_val, "target")
    _check_scores(control_val, "control")
    if target_val.keys() != control_val.keys():
        raise ValueError("target and control scores must cover the same alphas")
    best_alpha, best_target = None, math.inf
    for alpha, target in target_val.items():
        if control_val[alpha] >= control_floor and target < best_target:
            best_alpha, best_target = alpha, target
    return best_alpha
