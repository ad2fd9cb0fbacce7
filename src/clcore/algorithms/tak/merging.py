"""TAK's merge of the task vectors trained so far, as its reference implementation computes it.

Porrello et al. (ICLR 2026) evaluate theta_0 + merge(tau_1..tau_k) after each task, with the merge
of their code (Mammoth, ``models/tak_utils/merging.py``). ``merge_task_vectors`` is that merge.

How ``alpha_merging`` scales it (``library_alpha``):

- ``ta``, ``dare``, ``ties`` divide ``alpha_merging`` by the number k of merged vectors: the
  merged update is (alpha / k) * sum_t tau_t for ``ta`` (after DARE's drop-and-rescale for
  ``dare``), (alpha / k) * TIES' disjoint mean for ``ties``. So alpha = k means a coefficient of 1
  per task vector.
- ``iso``, ``iso_cts`` and ``tsv`` use ``alpha_merging`` as it is (Iso-C's, Iso-CTS' and TSV-M's own
  alpha; ``iso_cts`` is not in the reference, its alpha is the Iso-CTS paper's, see
  ``clcore.task_arithmetic.merging``).
- ``alpha_merging: one`` means a coefficient of 1 per task vector for ``ta`` / ``dare`` / ``ties``
  (the reference sets alpha to the number of tasks) and alpha = 1 for the others. The
  reference fixes alpha to the length of the whole sequence, which scales merges after task
  k < T by T / k; here the coefficient is 1 after every task, which is what "one" promises.
- The final alpha sweep (``alpha_sweep_start/end/step``) sets alpha = a * T for each a, as the
  reference does: for ``ta`` that is a coefficient a per task vector.

What is merged (``convention``):

- ``"mammoth"`` (the default): TIES and DARE as the reference computes them.

  - TIES (``mammoth_ties``): each 2-D tensor is merged on its own: per task, its entries are
    trimmed to those at least as large in magnitude as the (n - int(k n))-th smallest of its n
    entries (int(k n) + 1 kept when magnitudes are distinct; all with k = 1), the elected sign is
    sgn(sum_t trimmed_t), an entry whose sum is 0 takes the sign of the sum of the tensor's
    elected signs (the majority), and the disjoint mean averages the trimmed values of that sign
    (positive where the elected sign is > 0, negative otherwise). Every tensor that is not 2-D
    (biases, LayerNorm weights, the class embedding) is summed untouched. ``ties_k`` = 0.2 is the
    reference's top 20%.
  - DARE (``mammoth_dare``): the entries of 2-D tensors are dropped with probability ``dare_p``
    (0.7 in the reference) and the survivors rescaled by 1 / (1 - p); other tensors are summed
    untouched. Each task's masks come from a generator of their own, seeded from (``seed``,
    task index): a task's masks are the same in every merge that includes it (after each task,
    in the sweep), as the reference draws them once when the task is added. The reference draws
    them from the global RNG; here the global RNG is never touched, and the masks themselves
    cannot equal the reference's (another generator), only their law and their seed-dependence.
  - ``ta``, ``iso``, ``tsv``, ``iso_cts``: the library's (``clcore.task_arithmetic.merging``), which
    handles 2-D tensors and the rest as the reference does. Differences left: the reference
    factorises ``iso`` / ``tsv`` in float64 (here the vectors' dtype, float32 at least), and its
    TSV keeps int(r * (1 / T)) triplets per task where the library keeps max(1, r // T) (equal
    for every r <= 5000 and T <= 48; they differ when T > r, where the reference keeps none).

- ``"paper"``: the papers' definitions (``clcore.task_arithmetic.merge``): TIES trims the whole
  task vector flattened (1-D entries too) with one threshold per task vector, keeps
  int(k n) + 1 entries as the official TIES code, gives an entry whose trimmed values sum to 0 no
  sign (it merges to 0); DARE drops entries of every tensor, with all masks drawn in one call
  (seeded with ``seed``), so a task's mask depends on how many vectors are merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from clcore.task_arithmetic.merging import MERGE_METHODS, merge
from clcore.task_arithmetic.task_vectors import LinearTaskVector, TaskVector, unpack_task_vectors

PER_VECTOR_METHODS = ("ta", "dare", "ties")  # alpha is divided by the number of merged vectors
CONVENTIONS = ("mammoth", "paper")
METHODS = tuple(MERGE_METHODS)  # ta, ties, dare, iso, iso_cts, tsv


def library_alpha(method: str, alpha_merging: float | str, num_merged: int) -> float:
    """The ``alpha`` knob of ``merging.merge`` that gives the reference's scaling (module docstring).

    ``alpha_merging`` is ``'one'`` or a positive number (``TAK.config_problems`` refuses others).
    """
    if alpha_merging == "one":
        return 1.0
    return float(alpha_merging) / num_merged if method in PER_VECTOR_METHODS else float(alpha_merging)


def merge_task_vectors(
    task_vectors: Sequence[Mapping[str, Tensor]],
    method: str,
    alpha_merging: float | str,
    tangent: bool,
    dare_p: float = 0.7,
    ties_k: float = 0.2,
    device: torch.device | str | None = None,
    *,
    convention: str = "mammoth",
    seed: int = 0,
    common_space_fraction: float = 0.8,
) -> dict[str, Tensor]:
    """The merged update of ``task_vectors`` (plain ``{name: tensor}`` dicts), on ``device``.

    ``convention``: ``"mammoth"`` or ``"paper"`` (module docstring). ``seed``: DARE's masks (the
    run's seed). ``common_space_fraction``: Iso-CTS' share of the rank for the common subspace.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not task_vectors:
        raise ValueError("nothing to merge: no task vector yet")
    kind = LinearTaskVector if tangent else TaskVector
    vectors = [kind({name: tensor.to(device) for name, tensor in vector.items()}) for vector in task_vectors]
    alpha = library_alpha(method, alpha_merging, len(vectors))
    if convention == "mammoth" and method == "ties":
        return mammoth_ties(vectors, ties_k, alpha)
    if convention == "mammoth" and method == "dare":
        return mammoth_dare(vectors, dare_p, alpha, seed)
    knobs: dict[str, float] = {"alpha": alpha}
    if method == "dare":
        knobs.update(p=dare_p, seed=seed)
    elif method == "ties":
        knobs["k"] = ties_k
    elif method == "iso_cts":
        knobs["common_space_fraction"] = common_space_fraction
    return dict(merge(vectors, method=method, **knobs).vector)


# -- the reference's TIES and DARE ------------------------------------------------------------
def mammoth_ties_tensor(stacked: Tensor, k: float) -> Tensor:
    """The reference's TIES of one tensor from its task values ``stacked`` [T, *shape] (module docstring)."""
    num_tasks = stacked.shape[0]
    flat = stacked.reshape(num_tasks, -1)
    entries = flat.shape[1]
    if k < 1:  # k = 1 keeps everything, as the reference does
        threshold = flat.abs().kthvalue(entries - int(entries * k), dim=1, keepdim=True).values
        flat = flat * (flat.abs() >= threshold)
    elected = flat.sum(dim=0).sign()
    elected[elected == 0] = elected.sum().sign()  # no sign: the majority's (may be 0 too)
    agrees = torch.where(elected > 0, flat > 0, flat < 0)
    selected = flat * agrees
    merged = selected.sum(dim=0) / (selected != 0).sum(dim=0).clamp(min=1)
    return merged.reshape(stacked.shape[1:])


def mammoth_ties(task_vectors: Sequence[Mapping[str, Tensor]], k: float, alpha: float) -> dict[str, Tensor]:
    """alpha * (``mammoth_ties_tensor`` of each 2-D entry, sum of each other entry)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k!r}")
    vectors, _ = unpack_task_vectors(task_vectors)
    merged = {}
    for name in vectors[0]:
        stacked = torch.stack([vector[name] for vector in vectors])
        merged[name] = alpha * (mammoth_ties_tensor(stacked, k) if stacked.dim() == 3 else stacked.sum(dim=0))
    return merged


def dare_task_seed(seed: int, task: int) -> int:
    """The seed of task ``task``'s DARE masks in a run seeded ``seed`` (distinct per pair, in [0, 2^64))."""
    state = np.random.SeedSequence([seed % 2**64, task]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def mammoth_dare_masks(vector: Mapping[str, Tensor], p: float, seed: int, task: int) -> dict[str, Tensor]:
    """Task ``task``'s keep masks (True: kept) of the 2-D entries of ``vector``, on the entries' devices.

    Drawn on the CPU from ``torch.Generator().manual_seed(dare_task_seed(seed, task))``, entry by
    entry in the vector's order, each kept with probability 1 - p: the same masks on any device.
    """
    generator = torch.Generator().manual_seed(dare_task_seed(seed, task))
    return {
        name: (torch.rand(tensor.shape, generator=generator) >= p).to(tensor.device)
        for name, tensor in vector.items()
        if tensor.dim() == 2
    }


def mammoth_dare(
    task_vectors: Sequence[Mapping[str, Tensor]], p: float, alpha: float, seed: int
) -> dict[str, Tensor]:
    """alpha * sum_t (tau_t * mask_t / (1 - p) on 2-D entries, tau_t untouched on the others)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p must be in [0, 1), got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    vectors, _ = unpack_task_vectors(task_vectors)
    total = {name: torch.zeros_like(tensor) for name, tensor in vectors[0].items()}
    for task, vector in enumerate(vectors):
        masks = mammoth_dare_masks(vector, p, seed, task)
        for name, tensor in vector.items():
            total[name] += tensor * masks[name] * (1 / (1 - p)) if name in masks else tensor
    return {name: alpha * tensor for name, tensor in total.items()}


def sweep_values(start: float, end: float, step: float) -> list[float]:
    """start, start + step, ..., up to end inclusive (rounded to 6 digits: no 0.30000000000000004).

    Needs step > 0 and end >= start (``TAK.config_problems`` refuses other sweeps).
    """
    count = int((end - start) / step + 1e-9) + 1
    return [round(start + index * step, 6) for index in range(count)]
