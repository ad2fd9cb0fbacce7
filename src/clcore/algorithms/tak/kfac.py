r"""KFAC factors of the Gauss-Newton matrix of a feature extractor, computed once at $\theta_0$.

Porrello et al., "Dataless Weight Disentanglement in Task Arithmetic via Kronecker-Factored
Approximate Curvature" (ICLR 2026, arXiv 2602.17385): a task vector $\tau$ interferes with task $t$
through $\tau^\top G_t \tau$, with $G_t = \mathbb{E}_x[J^\top J]$ the Gauss-Newton matrix of the
(optionally L2-normalised) features $z(x)$ w.r.t. the fine-tuned parameters. Because $G_t$ is too
large to store, each selected ``nn.Linear`` $s = W a \; (+\, b)$ gets the Kronecker factorisation
of Martens & Grosse (2015), $G_W \approx A \otimes B$, with $A$ built from the layer inputs $a$
(a 1 appended when the bias trains) and $B$ from the output gradients
$g_{n,k} = \partial z_{n,k} / \partial s_n$, summed over the output dims $k$.

The sum over $k$ is what "backpropagating random projections" estimates: with
$r \sim \mathcal{N}(0, I)$, $g_r = \sum_k r_k g_k$ satisfies
$\mathbb{E}_r[g_r g_r^\top] = \sum_k g_k g_k^\top$. ``num_samples=0`` backpropagates every one-hot
$e_k$ instead (exact, one backward per feature dimension).

Monte Carlo samples are SUMMED, not averaged (the reference implementation, Mammoth's
``models/tak_utils/fisher_kfac.py``, ``KFACComputer.compute``, backpropagates
``(features * randn_like(features)).sum()`` once per sample into hooks that accumulate): with $S$
samples $B$ estimates $S$ times the exact one, so ``num_samples`` scales the penalty and the strength
$\lambda$ of the paper (500, with $S = 1$) goes with it. Sample $s$ of a seeded run draws from its
own generator seeded ``monte_carlo_seed(seed, s)``, so $S$ samples with seed $\sigma$ give exactly the
sum of the $S$ one-sample factors with seeds ``monte_carlo_seed(sigma, s)``.

Inputs with a token dimension ($a_{n,l}$, $g_{n,l}$ for token $l = 1..L$), ``token_mode``:

- ``"expand"`` (default), KFAC-expand as the reference computes it (Mammoth's
  ``models/tak_utils/hooks.py``, ``hook_forward_batch`` and ``hook_backward``, both
  ``x.T @ ((1 / R) * x)`` over the flattened tokens): per-token outer products averaged over the
  tokens, on BOTH sides,

  $$A = \frac{1}{N}\sum_n \frac{1}{L}\sum_l a_{n,l} a_{n,l}^\top, \qquad
    B = \frac{1}{N}\sum_n \frac{1}{L}\sum_l \sum_k g_{n,l,k} \, g_{n,l,k}^\top .$$

  Choose it to reproduce the paper: its hyper-parameters ($\lambda$, the per-kind scalers) were tuned
  on this scale. (Eschenhagen et al.'s KFAC-expand has no $1/L$ on $B$, which in their setting sums
  a per-token loss; the reference's $1/L$ on $B$ is kept here.)
- ``"reduce"``, KFAC-reduce (Eschenhagen et al., "Kronecker-Factored Approximate Curvature for
  Modern Neural Network Architectures", NeurIPS 2023): the token-AVERAGED input and the
  token-SUMMED output gradient,

  $$\bar a_n = \frac{1}{L} \sum_l a_{n,l}, \quad \bar g_{n,k} = \sum_l g_{n,l,k}, \quad
    A = \frac{1}{N}\sum_n \bar a_n \bar a_n^\top, \quad B = \frac{1}{N}\sum_n \sum_k \bar g_{n,k} \bar g_{n,k}^\top .$$

  Cheaper (outer products of one vector per example instead of $L$), and it keeps the scale of the
  weight-shared Jacobian $\partial z / \partial W = \sum_l g_l a_l^\top$: it is exact when every
  token receives the same output gradient (e.g. a last linear layer followed by mean pooling, see
  ``tests/library/tak/test_kfac.py``), whereas expand is exact when the tokens are independent
  examples. On a ViT it is NOT the reference's scale: on a tiny open_clip ViT with 17 tokens the
  reduce penalty is an order of magnitude above the reference's on attention layers and a few times
  above on the MLPs (``tests/library/tak/test_kfac_conventions.py`` prints the ratios), so the
  paper's $\lambda$ does not transfer.

Inputs without a token dimension ([batch, in], e.g. the output projection) have $L = 1$: both modes
coincide.

Small parameter groups that are not linear layers (layer norms, class token, ...) get their full
Gram matrix $\frac{1}{N}\sum_n \sum_k \operatorname{vec}(\partial z_{n,k} / \partial p)
\operatorname{vec}(\partial z_{n,k} / \partial p)^\top$ instead (summed over Monte Carlo samples as
well), from per-example gradients with ``torch.func`` (the model must be vmappable for those groups);
the reference's ``hook_backward_layer_norm`` / ``hook_backward_cls_token`` compute the same per-example
gradients.

All factors are divided by the number of examples $N$; the penalty
$\operatorname{tr}(B \, dW A \, dW^\top)$ is $\mathbb{E}_x \lVert J \tau \rVert^2$ up to the Kronecker
approximation, the token convention above and the factor $S$ of the Monte Carlo sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

# A Gram group of P parameters stores P^2 numbers; beyond this a matrix weight belongs to KFAC.
DEFAULT_MAX_GRAM_SIZE = 16384
# How inputs with a token dimension are factored (module docstring): the reference's, and KFAC-reduce.
TOKEN_MODES = ("expand", "reduce")


@dataclass
class KFACFactors:
    """Curvature of one data set (or an accumulation of several, see ``__add__`` / ``scale``).

    Attributes:
        kronecker: linear-layer module name -> $(A, B)$; $A$ is [in (+1 with bias), same], $B$ is [out, out].
        gram: group name -> full Gram matrix over the concatenated flattened group parameters.
        gram_params: group name -> the parameter names, in the order they are flattened into G.
        num_samples: $N$, the number of examples the expectations were taken over.
    """

    kronecker: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    gram: dict[str, Tensor] = field(default_factory=dict)
    gram_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    num_samples: int = 0

    def __add__(self, other: KFACFactors) -> KFACFactors:
        """Factor-wise sum $(A_1 + A_2, B_1 + B_2, G_1 + G_2, N_1 + N_2)$.

        This is not the sum of the Kronecker products: summing the factors is the single-pair
        accumulation of Porrello et al. (2026), Eq. 8, used together with ``scale``.
        """
        if not isinstance(other, KFACFactors):
            return NotImplemented
        if self.kronecker.keys() != other.kronecker.keys() or self.gram_params != other.gram_params:
            raise ValueError(
                "cannot add KFAC factors over different parameters: layers "
                f"{sorted(self.kronecker)} vs {sorted(other.kronecker)}, groups "
                f"{self.gram_params} vs {other.gram_params}"
            )
        kronecker = {
            name: (a + other.kronecker[name][0], b + other.kronecker[name][1])
            for name, (a, b) in self.kronecker.items()
        }
        gram = {name: g + other.gram[name] for name, g in self.gram.items()}
        return KFACFactors(kronecker, gram, dict(self.gram_params), self.num_samples + other.num_samples)

    def __radd__(self, other: Any) -> KFACFactors:
        # Lets ``sum(list_of_factors)`` start from the integer 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def scale(self, weight: float) -> KFACFactors:
        r"""The factors of $\texttt{weight} \cdot G$: $A$ and the Gram matrices are scaled, $B$ is kept.

        Putting the weight on $A$ only is what Eq. 8 (Porrello et al., 2026) needs:
        $\sum_t$ ``factors_t.scale(w_t)`` holds $(\sum_t w_t A_t, \sum_t B_t)$.
        """
        kronecker = {name: (a * weight, b) for name, (a, b) in self.kronecker.items()}
        gram = {name: g * weight for name, g in self.gram.items()}
        return KFACFactors(kronecker, gram, dict(self.gram_params), self.num_samples)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> KFACFactors:
        kronecker = {
            name: (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
            for name, (a, b) in self.kronecker.items()
        }
        gram = {name: g.to(device=device, dtype=dtype) for name, g in self.gram.items()}
        return KFACFactors(kronecker, gram, dict(self.gram_params), self.num_samples)

    def state_dict(self) -> dict[str, Any]:
        """Tensors, strings and ints only, so ``torch.load(weights_only=True)`` reads it back."""
        return {
            "num_samples": int(self.num_samples),
            "kronecker": {name: {"A": a, "B": b} for name, (a, b) in self.kronecker.items()},
            "gram": {
                name: {"matrix": g, "params": list(self.gram_params[name])} for name, g in self.gram.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> KFACFactors:
        try:
            kronecker = {name: (pair["A"], pair["B"]) for name, pair in state["kronecker"].items()}
            gram = {name: entry["matrix"] for name, entry in state["gram"].items()}
            gram_params = {name: tuple(entry["params"]) for name, entry in state["gram"].items()}
            num_samples = int(state["num_samples"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a KFACFactors state dict (missing or malformed {exc})") from exc
        for name, (a, b) in kronecker.items():
            if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.ndim == 2 and b.ndim == 2):
                raise ValueError(f"KFAC factors of layer {name!r} are not two matrices")
        for name, g in gram.items():
            if not (isinstance(g, Tensor) and g.ndim == 2):
                raise ValueError(f"Gram matrix of group {name!r} is not a matrix")
        return cls(kronecker, gram, gram_params, num_samples)


def layer_param_name(layer: str, attribute: str) -> str:
    """The parameter name of ``attribute`` ("weight" / "bias") of the module named ``layer``."""
    return f"{layer}.{attribute}" if layer else attribute


def linear_param_names(model: nn.Module, include_bias: bool = True) -> list[str]:
    """Names of every ``nn.Linear`` weight (and bias), the usual ``kfac_params`` selection."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            names.append(layer_param_name(module_name, "weight"))
            if include_bias and module.bias is not None:
                names.append(layer_param_name(module_name, "bias"))
    return names


def compute_kfac_factors(
    model: nn.Module,
    data: Iterable[Any],
    *,
    kfac_params: Iterable[str],
    gram_groups: Mapping[str, Sequence[str]] | None = None,
    num_samples: int = 1,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
    fraction: float = 1.0,
    max_batches: int | None = None,
    input_fn: Callable[[Any], Tensor] | None = None,
    sequence_first: bool = False,
    seed: int | None = None,
    max_gram_size: int = DEFAULT_MAX_GRAM_SIZE,
    token_mode: str = "expand",
) -> KFACFactors:
    r"""KFAC factors of $\mathbb{E}_x[J^\top J]$ for the features ``model(x)`` (Porrello et al., 2026;
    Martens & Grosse, 2015).

    Args:
        model: maps a batch of inputs to features [batch, dim]; run in eval mode here (restored after).
        data: an iterable of batches (a DataLoader); ``input_fn(batch)`` gives the model input,
            by default the batch itself or its first element.
        kfac_params: weights (and biases) of ``nn.Linear`` modules to factor. A layer's bias
            trains, and A gets the appended 1, iff its ``.bias`` is listed.
        gram_groups: group name -> parameter names whose full Gram matrix is kept
            (layer norms, class token, ...). Each group is at most ``max_gram_size`` numbers.
        num_samples: Monte Carlo projections per example, whose contributions are SUMMED (as the
            reference: $B$ and the Gram matrices estimate ``num_samples`` times the exact ones);
            0 = exact (one backward per feature dim).
        normalize: take the Jacobian of $z / \lVert z \rVert$ (CLIP's normalised features) instead of $z$.
        dtype: accumulation dtype of the factors (float32 or float64).
        fraction, max_batches: use only the first ``ceil(fraction * len(data))`` batches,
            and at most ``max_batches``; shuffle the loader for a random subset.
        sequence_first: linear-layer inputs are [tokens, batch, dim] (older open_clip), not [batch, ..., dim].
        seed: seeds the Monte Carlo projections for reproducible factors (sample ``s`` from a
            generator seeded ``monte_carlo_seed(seed, s)``); None draws from torch's global RNG.
        token_mode: how linear layers with a token dimension are factored (module docstring).
            ``"expand"`` (default): per-token outer products averaged over tokens on both sides,
            exactly the reference's (Mammoth's) scaling, so the paper's lambda and scalers transfer.
            ``"reduce"``: KFAC-reduce of Eschenhagen et al. (2023), token-averaged input and
            token-summed output gradient; cheaper, exact when all tokens share one output gradient
            (weight sharing followed by pooling), but on a ViT several times the reference's scale.

    Returns:
        ``KFACFactors`` holding expectations over the $N$ examples seen.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 (0 = exact backward), got {num_samples}")
    if token_mode not in TOKEN_MODES:
        raise ValueError(f"token_mode must be one of {TOKEN_MODES}, got {token_mode!r}")
    layers = _resolve_linear_layers(model, set(kfac_params))
    groups = _resolve_gram_groups(model, dict(gram_groups or {}), layers, max_gram_size)
    if not layers and not groups:
        raise ValueError("nothing to compute: no kfac_params and no gram_groups were given")
    input_fn = input_fn or _default_input
    device = next(model.parameters()).device

    tape = _LinearTape(layers, dtype, sequence_first, token_mode)
    gram_sums = {name: None for name in groups}
    seen = 0
    generators = None
    with _eval_mode(model), _weights_require_grad(layers), tape.recording(), torch.enable_grad():
        for batch in _first_batches(data, fraction, max_batches):
            inputs = input_fn(batch).to(device)
            tape.start_batch(inputs.shape[0])
            features = _features(model(inputs), normalize)
            tape.check_all_called()
            if generators is None and seed is not None:
                generators = [
                    torch.Generator(device=features.device).manual_seed(monte_carlo_seed(seed, sample))
                    for sample in range(num_samples)
                ]
            projections = _projections(num_samples, features, generators)
            if layers:
                tape.accumulate_output_grads(features, projections)
            del features
            tape.end_batch()
            for name, batch_sum in _gram_batch(model, groups, inputs, projections, normalize, dtype).items():
                gram_sums[name] = batch_sum if gram_sums[name] is None else gram_sums[name] + batch_sum
            seen += inputs.shape[0]
    if seen == 0:
        raise ValueError("the data yielded no batches: cannot take expectations over zero examples")

    kronecker = {name: (tape.input_sums[name] / seen, tape.output_grad_sums[name] / seen) for name in layers}
    gram = {name: total / seen for name, total in gram_sums.items()}
    return KFACFactors(kronecker, gram, {name: tuple(names) for name, names in groups.items()}, seen)


def monte_carlo_seed(seed: int, sample: int) -> int:
    """The seed of the generator that draws Monte Carlo sample ``sample`` of a run seeded ``seed``.

    Sample 0 uses ``seed`` itself, so a one-sample run seeded ``monte_carlo_seed(seed, s)`` draws
    exactly sample ``s`` of a many-sample run seeded ``seed``; the others are spread by the golden
    ratio increment (2^64 / phi) so nearby seeds do not share samples.
    """
    if sample == 0:
        return seed
    return (seed + sample * 0x9E3779B97F4A7C15) % 2**63


def _token_gram(tokens: Tensor) -> Tensor:
    """sum_n (1/L) sum_l x_nl x_nl^T of tokens [batch, L, d].

    KFAC-expand as such; for KFAC-reduce the caller first reduces the tokens to one ([batch, 1, d]:
    the mean input, the summed output gradient), which leaves sum_n xbar_n xbar_n^T.
    """
    flat = tokens.reshape(-1, tokens.shape[-1])
    return flat.T @ flat / tokens.shape[1]


class _LinearTape:
    """Forward hooks on the selected linear layers.

    During the forward, each hook adds its inputs' outer products (``token_mode``) to A's sum
    (so no input is kept) and records the layer output; ``accumulate_output_grads`` then asks
    autograd for d(r^T z)/d output of all layers at once per projection r, which leaves the
    parameters' ``.grad`` untouched.
    """

    def __init__(
        self,
        layers: dict[str, tuple[nn.Linear, bool]],
        dtype: torch.dtype,
        sequence_first: bool,
        token_mode: str = "expand",
    ):
        self.layers = layers
        self.dtype = dtype
        self.sequence_first = sequence_first
        self.token_mode = token_mode
        self.input_sums: dict[str, Tensor] = {}
        self.output_grad_sums: dict[str, Tensor] = {}
        self.outputs: dict[str, tuple[Tensor, int]] = {}
        self.batch_size = 0
        self.active = False  # off outside the hooked forward, e.g. in the vmapped Gram pass

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = [
            module.register_forward_hook(partial(self._record, name, train_bias))
            for name, (module, train_bias) in self.layers.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def start_batch(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.outputs = {}
        self.active = True

    def end_batch(self) -> None:
        self.outputs = {}  # frees the graph
        self.active = False

    def check_all_called(self) -> None:
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise ValueError(
                f"linear layers {missing} were never called through their forward, so no KFAC "
                "factors can be hooked (e.g. nn.MultiheadAttention uses out_proj.weight directly): "
                "use an attention with nn.Linear projections or put these parameters in a gram group"
            )

    def _record(self, name: str, train_bias: bool, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not self.active:
            return
        if name in self.outputs:
            raise ValueError(
                f"linear layer {name!r} was called twice in one forward; KFAC here assumes one call"
            )
        tokens = self._batch_first_tokens(args[0].detach(), name).to(self.dtype)  # [batch, tokens, in]
        if train_bias:  # the 1 of the bias, per token (its token mean is 1 too)
            tokens = torch.cat([tokens, tokens.new_ones(*tokens.shape[:2], 1)], dim=2)
        if self.token_mode == "reduce":
            tokens = tokens.mean(dim=1, keepdim=True)  # abar
        outer = _token_gram(tokens)
        self.input_sums[name] = self.input_sums[name] + outer if name in self.input_sums else outer
        # The version counter exposes an in-place op on the output (e.g. ReLU(inplace=True)),
        # after which autograd would return the gradient of the modified tensor instead.
        self.outputs[name] = (output, output._version)

    def _batch_first_tokens(self, x: Tensor, name: str) -> Tensor:
        if self.sequence_first and x.ndim >= 3:
            x = x.movedim(1, 0)
        if x.shape[0] != self.batch_size:
            raise ValueError(
                f"input of linear layer {name!r} has shape {tuple(x.shape)}, whose batch dim is not "
                f"{self.batch_size}; pass sequence_first=True for [tokens, batch, dim] layouts"
            )
        return x.reshape(self.batch_size, -1, x.shape[-1])

    def accumulate_output_grads(self, features: Tensor, projections: _Projections) -> None:
        names = list(self.outputs)
        for name in names:
            output, version = self.outputs[name]
            if output._version != version:
                raise ValueError(
                    f"the output of linear layer {name!r} was modified in place after the layer "
                    "(e.g. ReLU(inplace=True)); its output gradient cannot be read: use inplace=False"
                )
        outputs = [self.outputs[name][0] for name in names]
        for index in range(projections.count):
            grads = torch.autograd.grad(
                features,
                outputs,
                grad_outputs=projections.column(index),
                retain_graph=True,
                allow_unused=True,
            )
            for name, grad, output in zip(names, grads, outputs):
                if grad is None:  # the layer does not reach the features: zero curvature
                    grad = torch.zeros_like(output)
                tokens = self._batch_first_tokens(grad, name).to(self.dtype)  # [batch, tokens, out]
                if self.token_mode == "reduce":
                    tokens = tokens.sum(dim=1, keepdim=True)  # gbar
                outer = _token_gram(tokens)
                sums = self.output_grad_sums
                sums[name] = sums[name] + outer if name in sums else outer


@dataclass
class _Projections:
    """The vectors r backpropagated per example: one-hot e_k (exact) or N(0, I) (Monte Carlo, summed).

    ``per_example`` is [batch, S, dim] for Monte Carlo; None for the exact case, whose one-hot
    vectors are shared by the whole batch and never materialised per example.
    """

    count: int
    batch_size: int
    dim: int
    per_example: Tensor | None
    reference: Tensor

    def column(self, index: int) -> Tensor:
        if self.per_example is not None:
            return self.per_example[:, index]
        one_hot = torch.zeros(self.dim, dtype=self.reference.dtype, device=self.reference.device)
        one_hot[index] = 1.0
        return one_hot.expand(self.batch_size, self.dim)

    def all_for_vmap(self) -> tuple[Tensor, int | None]:
        """All projections for ``vmap`` over the batch: the tensor and its batch in_dim."""
        if self.per_example is not None:
            return self.per_example, 0
        eye = torch.eye(self.dim, dtype=self.reference.dtype, device=self.reference.device)
        return eye, None


def _projections(
    num_samples: int, features: Tensor, generators: Sequence[torch.Generator] | None
) -> _Projections:
    batch_size, dim = features.shape
    if num_samples == 0:
        return _Projections(dim, batch_size, dim, None, features.detach())
    # Unscaled: the factors SUM g_r g_r^T over the samples, as the reference does. Sample s draws
    # from its own generator (monte_carlo_seed), the global RNG when unseeded.
    gaussian = torch.stack(
        [
            torch.randn(
                batch_size,
                dim,
                generator=None if generators is None else generators[sample],
                dtype=features.dtype,
                device=features.device,
            )
            for sample in range(num_samples)
        ],
        dim=1,
    )  # [batch, S, dim]
    return _Projections(num_samples, batch_size, dim, gaussian, features.detach())


def _gram_batch(
    model: nn.Module,
    groups: dict[str, list[str]],
    inputs: Tensor,
    projections: _Projections,
    normalize: bool,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """sum_n sum_r vec(d r^T z_n / dp) vec(...)^T for each group, from per-example vjps (torch.func)."""
    if not groups:
        return {}
    params = dict(model.named_parameters())
    primals = {name: params[name].detach() for names in groups.values() for name in names}

    def grads_of_one(example: Tensor, vectors: Tensor) -> dict[str, Tensor]:
        def features_of(group_params: dict[str, Tensor]) -> Tensor:
            output = functional_call(model, group_params, (example.unsqueeze(0),))
            return _features(output, normalize).squeeze(0)

        _, pullback = vjp(features_of, primals)
        (grads,) = vmap(pullback)(vectors)  # name -> [S, *shape]
        return grads

    vectors, vectors_dim = projections.all_for_vmap()
    with torch.enable_grad():
        per_example = vmap(grads_of_one, in_dims=(0, vectors_dim))(inputs, vectors)  # name -> [B, S, *shape]
    sums = {}
    for group, names in groups.items():
        # detach: the hooked linear weights require grad during the computation, so without it each
        # Gram matrix would keep its batch's autograd graph alive (memory) and carry it into the penalty
        flat = torch.cat([per_example[name].detach().flatten(2) for name in names], dim=2).to(dtype)
        sums[group] = torch.einsum("bsp,bsq->pq", flat, flat)
    return sums


def _features(output: Any, normalize: bool) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"the model must return features of shape [batch, dim], got {shape}")
    return F.normalize(output, dim=-1) if normalize else output


def _resolve_linear_layers(model: nn.Module, names: set[str]) -> dict[str, tuple[nn.Linear, bool]]:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers: dict[str, tuple[nn.Linear, bool]] = {}
    for name in sorted(names):
        if name not in params:
            raise ValueError(f"kfac_params: {name!r} is not a parameter of the model")
        module_name, _, attribute = name.rpartition(".")
        module = modules.get(module_name)
        if not isinstance(module, nn.Linear) or attribute not in ("weight", "bias"):
            raise ValueError(
                f"kfac_params: {name!r} is not the weight or bias of an nn.Linear; "
                "put it in a gram group (small parameters) or use an nn.Linear"
            )
        if attribute == "bias" and layer_param_name(module_name, "weight") not in names:
            raise ValueError(f"kfac_params: bias {name!r} is selected without its weight; use a gram group")
        layers[module_name] = (module, layer_param_name(module_name, "bias") in names)
    return layers


def _resolve_gram_groups(
    model: nn.Module, groups: dict[str, Sequence[str]], layers: dict[str, Any], max_gram_size: int
) -> dict[str, list[str]]:
    params = dict(model.named_parameters())
    factored = {layer_param_name(layer, attribute) for layer in layers for attribute in ("weight", "bias")}
    seen: set[str] = set()
    resolved = {}
    for group, names in groups.items():
        names = list(names)
        if not names:
            raise ValueError(f"gram group {group!r} is empty")
        for name in names:
            if name not in params:
                raise ValueError(f"gram group {group!r}: {name!r} is not a parameter of the model")
            if name in factored or name in seen:
                raise ValueError(f"parameter {name!r} is selected twice (KFAC layers and gram groups)")
            seen.add(name)
        size = sum(params[name].numel() for name in names)
        if size > max_gram_size:
            raise ValueError(
                f"gram group {group!r} has {size} numbers, so its Gram matrix would hold {size}^2; "
                f"the limit is {max_gram_size}: factor matrix weights with KFAC (an nn.Linear) instead"
            )
        resolved[group] = names
    return resolved


def _default_input(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"cannot find the model input in a batch of type {type(batch).__name__}; pass input_fn")


def _first_batches(data: Iterable[Any], fraction: float, max_batches: int | None) -> Iterator[Any]:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    limit = max_batches
    if fraction < 1.0:
        if not hasattr(data, "__len__"):
            raise ValueError("fraction < 1 needs data with a length; use max_batches instead")
        by_fraction = max(1, math.ceil(fraction * len(data)))  # type: ignore[arg-type]
        limit = by_fraction if limit is None else min(limit, by_fraction)
    for index, batch in enumerate(data):
        if limit is not None and index >= limit:
            return
        yield batch


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Factors describe the deterministic network at theta_0: no dropout, running BN statistics
    # (and vmap forbids the randomness of dropout in the Gram pass).
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _weights_require_grad(layers: dict[str, tuple[nn.Linear, bool]]) -> Iterator[None]:
    # A frozen zero-shot model still needs its linear outputs in the graph to read their gradients.
    previous = [(module.weight, module.weight.requires_grad) for module, _ in layers.values()]
    try:
        for weight, _ in previous:
            weight.requires_grad_(True)
        yield
    finally:
        for weight, flag in previous:
            weight.requires_grad_(flag)
