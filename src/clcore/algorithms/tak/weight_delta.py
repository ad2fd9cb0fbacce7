r"""A trainable update $\tau$ of selected parameters of a frozen network, applied in tangent space or not.

Porrello et al., "Dataless Weight Disentanglement in Task Arithmetic via Kronecker-Factored
Approximate Curvature" (ICLR 2026, arXiv 2602.17385): task $t$ fine-tunes an update $\tau_t$ of some
parameters of the pre-trained network $\theta_0$, which itself never changes. The network sees

$$
\begin{aligned}
&\text{tangent (Ortiz-Jimenez et al., NeurIPS 2023, Eq. 2):}
    && f(x; \theta_0) + J_\theta f(x; \theta_0) \, \tau \\
&\text{non-linear (Ilharco et al., ICLR 2023):}
    && f(x; \theta_0 + \tau)
\end{aligned}
$$

the first with one forward-mode pass (``torch.func.jvp``) whose tangent is $\tau$, the second with
``torch.func.functional_call``. With an ``output_map`` $g$ (TAK's ``tangent_of: normalised``: the
L2 normalisation) the tangent model is that of $g \circ f$,
$g(f(x; \theta_0)) + J_\theta (g \circ f)(x; \theta_0) \, \tau$, as the reference implementation
linearises the normalised image features. Because $\theta_0$ stays in the network and $\tau$ is a separate set
of tensors, a merged task vector is evaluated exactly like a trained one: pass it as ``delta``.

$\tau$ is either a full tensor per parameter (initialised to zero) or, with LoRA (Hu et al., ICLR
2022), ``up @ down`` with ``up`` [out, r] zeros and ``down`` [r, in] Kaiming-uniform, so $\tau = 0$
at the start of every task either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from clcore.task_arithmetic.linearize import OutputMap


def _key(name: str) -> str:
    # Parameter names contain "."; a ParameterDict key may not.
    return name.replace(".", "/")


class WeightDelta(nn.Module):
    r"""$\tau$ for the parameters named in ``shapes``; ``lora_ranks[name]`` makes that entry low-rank.

    ``materialize()`` returns ``{name: tau[name]}``, differentiable w.r.t. the trainable tensors.
    LoRA entries must be 2-D weights ``[out, in]``.
    """

    def __init__(self, shapes: Mapping[str, torch.Size], lora_ranks: Mapping[str, int] | None = None) -> None:
        super().__init__()
        lora_ranks = dict(lora_ranks or {})
        unknown = sorted(set(lora_ranks) - set(shapes))
        if unknown:
            raise ValueError(f"LoRA ranks given for parameters that are not updated: {unknown}")
        if not shapes:
            raise ValueError("WeightDelta needs at least one parameter to update")
        self.names = list(shapes)
        self.full = nn.ParameterDict()
        self.lora_up = nn.ParameterDict()
        self.lora_down = nn.ParameterDict()
        for name, shape in shapes.items():
            shape = torch.Size(shape)
            if name in lora_ranks:
                if len(shape) != 2 or lora_ranks[name] < 1:
                    raise ValueError(
                        f"LoRA needs a 2-D weight and a rank >= 1: {name} {tuple(shape)}, rank {lora_ranks[name]}"
                    )
                rank = lora_ranks[name]
                self.lora_up[_key(name)] = nn.Parameter(torch.zeros(shape[0], rank))
                self.lora_down[_key(name)] = nn.Parameter(torch.zeros(rank, shape[1]))
            else:
                self.full[_key(name)] = nn.Parameter(torch.zeros(shape))
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        r"""$\tau = 0$: full entries and LoRA ``up`` to zero, LoRA ``down`` Kaiming-uniform (as
        nn.Linear).
        """
        for parameter in self.full.values():
            parameter.zero_()
        for up, down in zip(self.lora_up.values(), self.lora_down.values()):
            up.zero_()
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))

    def materialize(self) -> dict[str, Tensor]:
        delta = {}
        for name in self.names:
            key = _key(name)
            delta[name] = self.full[key] if key in self.full else self.lora_up[key] @ self.lora_down[key]
        return delta

    @torch.no_grad()
    def load_full(self, vector: Mapping[str, Tensor]) -> None:
        r"""Set $\tau$ to ``vector`` (every entry must be a full, non-LoRA entry)."""
        if set(vector) != set(self.names):
            raise ValueError(
                f"task vector entries differ from the updated parameters: {sorted(set(vector) ^ set(self.names))[:5]}"
            )
        for name, tensor in vector.items():
            key = _key(name)
            if key not in self.full:
                raise ValueError(f"{name} is a LoRA entry: a full tensor cannot be loaded into it")
            self.full[key].copy_(tensor)


def forward_with_delta(
    model: nn.Module,
    delta: Mapping[str, Tensor],
    inputs: Any,
    tangent: bool,
    output_map: OutputMap | None = None,
) -> Tensor:
    r"""``g(model(inputs))`` at $\theta_0$ + ``delta``: linearised (first-order Taylor) if ``tangent``,
    else exact; ``g`` is ``output_map`` (None: the identity).

    ``model`` holds $\theta_0$; only the parameters named in ``delta`` are varied. Gradients reach
    ``delta`` (the jvp's tangent is differentiable), never $\theta_0$. With ``tangent`` the map is
    linearised together with the model: $g(f(\theta_0)) + J (g \circ f)(\theta_0) \, \delta$, not
    $g$ of the linearised $f$.
    """
    parameters = dict(model.named_parameters())
    missing = [name for name in delta if name not in parameters]
    if missing:
        raise KeyError(f"delta entries that are not parameters of the model: {missing[:5]}")
    theta_0 = {name: parameters[name].detach() for name in delta}
    delta = {name: tensor.to(theta_0[name].dtype) for name, tensor in delta.items()}
    output_map = output_map if output_map is not None else _identity
    if not tangent:
        moved = {name: theta_0[name] + delta[name] for name in delta}
        return output_map(functional_call(model, moved, (inputs,)))

    def model_at(params: dict[str, Tensor]) -> Tensor:
        return output_map(functional_call(model, params, (inputs,)))

    output, output_change = jvp(model_at, (theta_0,), (delta,))
    return output + output_change


def _identity(output: Any) -> Any:
    return output
