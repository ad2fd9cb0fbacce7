"""Hand-written PyTorch loops doing exactly the math of clrun's runs, for ``bench.py``.

No Lightning, no Hydra, no callbacks: tensors, a model, an optimizer, a for-loop. They draw
random numbers in the same order as clcore (model init after seeding, one head per task at the
start of the task, the same per-task shuffling seed), so with the same seed they reach the same
accuracies and the timing comparison is of equal work.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from lightning import seed_everything
from torch import nn


class TaskData:
    """Per-task batches from uint8 tensors: normalise, then permute pixels (Permuted MNIST)."""

    def __init__(self, train_x, train_y, test_x, test_y, mean, std, permutations):
        self.train_x, self.train_y, self.test_x, self.test_y = train_x, train_y, test_x, test_y
        self.mean, self.std, self.permutations = mean, std, permutations

    @property
    def input_dim(self) -> int:
        """Pixels per image: the MLP's input size, as clcore derives it from the benchmark."""
        return self.train_x[0].numel()

    def transform(self, images, task_id):
        permuted = images.flatten(2).index_select(2, self.permutations[task_id]).view_as(images)
        return permuted.float().div_(255.0).sub_(self.mean).div_(self.std)


def mlp(input_dim: int, hidden_dims=(256, 100), output_dim=64) -> nn.Sequential:
    dims = [input_dim, *hidden_dims, output_dim]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


@torch.no_grad()
def evaluate(forward, data: TaskData, seen_tasks: int, eval_batch_size: int) -> list[float]:
    accuracies = []
    for task_id in range(seen_tasks):
        correct = 0
        for start in range(0, len(data.test_y), eval_batch_size):
            x = data.transform(data.test_x[start : start + eval_batch_size], task_id)
            correct += (forward(x, task_id).argmax(-1) == data.test_y[start : start + eval_batch_size]).sum()
        accuracies.append(int(correct) / len(data.test_y))
    return accuracies


def shuffled_batches(num_samples: int, batch_size: int, generator: torch.Generator):
    return torch.randperm(num_samples, generator=generator).split(batch_size)


def finetuning(
    data: TaskData, num_tasks: int, seed: int, epochs: int, batch_size: int, eval_batch_size: int, lr: float
):
    """Finetuning, TIL: backbone + one linear head per task, a fresh Adam per task."""
    timer = {"setup": 0.0, "train": 0.0, "test": 0.0}
    started = time.perf_counter()
    seed_everything(seed, verbose=False)
    backbone, heads = mlp(data.input_dim), nn.ModuleList()
    timer["setup"] += time.perf_counter() - started
    matrix = []
    for task_id in range(num_tasks):
        started = time.perf_counter()
        heads.append(nn.Linear(64, 10))
        parameters = [*backbone.parameters(), *heads.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=lr)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + task_id)
        timer["setup"] += time.perf_counter() - started
        started = time.perf_counter()
        backbone.train()
        for _ in range(epochs):
            for index in shuffled_batches(len(data.train_y), batch_size, generator):
                x = data.transform(data.train_x[index], task_id)
                loss = F.cross_entropy(heads[task_id](backbone(x)), data.train_y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        timer["train"] += time.perf_counter() - started
        started = time.perf_counter()
        backbone.eval()
        matrix.append(evaluate(lambda x, t: heads[t](backbone(x)), data, task_id + 1, eval_batch_size))
        timer["test"] += time.perf_counter() - started
    return matrix, timer


def hat(
    data: TaskData,
    num_tasks: int,
    seed: int,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    lr: float,
    s_max: float = 400.0,
    reg_factor: float = 0.75,
):
    """HAT (Serra et al. 2018), TIL, written as one loop: the same mask MLP module and the same
    formula functions as clcore's ``HAT``, but none of Lightning, Hydra or the pipeline around them.

    Per batch: anneal s (Sec. 2.4), CE + c * R (Sec. 2.6), backward, Eq. 2 gradient adjustment by
    the previous tasks' cumulative mask, embedding-gradient compensation (Sec. 2.5), Adam step,
    clamp the embeddings to +-6. After each task: store the binary mask, test with binary masks.
    """
    from clcore.algorithms.hat import (
        adjustment_rate,
        annealed_s,
        embedding_gradient_compensation,
        mask_sparsity_regulariser,
    )
    from clcore.backbones import HATMaskMLP

    timer = {"setup": 0.0, "train": 0.0, "test": 0.0}
    started = time.perf_counter()
    seed_everything(seed, verbose=False)
    backbone, heads = HATMaskMLP(data.input_dim, (256, 100), 64, num_tasks=num_tasks), nn.ModuleList()
    layers = backbone.masked_layers
    timer["setup"] += time.perf_counter() - started
    matrix = []
    for task_id in range(num_tasks):
        started = time.perf_counter()
        heads.append(nn.Linear(64, 10))
        backbone.setup_task(task_id)
        backbone.initialise_task_embedding(task_id, "N01")
        optimizer = torch.optim.Adam(
            backbone.parameters_for_task(task_id) + list(heads[task_id].parameters()), lr=lr
        )
        generator = torch.Generator().manual_seed(seed * 1_000_003 + task_id)
        previous = backbone.previous_cumulative_mask(task_id)
        # Eq. 2 multipliers depend only on the previous tasks' masks: fixed for the whole task
        rates = {
            name: (adjustment_rate(w, "hat"), None if b is None else adjustment_rate(b, "hat"))
            for name, (w, b) in backbone.parameter_measures(previous, aggregation="min").items()
        }
        embeddings = backbone.embedding_parameters(task_id)
        timer["setup"] += time.perf_counter() - started
        started = time.perf_counter()
        backbone.train()
        for _ in range(epochs):
            batches = shuffled_batches(len(data.train_y), batch_size, generator)
            for batch_idx, index in enumerate(batches):
                s = annealed_s(batch_idx, len(batches), s_max)
                x = data.transform(data.train_x[index], task_id)
                masks = backbone.mask(task_id, "train", s)
                logits = heads[task_id](backbone.masked_forward(x, masks, task_id))
                loss = F.cross_entropy(logits, data.train_y[index]) + reg_factor * mask_sparsity_regulariser(
                    masks, previous
                )
                optimizer.zero_grad()
                loss.backward()
                with torch.no_grad():
                    for name, (weight_rate, bias_rate) in rates.items():
                        layers[name].weight.grad.mul_(weight_rate)
                        if bias_rate is not None:
                            layers[name].bias.grad.mul_(bias_rate)
                    for embedding in embeddings:
                        embedding.grad.mul_(embedding_gradient_compensation(embedding, s, s_max, 50.0))
                optimizer.step()
                with torch.no_grad():
                    for embedding in embeddings:
                        embedding.clamp_(-6.0, 6.0)
        backbone.store_mask(task_id)
        timer["train"] += time.perf_counter() - started
        started = time.perf_counter()
        backbone.eval()
        matrix.append(
            evaluate(lambda x, t: heads[t](backbone(x, t, "test")), data, task_id + 1, eval_batch_size)
        )
        timer["test"] += time.perf_counter() - started
    return matrix, timer
