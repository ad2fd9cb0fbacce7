r"""The TAK regulariser: the KFAC quadratic form of a weight update (Porrello et al., ICLR 2026).

While task $t$ fine-tunes, its update $\tau$ is kept out of the directions the other tasks' features
are sensitive to by penalising $\tau^\top G \tau$, $G$ the Gauss-Newton matrix of those tasks at
$\theta_0$ (``kfac.compute_kfac_factors``). With $G \approx A \otimes B$ per linear layer (Martens &
Grosse, 2015) the quadratic form of the update $dW_{\text{aug}} = [dW, db]$ (bias as an extra
column) is

$$\operatorname{tr}\left(B \, dW_{\text{aug}} \, A \, dW_{\text{aug}}^\top\right),$$

and $\operatorname{vec}(d)^\top G \operatorname{vec}(d)$ for the parameter groups that keep a full
Gram matrix. Two ways to combine the factors of several tasks:

- Eq. 7 ("ideal"): one pair per task, $\sum_t w_t \operatorname{tr}(B_t \, dW A_t \, dW^\top)$,
  $w_t = N_t / N$.
- Eq. 8 (default): one accumulated pair,
  $\operatorname{tr}\left((\sum_t B_t) \, dW (\sum_t w_t A_t) \, dW^\top\right)$: memory of
  one task whatever the number of tasks. Summing the $B_t$ unweighted makes Eq. 8 about $T$ times
  Eq. 7 when the tasks are alike; the strength $\lambda$ absorbs that. Gram groups, which need no
  factorisation, use $\sum_t w_t G_t$ under both equations.

The overall strength $\lambda$ (500 in the paper) multiplies the returned value in the caller;
``scalers`` weights individual layers / groups (projection 0.1, norms and class token 10).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from clcore.algorithms.tak.kfac import KFACFactors, layer_param_name

WeightedFactors = Sequence[tuple[float, KFACFactors]]


def accumulate_factors(
    factors: Sequence[KFACFactors], ideal: bool = False
) -> list[tuple[float, KFACFactors]]:
    r"""Combine per-task factors for ``kfac_penalty`` with $w_t = N_t / \sum_s N_s$.

    Returns ``[(w_t, factors_t), ...]`` for Eq. 7 (``ideal=True``) and
    ``[(1.0, sum_t factors_t.scale(w_t))]``, i.e. $(\sum_t w_t A_t, \sum_t B_t)$, for Eq. 8.
    """
    if not factors:
        raise ValueError("accumulate_factors needs the factors of at least one task")
    total = sum(task.num_samples for task in factors)
    if total <= 0:
        raise ValueError("the tasks' factors hold no samples: cannot weight them by N_t / N")
    weights = [task.num_samples / total for task in factors]
    if ideal:
        return list(zip(weights, factors))
    return [(1.0, sum(task.scale(weight) for task, weight in zip(factors, weights)))]


def kfac_penalty(
    deltas: Mapping[str, Tensor],
    curvature: KFACFactors | WeightedFactors,
    scalers: Mapping[str, float] | None = None,
    *,
    strict: bool = True,
) -> Tensor:
    r"""sum over terms of weight $\times$ scaler $\times$
    ($\operatorname{tr}(B \, dW_{\text{aug}} \, A \, dW_{\text{aug}}^\top)$ or
    $\operatorname{vec}(d)^\top G \operatorname{vec}(d)$).

    Args:
        deltas: parameter name -> update $(\theta - \theta_0)$, differentiable; names as in the model
            the factors were computed on. A missing bias update of a factored layer counts as 0.
        curvature: one ``KFACFactors`` or the ``accumulate_factors`` output.
        scalers: layer (module) name or gram group name -> multiplier; unnamed ones use 1.
        strict: raise if a delta has no curvature, instead of leaving it unpenalised.
    """
    terms = [(1.0, curvature)] if isinstance(curvature, KFACFactors) else list(curvature)
    if not terms:
        raise ValueError("kfac_penalty needs at least one set of factors")
    scalers = dict(scalers or {})
    _check_names(deltas, terms[0][1], scalers, strict)

    total: Tensor | None = None
    for weight, factors in terms:
        for layer, (input_factor, output_factor) in factors.kronecker.items():
            update = _augmented_update(deltas, layer, input_factor, output_factor)
            if update is None:
                continue
            value = (
                weight
                * scalers.get(layer, 1.0)
                * kronecker_quadratic_form(input_factor, output_factor, update)
            )
            total = value if total is None else total + value
        for group, gram in factors.gram.items():
            names = factors.gram_params[group]
            if not any(name in deltas for name in names):
                continue
            flat = _flat_group_update(deltas, names, gram)
            value = weight * scalers.get(group, 1.0) * gram_quadratic_form(gram, flat)
            total = value if total is None else total + value
    if total is None:
        reference = next(iter(deltas.values()), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return total


def kronecker_quadratic_form(input_factor: Tensor, output_factor: Tensor, update: Tensor) -> Tensor:
    r"""$\operatorname{tr}(B U A U^\top)$ for $U$ [out, in]:
    $\operatorname{vec}(U)^\top (A \otimes B) \operatorname{vec}(U)$ without forming the Kronecker product.
    """
    dtype = torch.promote_types(update.dtype, input_factor.dtype)
    update = update.to(dtype)
    # tr(B U A U^T) = sum_ij (B U A)_ij U_ij: two matmuls instead of an (in*out)^2 matrix.
    return ((output_factor.to(dtype) @ update @ input_factor.to(dtype)) * update).sum()


def gram_quadratic_form(gram: Tensor, flat_update: Tensor) -> Tensor:
    r"""$\operatorname{vec}(d)^\top G \operatorname{vec}(d)$."""
    dtype = torch.promote_types(flat_update.dtype, gram.dtype)
    flat_update = flat_update.to(dtype)
    return flat_update @ (gram.to(dtype) @ flat_update)


def _augmented_update(
    deltas: Mapping[str, Tensor], layer: str, input_factor: Tensor, output_factor: Tensor
) -> Tensor | None:
    """[dW, db] when A carries the bias row (in + 1 wide), else dW; None if the layer did not move."""
    weight_delta = deltas.get(layer_param_name(layer, "weight"))
    bias_delta = deltas.get(layer_param_name(layer, "bias"))
    if weight_delta is None and bias_delta is None:
        return None
    if weight_delta is None:
        # The weight's shape, hence whether A has a bias row, is unknown without it.
        raise ValueError(f"layer {layer!r}: a bias update needs the weight update too (zeros if unchanged)")
    in_dim, out_dim = input_factor.shape[0], output_factor.shape[0]
    if weight_delta.shape == (out_dim, in_dim):
        if bias_delta is not None:
            raise ValueError(f"layer {layer!r}: a bias update was given but the factors exclude the bias")
        return weight_delta
    if weight_delta.shape != (out_dim, in_dim - 1):
        raise ValueError(
            f"layer {layer!r}: update of shape {tuple(weight_delta.shape)} does not fit factors "
            f"A {tuple(input_factor.shape)}, B {tuple(output_factor.shape)}"
        )
    if bias_delta is None:  # the bias trains in the factors but did not move
        bias_delta = weight_delta.new_zeros(out_dim)
    return torch.cat([weight_delta, bias_delta.unsqueeze(1)], dim=1)


def _flat_group_update(deltas: Mapping[str, Tensor], names: Sequence[str], gram: Tensor) -> Tensor:
    if missing := [name for name in names if name not in deltas]:
        # The Gram matrix does not record the members' sizes, so zeros cannot be made up here.
        raise ValueError(
            f"gram group over {list(names)}: give updates for {missing} too (zeros if unchanged)"
        )
    flat = torch.cat([deltas[name].flatten() for name in names])
    if flat.numel() != gram.shape[0]:
        raise ValueError(
            f"gram group over {list(names)}: update has {flat.numel()} numbers, G is {gram.shape[0]}"
        )
    return flat


def _check_names(
    deltas: Mapping[str, Tensor], factors: KFACFactors, scalers: Mapping[str, float], strict: bool
):
    covered = {layer_param_name(layer, attr) for layer in factors.kronecker for attr in ("weight", "bias")}
    covered.update(name for names in factors.gram_params.values() for name in names)
    if strict and (uncovered := sorted(set(deltas) - covered)):
        raise ValueError(
            f"no curvature for the updates of {uncovered}; add them to the factors or pass strict=False"
        )
    if unknown := sorted(set(scalers) - set(factors.kronecker) - set(factors.gram)):
        raise ValueError(f"scalers name unknown layers / groups {unknown}")
