"""Hand-written PyTorch loops doing exactly the math of clrun's runs, for ``bench.py``.

No Lightning, no Hydra, no callbacks: tensors, a model, an optimizer, a for-loop. They read the
MNIST files themselves and draw random numbers in the same order as clcore (the train/validation
split and the permutations from the seed, model init after seeding, one head per task at the
start of the task, the same per-task shuffling seed), so with the same seed they reach the same
accuracies and the timing comparison is of equal work. Like clrun's ``*_pmnist`` experiments they
validate on the held-out split after every epoch and test every seen task after every task.

Run as a script (what ``bench.py`` times as its own process)::

    python experiments/benchmarks/plain_loops.py --algorithm hat --root data/mnist-from-test --out run.json

The script stamps the wall-clock and CPU time when its imports are done and when its work is
done, so ``bench.py`` can tell the time after imports from the whole process. The Finetuning loop imports torch alone; the HAT loop
also imports clcore's mask MLP and HAT formula functions (and with them Lightning), so that what
is compared is everything around the math.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# MNIST's statistics, as clcore's "mnist" source states them
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class TaskData:
    """Per-task batches from uint8 tensors: normalise, then permute pixels (Permuted MNIST)."""

    def __init__(self, train_x, train_y, val_x, val_y, test_x, test_y, mean, std, permutations):
        self.train_x, self.train_y, self.val_x, self.val_y = train_x, train_y, val_x, val_y
        self.test_x, self.test_y = test_x, test_y
        self.mean, self.std, self.permutations = mean, std, permutations

    @property
    def input_dim(self) -> int:
        """Pixels per image: the MLP's input size, as clcore derives it from the benchmark."""
        return self.train_x[0].numel()

    def transform(self, images, task_id):
        permuted = images.flatten(2).index_select(2, self.permutations[task_id]).view_as(images)
        return permuted.float().div_(255.0).sub_(self.mean).div_(self.std)


def read_idx(path: Path) -> torch.Tensor:
    """An MNIST idx file (uint8 images or labels) as a tensor; the header gives the shape."""
    raw = path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(raw[4 + 4 * dims :]), dtype=torch.uint8).view(shape)


def permuted_mnist(root: str, num_tasks: int, seed: int, val_fraction: float) -> TaskData:
    """The tensors clcore's ``PermutedBenchmark`` builds from ``<root>/MNIST/raw/``: same split, same permutations."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    train_x, test_x = (read_idx(raw / f"{s}-images-idx3-ubyte").unsqueeze(1) for s in ("train", "t10k"))
    train_y, test_y = (read_idx(raw / f"{s}-labels-idx1-ubyte").long() for s in ("train", "t10k"))
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    num_val = int(round(val_fraction * len(order)))
    generator = torch.Generator().manual_seed(seed)
    permutations = torch.stack([torch.randperm(28 * 28, generator=generator) for _ in range(num_tasks)])
    return TaskData(
        train_x[order[num_val:]],
        train_y[order[num_val:]],
        train_x[order[:num_val]],
        train_y[order[:num_val]],
        test_x,
        test_y,
        torch.tensor(MNIST_MEAN).view(1, -1, 1, 1),
        torch.tensor(MNIST_STD).view(1, -1, 1, 1),
        permutations,
    )


def seed_all(seed: int) -> None:
    """What Lightning's ``seed_everything`` does on a CPU, without importing Lightning."""
    random.seed(seed)
    torch.manual_seed(seed)


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


@torch.no_grad()
def validate(forward, data: TaskData, task_id: int, eval_batch_size: int) -> tuple[float, float]:
    """Loss and accuracy on the validation split, what clrun computes (and logs) after each epoch."""
    loss, correct = 0.0, 0
    for start in range(0, len(data.val_y), eval_batch_size):
        x = data.transform(data.val_x[start : start + eval_batch_size], task_id)
        labels = data.val_y[start : start + eval_batch_size]
        logits = forward(x, task_id)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
    return loss / max(len(data.val_y), 1), correct / max(len(data.val_y), 1)


def shuffled_batches(num_samples: int, batch_size: int, generator: torch.Generator):
    return torch.randperm(num_samples, generator=generator).split(batch_size)


def _validate_epoch(
    timer: dict, model: nn.Module, forward, data: TaskData, task_id: int, eval_batch_size: int
):
    """Validation after an epoch (none without a validation split), timed apart from training."""
    if len(data.val_y) == 0:
        return
    started = time.perf_counter()
    model.eval()
    validate(forward, data, task_id, eval_batch_size)
    model.train()
    timer["val"] += time.perf_counter() - started


def finetuning(
    data: TaskData,
    num_tasks: int,
    seed: int,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    make_optimizer: Callable,
):
    """Finetuning, TIL: backbone + one linear head per task, a fresh optimiser per task."""
    timer = {"setup": 0.0, "train": 0.0, "val": 0.0, "test": 0.0}
    started = time.perf_counter()
    seed_all(seed)
    backbone, heads = mlp(data.input_dim), nn.ModuleList()
    timer["setup"] += time.perf_counter() - started
    matrix = []
    for task_id in range(num_tasks):
        started = time.perf_counter()
        heads.append(nn.Linear(64, 10))
        parameters = [*backbone.parameters(), *heads.parameters()]
        optimizer = make_optimizer(parameters)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + task_id)
        timer["setup"] += time.perf_counter() - started
        backbone.train()
        for _ in range(epochs):
            started = time.perf_counter()
            for index in shuffled_batches(len(data.train_y), batch_size, generator):
                x = data.transform(data.train_x[index], task_id)
                loss = F.cross_entropy(heads[task_id](backbone(x)), data.train_y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            timer["train"] += time.perf_counter() - started
            _validate_epoch(
                timer, backbone, lambda x, t: heads[t](backbone(x)), data, task_id, eval_batch_size
            )
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
    make_optimizer: Callable,
    s_max: float = 400.0,
    reg_factor: float = 0.75,
):
    """HAT (Serra et al. 2018), TIL, written as one loop: the same mask MLP module and the same
    formula functions as clcore's ``HAT``, but none of Lightning, Hydra or the pipeline around them.

    Per batch: anneal s (Sec. 2.4), CE + c * R (Sec. 2.6), backward, Eq. 2 gradient adjustment by
    the previous tasks' cumulative mask, embedding-gradient compensation (Sec. 2.5), the optimiser's step,
    clamp the embeddings to +-6. Validation with ``sigmoid(s_max e)`` masks after each epoch.
    After each task: store the binary mask, test with binary masks.
    """
    from clcore.algorithms.hat import (
        adjustment_rate,
        annealed_s,
        embedding_gradient_compensation,
        mask_sparsity_regulariser,
    )
    from clcore.backbones.hat_mlp import HATMaskMLP

    timer = {"setup": 0.0, "train": 0.0, "val": 0.0, "test": 0.0}
    started = time.perf_counter()
    seed_all(seed)
    backbone, heads = HATMaskMLP(data.input_dim, (256, 100), 64, num_tasks=num_tasks), nn.ModuleList()
    layers = backbone.masked_layers
    timer["setup"] += time.perf_counter() - started
    matrix = []
    for task_id in range(num_tasks):
        started = time.perf_counter()
        heads.append(nn.Linear(64, 10))
        backbone.setup_task(task_id)
        backbone.initialise_task_embedding(task_id, "N01")
        optimizer = make_optimizer(backbone.parameters_for_task(task_id) + list(heads[task_id].parameters()))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + task_id)
        previous = backbone.previous_cumulative_mask(task_id)
        # Eq. 2 multipliers depend only on the previous tasks' masks: fixed for the whole task
        rates = {
            name: (adjustment_rate(w, "hat"), None if b is None else adjustment_rate(b, "hat"))
            for name, (w, b) in backbone.parameter_measures(previous, aggregation="min").items()
        }
        embeddings = backbone.embedding_parameters(task_id)
        timer["setup"] += time.perf_counter() - started
        backbone.train()
        for _ in range(epochs):
            started = time.perf_counter()
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
            timer["train"] += time.perf_counter() - started
            _validate_epoch(
                timer,
                backbone,
                lambda x, t: heads[t](backbone(x, t, "val", s_max)),
                data,
                task_id,
                eval_batch_size,
            )
        backbone.store_mask(task_id)
        started = time.perf_counter()
        backbone.eval()
        matrix.append(
            evaluate(lambda x, t: heads[t](backbone(x, t, "test")), data, task_id + 1, eval_batch_size)
        )
        timer["test"] += time.perf_counter() - started
    return matrix, timer


LOOPS = {"finetuning": finetuning, "hat": hat}


def optimizer_factory(args) -> Callable:
    """The experiment's optimiser (clcore's ``optimizer=adam`` or ``sgd`` config, no weight decay)."""
    if args.optimizer == "sgd":
        return lambda parameters: torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum)
    return lambda parameters: torch.optim.Adam(parameters, lr=args.lr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algorithm", choices=sorted(LOOPS), required=True)
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=4096)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.0, help="SGD's momentum")
    parser.add_argument("--out", required=True, help="JSON file for the accuracy matrix and timestamps")
    args = parser.parse_args()
    if args.algorithm == "hat":  # the HAT loop's imports, done before the clock starts like the rest
        import clcore.algorithms.hat  # noqa: F401
        import clcore.backbones.hat_mlp  # noqa: F401

        # Lightning sets this on import; a hand-written loop never has it (clrun removes it too
        # on GPU-less machines, see clcore.lightning_speed.use_cached_cuda_check)
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    imports_done, imports_done_cpu = time.time(), time.process_time()
    data = permuted_mnist(args.root, args.tasks, args.seed, args.val_fraction)
    matrix, phases = LOOPS[args.algorithm](
        data,
        args.tasks,
        args.seed,
        args.epochs,
        args.batch_size,
        args.eval_batch_size,
        optimizer_factory(args),
    )
    stamps = {"imports_done": imports_done, "imports_done_cpu": imports_done_cpu}
    stamps.update({"end": time.time(), "end_cpu": time.process_time()})
    Path(args.out).write_text(json.dumps({**stamps, "matrix": matrix, "phases": phases}))


if __name__ == "__main__":
    main()
