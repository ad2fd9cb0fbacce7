"""Each task's KFAC factors at theta_0, from that task's training data, computed once and cached on disk.

Porrello et al. (ICLR 2026, arXiv 2602.17385), Sec. 4: the curvature of task t is the Gauss-Newton
matrix of the normalised image features at the pre-trained weights theta_0, approximated by KFAC
(``clcore.algorithms.tak.kfac``). It depends on theta_0 and on task t's inputs only, never on a
fine-tuned model, so it is computed once and stored (``clcore.algorithms.tak.fisher_cache``); a
task trained later regularises against the stored factors and needs no data of the other tasks.

The cache key names what the factors depend on: the benchmark and task (class list, seed,
validation split, model-input conversion), theta_0 (a digest of the backbone's tensors), the
factored parameters, the sample budget (``train_percent``, in batches of the training batch size),
the Monte Carlo sample count and convention (summed), the token convention (``token_mode``), the
accumulation precision and the seed. A changed ingredient gives another file, never stale factors.

``train_percent`` counts BATCHES of the task's training loader, as the reference's does (Mammoth's
``KFACComputer.compute``: ``int(train_percent * len(dataset.train_loader))`` batches for a float,
``train_percent`` batches for an integer, of the shuffled loader): the factors use the examples of
that many batches of ``benchmark.batch_size``, a seeded random subset of the task's training set.
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
from clcore.algorithms.tak.kfac import TOKEN_MODES, KFACFactors, compute_kfac_factors
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
    """A fraction of the training batches (a float in (0, 1]) or a number of batches (an int >= 1).

    The reference's ``--train_percent`` help says "percentage of the training set" / "number of
    samples", but its code counts batches of the training loader (``batches_for_factors``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 1 if isinstance(value, int) else 0.0 < value <= 1.0


def batches_for_factors(train_percent: float | int, num_batches: int) -> int:
    """How many of the ``num_batches`` training batches the factors use, as the reference counts them.

    Mammoth (``models/tak_utils/fisher_kfac.py``, ``KFACComputer.compute``) stops its loop over the
    training loader after ``int(train_percent * len(train_loader))`` batches for a float (rounded
    down) and after ``train_percent`` batches for an integer. One difference: where the float
    rounds down to 0 batches the reference computes no factors at all; here it takes 1 batch.
    """
    if isinstance(train_percent, int):
        return max(1, min(train_percent, num_batches))
    return max(1, min(int(train_percent * num_batches), num_batches))


def samples_for_factors(train_percent: float | int, num_train: int, batch_size: int) -> int:
    """How many of ``num_train`` training examples the factors use: those of ``batches_for_factors``
    batches of ``batch_size`` (the last batch of the loader may be short; no batch is dropped).

    ``train_percent`` as ``is_train_percent``; ``TAK.config_problems`` refuses any other value.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num_batches = math.ceil(num_train / batch_size)
    return min(num_train, batches_for_factors(train_percent, num_batches) * batch_size)


@dataclass
class TaskFactorStore:
    """Factors of any task of ``benchmark``'s sequence for ``model`` at theta_0, via the disk cache.

    ``train_percent`` counts training batches (``batches_for_factors``); ``num_samples`` Monte Carlo
    projections are summed; ``token_mode`` is ``compute_kfac_factors``'s ("expand", the reference's
    KFAC-expand, or "reduce"). ``computed_seconds`` accumulates the time spent computing (not
    loading) factors.
    """

    model: nn.Module
    parameters: TAKParameters
    cache_dir: str | None
    train_percent: float | int = 1.0
    num_samples: int = 1
    precision: str = "fp32"
    seed: int = 0
    token_mode: str = "expand"
    computed_seconds: float = 0.0

    def __post_init__(self) -> None:
        # precision, num_samples and token_mode are TAK's options, checked by TAK.config_problems
        if self.token_mode not in TOKEN_MODES:
            raise ValueError(f"token_mode must be one of {TOKEN_MODES}, got {self.token_mode!r}")
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
            "train_percent_unit": "batches",
            # the subset's size depends on the batch size, unless it is the whole training set
            "batch_size": None if self._uses_everything() else benchmark.batch_size,
            "num_samples_expectation": self.num_samples,
            "monte_carlo": "sum",
            "token_mode": self.token_mode,
            "fp_precision": self.precision,
            "seed": self.seed,
        }

    def _uses_everything(self) -> bool:
        return isinstance(self.train_percent, float) and self.train_percent == 1.0

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
        count = samples_for_factors(self.train_percent, len(split.labels), benchmark.batch_size)
        # A seeded random subset of the task's training examples (all of them for 1.0): the examples
        # of the first batches of a shuffled training loader, as the reference takes them.
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
            token_mode=self.token_mode,
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
