"""aTLAS: task vectors composed with learned anisotropic scaling.

Zhang et al., "Knowledge Composition using Task Vectors with Learned Anisotropic Scaling",
NeurIPS 2024:

    theta = theta_0 + sum_t sum_b lambda_{t,b} tau_{t,b}

with one learnable coefficient per task vector t and parameter block b (a block is one parameter
tensor). Only the lambdas train: the weights are computed functionally
(``torch.func.functional_call``), so the base model and the task vectors stay constants. Objectives:
cross-entropy on few labelled shots, or prediction entropy on unlabelled test data (test-time
adaptation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from clcore.task_arithmetic.linearize import LinearizedModel
from clcore.task_arithmetic.task_vectors import LinearTaskVector, TaskVector, unpack_task_vectors


class ATLASModel(nn.Module):
    """``model`` (holding theta_0) composed with ``task_vectors``; ``coefficients`` [T, B] is all that trains.

    - Blocks are the model's parameters that the task vectors have entries for; float buffers in the
      vectors (normalisation statistics) are not scaled: the model's own buffers are used.
    - A ``LinearizedModel`` base takes linear task vectors (Zhang et al. compose those too): the
      lambdas then scale the delta of the linear model.
    - The base model is frozen (``requires_grad_(False)``) so no optimiser touches it.

    Coefficients start at ``init_coef`` (0: the pre-trained model, as in the reference code).
    """

    def __init__(
        self,
        model: nn.Module,
        task_vectors: Sequence[TaskVector | Mapping[str, Tensor]],
        init_coef: float = 0.0,
    ) -> None:
        super().__init__()
        vectors, kind = unpack_task_vectors(task_vectors)
        linear_base = isinstance(model, LinearizedModel)
        if linear_base != (kind is LinearTaskVector):
            raise TypeError(
                "a LinearizedModel takes linear task vectors and a plain model standard ones: "
                "cast them with to_linear() / to_nonlinear()"
            )
        self.model = model.requires_grad_(False)
        # Names as functional_call on self.model sees them; task vectors use the wrapped model's names.
        prefix = "model." if linear_base else ""
        parameter_names = [name for name, _ in (model.model if linear_base else model).named_parameters()]
        self.block_names = [prefix + name for name in parameter_names if name in vectors[0]]
        if not self.block_names:
            raise ValueError("the task vectors have no entry for any parameter of the model")
        for block, name in enumerate(self.block_names):
            # [T, *shape]: all task vectors' block b, so the composition is one tensordot per block.
            stacked = torch.stack([vector[name[len(prefix) :]] for vector in vectors])
            self.register_buffer(f"task_vectors_block_{block}", stacked.to(model.get_parameter(name)))
        self.coefficients = nn.Parameter(torch.full((len(vectors), len(self.block_names)), float(init_coef)))

    @property
    def num_task_vectors(self) -> int:
        return self.coefficients.shape[0]

    def merged_parameters(self) -> dict[str, Tensor]:
        """theta_0 + sum_t lambda_{t,b} tau_{t,b} for every block b (differentiable in the lambdas)."""
        merged = {}
        for block, name in enumerate(self.block_names):
            stacked = self.get_buffer(f"task_vectors_block_{block}")
            composed = torch.tensordot(self.coefficients[:, block].to(stacked.dtype), stacked, dims=1)
            merged[name] = self.model.get_parameter(name).detach() + composed
        return merged

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.merged_parameters(), args, kwargs)

    @torch.no_grad()
    def merged_state_dict(self) -> dict[str, Tensor]:
        """The base model's state dict with the composed weights: loads into a copy of the base model."""
        state = self.model.state_dict()
        state.update({name: value.detach().clone() for name, value in self.merged_parameters().items()})
        return state


def cross_entropy_objective(logits: Tensor, targets: Tensor | None) -> Tensor:
    """Supervised few-shot objective (aTLAS few-shot recognition): mean cross-entropy on labelled shots."""
    if targets is None:
        raise ValueError("the cross-entropy objective needs labels: batches of (inputs, targets)")
    return F.cross_entropy(logits, targets)


def entropy_objective(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Unsupervised test-time objective (aTLAS test-time adaptation): mean Shannon entropy of the predictions.

    H = -sum_c p_c log p_c with p = softmax(logits); labels, if any, are ignored.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


OBJECTIVES: dict[str, Callable[[Tensor, Tensor | None], Tensor]] = {
    "cross_entropy": cross_entropy_objective,
    "entropy": entropy_objective,
}


def fit_atlas(
    atlas: ATLASModel,
    batches: Iterable[Any],
    objective: str | Callable[[Tensor, Tensor | None], Tensor] = "cross_entropy",
    head: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    epochs: int = 1,
    lr: float = 1e-1,
    weight_decay: float = 0.1,
) -> list[float]:
    """Train the coefficients of ``atlas`` for ``epochs`` passes over ``batches``; returns the losses.

    ``batches`` yields ``(inputs, targets)`` or bare ``inputs`` (test-time adaptation), on the model's
    device. ``head`` maps the model's output to logits (e.g. a frozen zero-shot head); without one the
    model's output are the logits. Default optimiser: AdamW(lr=0.1, weight_decay=0.1) over the
    coefficients, the reference few-shot script's setting.
    """
    objective_fn = OBJECTIVES.get(objective) if isinstance(objective, str) else objective
    if objective_fn is None:
        raise ValueError(
            f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)} or pass a callable"
        )
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if optimizer is None:
        optimizer = torch.optim.AdamW([atlas.coefficients], lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(epochs):
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                inputs, targets = batch[0], (batch[1] if len(batch) > 1 else None)
            else:
                inputs, targets = batch, None
            outputs = atlas(inputs)
            loss = objective_fn(head(outputs) if head is not None else outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses
