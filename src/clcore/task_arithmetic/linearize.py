"""A network made linear in its parameters around its initial point theta_0.

Ortiz-Jimenez, Favero & Frossard, "Task Arithmetic in the Tangent Space: Improved Editing of
Pre-Trained Models", NeurIPS 2023 (linearised fine-tuning):

    f_lin(x; theta) = f(x; theta_0) + J_theta f(x; theta_0) (theta - theta_0)

The Jacobian-vector product is one forward-mode pass (``torch.func.jvp`` over
``torch.func.functional_call``): roughly the cost of two to three ordinary forward passes, with no
Jacobian ever materialised. The task vector of a model fine-tuned in this space is ``theta - theta_0``.

What is linearised: by default the network's own output f, as Ortiz-Jimenez et al. do (their CLIP
classification head normalises the linearised features afterwards). An ``output_map`` g (a
parameter-free function of the output, e.g. ``normalize_features``) is linearised together with
the network instead: the model is then

    g(f(x; theta_0)) + J_theta (g o f)(x; theta_0) (theta - theta_0),

the first-order Taylor expansion of g o f. The reference implementation of TAK (Porrello et al.,
ICLR 2026) linearises the L2-normalised image features this way; the two differ to first order by
the radial part of J f (theta - theta_0), which the normalisation removes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp

OutputMap = Callable[[Any], Any]


def normalize_features(features: Tensor) -> Tensor:
    """L2 normalisation along the last dimension (``F.normalize``): an ``output_map`` for CLIP-style features."""
    return F.normalize(features, dim=-1)


def _escape(name: str) -> str:
    # Buffer names may not contain ".": keep the parameter path readable in the state dict.
    return name.replace(".", "/")


class _FrozenParameters(nn.Module):
    """theta_0 as buffers: saved in the state dict, moved by ``.to()``, never seen by an optimiser."""

    def __init__(self, named_parameters: list[tuple[str, Tensor]]) -> None:
        super().__init__()
        self.names = [name for name, _ in named_parameters]
        for name, param in named_parameters:
            self.register_buffer(_escape(name), param.detach().clone())

    def as_dict(self) -> dict[str, Tensor]:
        return {name: self.get_buffer(_escape(name)) for name in self.names}


def _add_outputs(primal: Any, tangent: Any) -> Any:
    """``primal + tangent`` leaf by leaf, for models that return tuples, lists or dicts of tensors."""
    if isinstance(primal, Tensor):
        return primal + tangent if primal.is_floating_point() else primal
    if isinstance(primal, dict):
        return {key: _add_outputs(primal[key], tangent[key]) for key in primal}
    if isinstance(primal, (tuple, list)):
        return type(primal)(_add_outputs(p, t) for p, t in zip(primal, tangent))
    return primal


class LinearizedModel(nn.Module):
    """``model`` linearised around the parameters it holds when wrapped (theta_0).

    - ``self.model`` keeps the *current* parameters theta (initialised to theta_0): they are the
      trainable parameters, so any optimiser over ``parameters()`` trains the linear model, and the
      state dict keeps the wrapped model's parameter names under ``model.``.
    - theta_0 is a frozen copy held as buffers (``theta0.``), untouched by training.
    - Buffers (normalisation statistics, masks) pass through unlinearised: the forward sees the
      model's current buffers, and in-place updates it makes (BatchNorm running stats) are kept.
    - ``forward(*args, **kwargs)`` takes whatever the wrapped model takes.
    - ``output_map`` (default None: the model's output itself): a parameter-free function g of the
      output, linearised with the model, so the output is g(f(theta_0)) + J (g o f)(theta_0) (theta -
      theta_0) (module docstring). It must be picklable (a module-level function) for the wrapped
      model to be saved whole.

    Weight decay on ``parameters()`` decays theta, not theta - theta_0; regularise the delta with
    ``delta()`` if that is what is meant.
    """

    def __init__(self, model: nn.Module, output_map: OutputMap | None = None) -> None:
        super().__init__()
        self.model = model
        self.output_map = output_map
        self.theta0 = _FrozenParameters(list(model.named_parameters()))
        if hasattr(model, "output_dim"):
            # Lets a linearised backbone stand where a CLBackbone is expected (heads read output_dim).
            self.output_dim = model.output_dim

    def theta_0(self) -> dict[str, Tensor]:
        """The linearisation point, by parameter name of the wrapped model."""
        return self.theta0.as_dict()

    def delta(self) -> dict[str, Tensor]:
        """theta - theta_0 per parameter (differentiable w.r.t. theta)."""
        theta_0 = self.theta0.as_dict()
        return {name: param - theta_0[name] for name, param in self.model.named_parameters()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        theta_0 = self.theta0.as_dict()
        delta = self.delta()  # the tangent: gradients reach theta through it
        buffers = dict(self.model.named_buffers())

        def model_at(params: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor]]:
            # torch.func forbids in-place updates of captured tensors: the forward mutates local
            # copies, returned as aux (plain values) and written back below.
            local_buffers = {name: buffer.clone() for name, buffer in buffers.items()}
            output = functional_call(self.model, (params, local_buffers), args, kwargs)
            if self.output_map is not None:
                output = self.output_map(output)  # g o f is what gets linearised
            return output, local_buffers

        try:
            output, output_tangent, new_buffers = jvp(model_at, (theta_0,), (delta,), has_aux=True)
        except NotImplementedError as error:
            if "forward AD" not in str(error):
                raise
            raise NotImplementedError(
                "LinearizedModel needs forward-mode AD through every op of the model, and one op has "
                f"none ({error}). Fused attention kernels are the usual cause: build the CLIP backbone with "
                "explicit_attention=True (clcore.backbones.clip.use_explicit_attention) before linearising."
            ) from error
        with torch.no_grad():
            for name, buffer in buffers.items():
                buffer.copy_(new_buffers[name])
        return _add_outputs(output, output_tangent)
