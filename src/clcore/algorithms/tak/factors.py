"""Each task's KFAC factors at theta_0, from that task's training data, computed once and cached on disk.

Porrello et al. (ICLR 2026, arXiv 2602.17385), Sec. 4: the curvature of task t is the Gauss-Newton
matrix of the normalised image features at the pre-trained weights theta_0, approximated by KFAC
(``clcore.algorithms.tak.kfac``). It depends on theta_0 and on task t's inputs only, never on a
fine-tuned model, so it is computed once and stored (``clcore.algorithms.tak.fisher_cache``); a
task trained later regularises against the stored factors and needs no data of the other tasks.

The cache key names what the factors depend on: the benchmark and task (class list, seed,
validation split, model-input conversion), theta_0 (a digest of the backbone's tensors), the
factored parameters, the sample budget (``train_percent``), the Monte Carlo sample count, the
accumulation precision and the seed. A changed ingredient gives another file, never stale factors.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clcore.algorithms.tak.fisher_cache import cache_file, load_or_compute_factors
from clcore.algorithms.tak.kfac import KFACFactors, compute_kfac_factors
from clcore.algorithms.tak.kfac_penalty import accumulate_factors
from clcore.algorithms.tak.parameters import TAKParameters
from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.tensor_loader import TensorBatchLoader

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp64": torch.float64}


def model_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (name, shape, dtype, bytes): identifies theta_0."""
    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_train_percent(value: float | int) -> bool:
    """A fraction of the training set (a float in (0, 1]) or a number of examples (an int >= 1).

    As the reference's ``--train_percent``: "If float, it represents the percentage of the
    training set. If integer, it represents the number of samples used." (1.0 = all of them.)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 1 if isinstance(value, int) else 0.0 < value <= 1.0


def samples_for_factors(train_percent: float | int, num_train: int) -> int:
    """How many of ``num_train`` training examples to use (``train_percent`` as ``is_train_percent``;
    ``TAK.config_problems`` refuses any other value before anything is built)."""
    if isinstance(train_percent, int):
        return min(train_percent, num_train)
    return max(1, math.ceil(train_percent * num_train))


@dataclass
class TaskFactorStore:
    """Factors of any task of ``benchmark``'s sequence for ``model`` at theta_0, via the disk cache.

    ``computed_seconds`` accumulates the time spent computing (not loading) factors.
    """

    model: nn.Module
    parameters: TAKParameters
    cache_dir: str | None
    train_percent: float | int = 1.0
    num_samples: int = 1
    precision: str = "fp32"
    seed: int = 0
    computed_seconds: float = 0.0

    def __post_init__(self) -> None:
        # precision and num_samples are TAK's options, checked by TAK.config_problems
        self._model_digest: str | None = None
        self._in_memory: dict[int, KFACFactors] = {}  # only without a cache folder

    def key(self, benchmark: CLBenchmark, task_id: int) -> dict:
        if self._model_digest is None:
            self._model_digest = model_digest(self.model)
        model_input = benchmark.model_input
        names = sorted(self.parameters.kfac_params) + sorted(self.parameters.gram_groups)
        return {
            "what": "TAK KFAC factors at theta_0 (Porrello et al. 2026)",
            "benchmark": type(benchmark).__name__,
            "dataset": benchmark.load().name,
            "task": task_id + 1,
            "classes": list(benchmark.classes_of(task_id)),
            "benchmark_seed": benchmark.seed,
            "val_fraction": benchmark.val_fraction,
            "model_input": None if model_input is None else repr(model_input),
            "model": self._model_digest,
            "parameters": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "train_percent": self.train_percent,
            "num_samples_expectation": self.num_samples,
            "fp_precision": self.precision,
            "seed": self.seed,
        }

    def is_cached(self, benchmark: CLBenchmark, task_id: int) -> bool:
        return (
            self.cache_dir is not None and cache_file(self.cache_dir, self.key(benchmark, task_id)).is_file()
        )

    def factors(self, benchmark: CLBenchmark, task_id: int) -> KFACFactors:
        """Task ``task_id``'s factors: loaded from the cache, or computed from its training data and stored."""
        if self.cache_dir is None:  # no folder: keep them for the rest of the run instead
            if task_id not in self._in_memory:
                self._in_memory[task_id] = self._compute(benchmark, task_id)
            return self._in_memory[task_id]
        factors = load_or_compute_factors(
            self.cache_dir, self.key(benchmark, task_id), lambda: self._compute(benchmark, task_id)
        )
        return _constants(factors)

    def _compute(self, benchmark: CLBenchmark, task_id: int) -> KFACFactors:
        started = time.perf_counter()
        device = next(self.model.parameters()).device
        split = benchmark.task_split("train", task_id)
        count = samples_for_factors(self.train_percent, len(split.labels))
        # A seeded random subset of the task's training examples (all of them for 1.0).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + task_id)
        chosen = torch.randperm(len(split.labels), generator=generator)[:count].to(split.images.device)
        loader = TensorBatchLoader(
            split.images[chosen], split.labels[chosen], task_id, batch_size=benchmark.batch_size
        )
        factors = compute_kfac_factors(
            self.model,
            loader,
            kfac_params=self.parameters.kfac_params,
            gram_groups=self.parameters.gram_groups,
            num_samples=self.num_samples,
            normalize=True,  # the features TAK classifies are L2-normalised
            dtype=PRECISIONS[self.precision],
            input_fn=_prepared_input(benchmark, device),
            seed=self.seed * 1_000_003 + task_id,
        )
        seconds = time.perf_counter() - started
        self.computed_seconds += seconds
        log.info("TAK: KFAC factors of task %d from %d examples in %.1f s", task_id + 1, count, seconds)
        return factors


def _constants(factors: KFACFactors) -> KFACFactors:
    """The factors with autograd off: a file may hold tensors saved with requires_grad set."""
    kronecker = {name: (a.detach(), b.detach()) for name, (a, b) in factors.kronecker.items()}
    gram = {name: g.detach() for name, g in factors.gram.items()}
    return KFACFactors(kronecker, gram, dict(factors.gram_params), factors.num_samples)


def _prepared_input(benchmark: CLBenchmark, device: torch.device) -> Callable:
    def input_fn(batch) -> torch.Tensor:
        images, _, task_id = batch
        return benchmark.prepare_batch(images.to(device), task_id)

    return input_fn


def combined_curvature(
    load: Callable[[int], KFACFactors], tasks: Sequence[int], ideal: bool
) -> list[tuple[float, KFACFactors]]:
    """The curvature of ``tasks`` for ``kfac_penalty``: Eq. 7 (``ideal``) or Eq. 8 of Porrello et al.

    Same result as ``accumulate_factors([load(t) for t in tasks], ideal)``. For Eq. 8 the tasks are
    loaded one at a time into one running pair (sum_t N_t A_t, sum_t B_t), divided by N at the end,
    so memory stays that of one task however long the sequence (Eq. 7 keeps every task's pair).
    """
    if not tasks:
        raise ValueError("no task to take the curvature of")
    if ideal:
        return accumulate_factors([load(task) for task in tasks], ideal=True)
    running: KFACFactors | None = None
    for task in tasks:
        factors = load(task)
        weighted = factors.scale(factors.num_samples)  # N_t A_t, B_t, N_t G_t
        running = weighted if running is None else running + weighted
        del factors
    return [(1.0, running.scale(1.0 / running.num_samples))]
