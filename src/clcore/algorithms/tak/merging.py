"""TAK's merge of the task vectors trained so far, with the reference's meaning of ``alpha_merging``.

Porrello et al. (ICLR 2026) evaluate theta_0 + merge(tau_1..tau_k) after each task. The merge is
``clcore.task_arithmetic.merging.merge``; what differs is how the reference scales it:

- ``ta``, ``dare``, ``ties`` divide ``alpha_merging`` by the number k of merged vectors: the
  merged update is (alpha / k) * sum_t tau_t for ``ta`` (after DARE's drop-and-rescale for
  ``dare``), (alpha / k) * TIES' disjoint mean for ``ties``. So alpha = k means a coefficient of 1
  per task vector.
- ``iso`` and ``tsv`` use ``alpha_merging`` as it is (Iso-C's and TSV-M's own alpha).
- ``alpha_merging: one`` means a coefficient of 1 per task vector for ``ta`` / ``dare`` / ``ties``
  (the reference sets alpha to the number of tasks) and alpha = 1 for ``iso`` / ``tsv``. The
  reference fixes alpha to the length of the whole sequence, which scales merges after task
  k < T by T / k; here the coefficient is 1 after every task, which is what "one" promises.
- The final alpha sweep (``alpha_sweep_start/end/step``) sets alpha = a * T for each a, as the
  reference does: for ``ta`` that is a coefficient a per task vector.

The reference's DARE drops entries of 2-D weights with p = 0.7 and its TIES keeps the top 20%;
``dare_p`` and ``ties_k`` carry those values (the library's DARE drops 1-D entries too, and its
TIES takes one magnitude threshold per task vector).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from clcore.task_arithmetic.merging import merge
from clcore.task_arithmetic.task_vectors import LinearTaskVector, TaskVector

PER_VECTOR_METHODS = ("ta", "dare", "ties")  # alpha is divided by the number of merged vectors


def library_alpha(method: str, alpha_merging: float | str, num_merged: int) -> float:
    """The ``alpha`` knob of ``merging.merge`` that gives the reference's scaling (module docstring).

    ``alpha_merging`` is ``'one'`` or a positive number (``TAK.config_problems`` refuses others).
    """
    if alpha_merging == "one":
        return 1.0
    return float(alpha_merging) / num_merged if method in PER_VECTOR_METHODS else float(alpha_merging)


def merge_task_vectors(
    task_vectors: Sequence[dict[str, Tensor]],
    method: str,
    alpha_merging: float | str,
    tangent: bool,
    dare_p: float = 0.7,
    ties_k: float = 0.2,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """The merged update of ``task_vectors`` (plain ``{name: tensor}`` dicts), on ``device``."""
    if not task_vectors:
        raise ValueError("nothing to merge: no task vector yet")
    kind = LinearTaskVector if tangent else TaskVector
    vectors = [kind({name: tensor.to(device) for name, tensor in vector.items()}) for vector in task_vectors]
    knobs: dict[str, float] = {"alpha": library_alpha(method, alpha_merging, len(vectors))}
    if method == "dare":
        knobs["p"] = dare_p
    elif method == "ties":
        knobs["k"] = ties_k
    return dict(merge(vectors, method=method, **knobs).vector)


def sweep_values(start: float, end: float, step: float) -> list[float]:
    """start, start + step, ..., up to end inclusive (rounded to 6 digits: no 0.30000000000000004).

    Needs step > 0 and end >= start (``TAK.config_problems`` refuses other sweeps).
    """
    count = int((end - start) / step + 1e-9) + 1
    return [round(start + index * step, 6) for index in range(count)]
