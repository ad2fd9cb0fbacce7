"""Merging several task vectors into one: ``merge(task_vectors, method=..., **knobs) -> TaskVector``.

The merged model is theta_0 + merged (``merged.apply_to(pretrained)``): every method already
folds its scaling coefficient ``alpha`` into the returned vector.

Methods and knobs (defaults in brackets):

- ``ta``   task arithmetic (Ilharco et al., ICLR 2023, Sec. 2): alpha * sum_t tau_t.  [alpha=1.0]
- ``ties`` TIES-Merging (Yadav et al., NeurIPS 2023, Sec. 3 / Alg. 1): trim each task vector to its
  top-k fraction of entries by magnitude, elect a sign per entry, disjoint mean of the entries that
  agree with it, times alpha.  [k=0.2, alpha=1.0]
- ``dare`` DARE (Yu et al., "Language Models are Super Mario", ICML 2024): drop each entry with probability p, rescale the
  survivors by 1/(1-p), then ``ta``.  [p=0.9, alpha=1.0, seed=0]
- ``iso``  Iso-C (Marczak et al., "No Task Left Behind", ICML 2025): per 2-D weight M = mean_t tau_t,
  M = U S V^T, merged = alpha * mean(S) * U V^T; other entries averaged.  [alpha=1.0]
- ``iso_cts`` Iso-CTS (same paper): per 2-D weight, the top singular directions of sum_t tau_t (the
  common subspace, a fraction ``common_space_fraction`` of the rank) joined by each task's top
  directions outside it, orthogonalised, with a flat spectrum; other entries averaged.
  [common_space_fraction=0.8, alpha=1.0]
- ``tsv``  TSV-M (Gargiulo et al., "Task Singular Vectors", CVPR 2025): per 2-D weight keep each task's top r/T
  singular triplets, concatenate, orthogonalise U and V (U' = P Q^T from the SVD U = P Sigma Q^T),
  merged = alpha * U' diag(S) V'^T; other entries averaged.  [alpha=1.0]

These are the papers' definitions, as their official code computes them:

- ``ties`` trims over the whole task vector flattened (every entry, 1-D ones included), with one
  magnitude threshold per task vector, and keeps int(k * n) + 1 of its n entries (``ties_keep_count``)
  as the official ``topk_values_mask`` (prateeky2806/ties-merging, ``src/utils/merge_utils.py``)
  does, ties with the threshold included. One difference: an entry whose trimmed values sum to
  exactly 0 has no elected sign and merges to 0 (Alg. 1's sgn(0) = 0); the official code gives it
  the sign of the majority of the elected signs instead.
- ``dare`` drops entries of every tensor, 1-D ones included, from a generator of its own seeded
  with ``seed`` (never the global RNG); all masks are drawn in one call, so a task's mask depends
  on the other vectors merged with it.
- ``iso_cts`` follows the official code (danielm1405/iso-merging, ``src/utils/iso.py``) step by step
  (``iso_cts_matrix``), at its scale: the common subspace is the *sum*'s, so alpha is the paper's
  alpha (``iso`` uses the mean: its alpha is T times the paper's).

TAK (``clcore.algorithms.tak.merging``) merges after each task with these definitions under its
``convention="paper"``; its default ``convention="mammoth"`` computes TIES and DARE as TAK's
reference implementation (Mammoth) does instead: TIES trimmed per 2-D tensor (a threshold per task
and tensor) with 1-D entries summed untouched, and DARE dropping entries of 2-D tensors only.

Inputs are ``TaskVector``s of one kind (or plain ``{name: tensor}`` dicts, treated as standard
vectors) with identical entries; the output has the inputs' kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from clcore.task_arithmetic.task_vectors import TaskVector, unpack_task_vectors

TaskVectors = Sequence[TaskVector | Mapping[str, Tensor]]


# -- knob checks ------------------------------------------------------------------------------
def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")


def _check_fraction(name: str, value: float, low_open: bool, high_open: bool) -> None:
    in_range = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not in_range:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _stacked(vectors: list[dict[str, Tensor]], name: str) -> Tensor:
    """Entry ``name`` of every task vector, stacked on a new leading task axis: [T, *shape]."""
    return torch.stack([vector[name] for vector in vectors])


def _svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # Half-precision SVD is unsupported or inaccurate: factorise in float32 at least.
    work_dtype = torch.promote_types(matrix.dtype, torch.float32)
    return torch.linalg.svd(matrix.to(work_dtype), full_matrices=False)


# -- ta ---------------------------------------------------------------------------------------
def ta(task_vectors: TaskVectors, alpha: float = 1.0) -> TaskVector:
    """Task arithmetic: alpha * sum_t tau_t (Ilharco et al. 2023)."""
    _check_alpha(alpha)
    vectors, kind = unpack_task_vectors(task_vectors)
    return kind({name: alpha * _stacked(vectors, name).sum(dim=0) for name in vectors[0]})


# -- ties -------------------------------------------------------------------------------------
def ties_keep_count(num_entries: int, k: float) -> int:
    """How many of ``num_entries`` entries TIES keeps for a fraction ``k``: int(k * n) + 1, at most n.

    The official code (``topk_values_mask``) keeps the entries at least as large in magnitude as
    the (n - int(n * k))-th smallest, i.e. int(n * k) + 1 of them when magnitudes are distinct;
    with k = 1 it would ask for the 0-th smallest, here every entry is kept.
    """
    return min(num_entries, int(num_entries * k) + 1)


def _magnitude_threshold(vector: dict[str, Tensor], k: float) -> Tensor:
    """The magnitude of the ``ties_keep_count(n, k)``-th largest entry of the whole vector (n entries).

    One threshold per task vector over all its entries, as in the TIES reference implementation.
    """
    magnitudes = torch.cat([tensor.abs().flatten() for tensor in vector.values()])
    keep = ties_keep_count(magnitudes.numel(), k)
    return magnitudes.kthvalue(magnitudes.numel() - keep + 1).values


def ties_entry(trimmed: Tensor) -> Tensor:
    """Elect + disjoint merge of already-trimmed values ``trimmed`` [T, ...] (TIES Alg. 1, steps 2-3).

    sign gamma = sgn(sum_t trimmed_t); merged = mean over the t with sgn(trimmed_t) = gamma (zeros
    excluded). An entry whose trimmed values sum to exactly 0 has no elected sign and merges to 0.
    """
    elected_sign = trimmed.sum(dim=0).sign()
    agrees = (trimmed.sign() == elected_sign) & (trimmed != 0)
    agreeing_count = agrees.sum(dim=0).clamp(min=1)
    return (trimmed * agrees).sum(dim=0) / agreeing_count


def ties(task_vectors: TaskVectors, k: float = 0.2, alpha: float = 1.0) -> TaskVector:
    """TIES-Merging (Yadav et al. 2023): trim to top-k magnitudes, elect sign, disjoint mean, * alpha.

    ``k`` is the fraction in (0, 1] of each task vector's entries kept (the paper's top-k%, 20% by
    default): ``ties_keep_count(n, k)`` = int(k * n) + 1 of its n entries, as the official code;
    entries tied with the threshold magnitude are kept too.
    """
    _check_fraction("k", k, low_open=True, high_open=False)
    _check_alpha(alpha)
    vectors, kind = unpack_task_vectors(task_vectors)
    thresholds = torch.stack([_magnitude_threshold(vector, k) for vector in vectors])
    merged = {}
    for name in vectors[0]:
        stacked = _stacked(vectors, name)
        threshold = thresholds.to(stacked.device).view(-1, *([1] * (stacked.dim() - 1)))
        trimmed = torch.where(stacked.abs() >= threshold, stacked, torch.zeros_like(stacked))
        merged[name] = alpha * ties_entry(trimmed)
    return kind(merged)


# -- dare -------------------------------------------------------------------------------------
def dare(task_vectors: TaskVectors, p: float = 0.9, alpha: float = 1.0, seed: int = 0) -> TaskVector:
    """DARE (Yu et al. 2024): drop each entry with probability p, rescale survivors by 1/(1-p), then ta.

    The rescaling keeps every entry unbiased: E[mask * tau / (1-p)] = tau. ``seed`` fixes the masks
    (one generator per call, on the vectors' device).
    """
    _check_fraction("p", p, low_open=False, high_open=True)
    _check_alpha(alpha)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    vectors, kind = unpack_task_vectors(task_vectors)
    device = next(iter(vectors[0].values())).device
    generator = torch.Generator(device=device).manual_seed(seed)
    merged = {}
    for name in vectors[0]:
        stacked = _stacked(vectors, name)
        keep = torch.rand(stacked.shape, generator=generator, device=device) >= p
        merged[name] = alpha * (stacked * keep / (1 - p)).sum(dim=0)
    return kind(merged)


# -- iso --------------------------------------------------------------------------------------
def isotropic_matrix(matrix: Tensor) -> Tensor:
    """mean(S) * U V^T for M = U S V^T: M's singular directions with a flat spectrum (Iso-C)."""
    left, singular_values, right_t = _svd(matrix)
    return (singular_values.mean() * left @ right_t).to(matrix.dtype)


def iso(task_vectors: TaskVectors, alpha: float = 1.0) -> TaskVector:
    """Iso-C (Marczak et al. 2025): flatten the spectrum of each 2-D weight of the mean task vector.

    The paper factorises the *sum* of the task vectors; as the design notes fix it, M here is the
    mean. Only the scale differs (by T), so alpha here = T * alpha of the paper. Entries that are not
    2-D are averaged, times alpha.
    """
    _check_alpha(alpha)
    vectors, kind = unpack_task_vectors(task_vectors)
    merged = {}
    for name in vectors[0]:
        mean = _stacked(vectors, name).mean(dim=0)
        merged[name] = alpha * (isotropic_matrix(mean) if mean.dim() == 2 else mean)
    return kind(merged)


# -- tsv --------------------------------------------------------------------------------------
def _orthogonalise(columns: Tensor) -> Tensor:
    """The closest matrix with orthonormal columns (Procrustes): P Q^T from columns = P Sigma Q^T."""
    left, _, right_t = _svd(columns)
    return left @ right_t


def tsv_factors(matrices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TSV-M factors of one 2-D weight, from the task matrices ``matrices`` [T, m, n].

    Each task keeps its top max(1, r // T) singular triplets (r = min(m, n)); the kept U's and V's
    are concatenated over tasks and orthogonalised. Returns (U' [m, T*k], S [T*k], V' [n, T*k]).
    """
    num_tasks, rows, cols = matrices.shape
    per_task = max(1, min(rows, cols) // num_tasks)
    left, singular_values, right_t = _svd(matrices)  # batched over tasks
    # [T, m, k] -> [m, T*k]: task t's kept directions are columns t*k .. t*k+k-1
    left_kept = left[:, :, :per_task].permute(1, 0, 2).reshape(rows, num_tasks * per_task)
    right_kept = right_t[:, :per_task, :].permute(2, 0, 1).reshape(cols, num_tasks * per_task)
    values_kept = singular_values[:, :per_task].reshape(num_tasks * per_task)
    return _orthogonalise(left_kept), values_kept, _orthogonalise(right_kept)


def tsv(task_vectors: TaskVectors, alpha: float = 1.0) -> TaskVector:
    """TSV-M (Gargiulo et al. 2025): per 2-D weight U' diag(S) V'^T of ``tsv_factors``, times alpha.

    Entries that are not 2-D are averaged, times alpha.
    """
    _check_alpha(alpha)
    vectors, kind = unpack_task_vectors(task_vectors)
    merged = {}
    for name in vectors[0]:
        stacked = _stacked(vectors, name)
        if stacked.dim() == 3:
            left, values, right = tsv_factors(stacked)
            merged[name] = alpha * ((left * values) @ right.T).to(stacked.dtype)
        else:
            merged[name] = alpha * stacked.mean(dim=0)
    return kind(merged)


# -- iso_cts ----------------------------------------------------------------------------------
def iso_cts_sizes(rank: int, num_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(common, per_task): the common subspace's size and each task's, for a weight of rank ``rank``.

    As the official code: common = int(rank * fraction), then the task-specific part rank - common is
    rounded (Python's ``round``) to a multiple of the number of tasks and the common part takes the
    rest, so that common + num_tasks * per_task = rank. Where that rounding would make the
    task-specific part larger than the rank (only for rank < about num_tasks; the official code then
    slices with a negative index), it is rounded down instead.
    """
    common = int(rank * common_space_fraction)
    task_specific = round((rank - common) / num_tasks) * num_tasks
    if task_specific > rank:
        task_specific = (rank - common) // num_tasks * num_tasks
    return rank - task_specific, task_specific // num_tasks


def iso_cts_matrix(matrices: Tensor, common_space_fraction: float = 0.8) -> Tensor:
    """Iso-CTS of one 2-D weight from the task matrices ``matrices`` [T, m, n] (alpha = 1).

    With r = min(m, n) and (c, d) = ``iso_cts_sizes(r, T, common_space_fraction)``:

    1. the common subspace: the top c singular triplets (U_c, S_c, V_c) of M = sum_t tau_t;
    2. each task's subspace: the top d singular triplets of tau_t - U_c U_c^T tau_t (its part outside
       the common left subspace);
    3. the T * d task directions and the c common ones side by side (r in all), U and V each
       orthogonalised (the polar factor P Q^T of X = P Sigma Q^T);
    4. a flat spectrum: every singular value replaced by the mean of the r collected ones.

    Returns mean(S) * U' V'^T in the input's dtype (factorised in float32 at least).
    """
    num_tasks, rows, cols = matrices.shape
    common, per_task = iso_cts_sizes(min(rows, cols), num_tasks, common_space_fraction)
    work = matrices.to(torch.promote_types(matrices.dtype, torch.float32))
    left, values, right_t = torch.linalg.svd(work.sum(dim=0), full_matrices=False)
    common_left, common_values, common_right_t = left[:, :common], values[:common], right_t[:common]
    if per_task > 0:
        outside = work - common_left @ (common_left.T @ work)  # [T, m, n]
        task_left, task_values, task_right_t = torch.linalg.svd(outside, full_matrices=False)
    else:  # every direction is a common one
        task_left, task_values, task_right_t = (
            left.new_zeros(num_tasks, rows, 0),
            values.new_zeros(num_tasks, 0),
            right_t.new_zeros(num_tasks, 0, cols),
        )
    # [T, m, d] -> [m, T*d] and [T, d, n] -> [T*d, n]: task t's directions are t*d .. t*d+d-1
    left_all = torch.cat(
        [task_left[:, :, :per_task].permute(1, 0, 2).reshape(rows, num_tasks * per_task), common_left],
        dim=1,
    )
    right_all = torch.cat([task_right_t[:, :per_task, :].reshape(num_tasks * per_task, cols), common_right_t])
    values_all = torch.cat([task_values[:, :per_task].reshape(-1), common_values])
    merged = values_all.mean() * _orthogonalise(left_all) @ _orthogonalise(right_all.T).T
    return merged.to(matrices.dtype)


def iso_cts(task_vectors: TaskVectors, common_space_fraction: float = 0.8, alpha: float = 1.0) -> TaskVector:
    """Iso-CTS (Marczak et al. 2025): ``iso_cts_matrix`` per 2-D weight; other entries averaged; * alpha.

    ``common_space_fraction`` in [0, 1] is the share of each weight's rank given to the common
    subspace (the official default 0.8). With fraction 1, or with a single task vector, every
    direction is the common one and the result is the isotropic merge of the sum (Iso-C on the
    sum: T * ``iso``'s on 2-D weights). Like the official code, 2-D weights use the sum of the task
    matrices and other entries their mean, so alpha is the paper's alpha.
    """
    _check_fraction("common_space_fraction", common_space_fraction, low_open=False, high_open=False)
    _check_alpha(alpha)
    vectors, kind = unpack_task_vectors(task_vectors)
    merged = {}
    for name in vectors[0]:
        stacked = _stacked(vectors, name)
        if stacked.dim() == 3:
            merged[name] = alpha * iso_cts_matrix(stacked, common_space_fraction)
        else:
            merged[name] = alpha * stacked.mean(dim=0)
    return kind(merged)


# -- one entry point --------------------------------------------------------------------------
MERGE_METHODS: dict[str, Callable[..., TaskVector]] = {
    "ta": ta,
    "ties": ties,
    "dare": dare,
    "iso": iso,
    "iso_cts": iso_cts,
    "tsv": tsv,
}

_KNOBS = {
    "ta": {"alpha"},
    "ties": {"k", "alpha"},
    "dare": {"p", "alpha", "seed"},
    "iso": {"alpha"},
    "iso_cts": {"common_space_fraction", "alpha"},
    "tsv": {"alpha"},
}


def merge(task_vectors: TaskVectors, method: str = "ta", **knobs: float) -> TaskVector:
    """Merge with ``method`` (one of ``MERGE_METHODS``) and its knobs; see the module docstring."""
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merging method {method!r}; choose one of {sorted(MERGE_METHODS)}")
    unknown = set(knobs) - _KNOBS[method]
    if unknown:
        raise ValueError(
            f"merging method {method!r} has no knob(s) {sorted(unknown)}; its knobs: {sorted(_KNOBS[method])}"
        )
    return MERGE_METHODS[method](task_vectors, **knobs)
