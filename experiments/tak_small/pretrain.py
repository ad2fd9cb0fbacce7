"""theta_0 for the CPU-sized TAK study: an MLP and its classifier pre-trained on upright MNIST.

Task arithmetic starts from a pre-trained model; the study's stand-in for CLIP is the clcore MLP
backbone (784-256-100-64) trained, with a linear classifier on its L2-normalised features (TAK
classifies normalised features, as CLIP does; logits = scale * W z / ||z|| + b with a fixed scale,
10 here where CLIP has 100), on the UPRIGHT training images. The study's tasks
are the same digits rotated (Rotated MNIST, DIL), on which theta_0 is weak; the classifier plays
CLIP's frozen zero-shot head (``clcore.algorithms.tak.heads.SavedClassifier``).

Writes ``<out>/mlp_theta0.pt`` (the backbone's state dict) and ``<out>/mlp_head.pt`` (weight, bias,
class names) and prints theta_0's test accuracy at each angle of the study.

    python scripts/mnist_from_test_set.py --src /work/shared/data/mnist --dst data/mnist-from-test
    python experiments/tak_small/pretrain.py --root data/mnist-from-test --out data/tak_small
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clcore.backbones import MLP
from clcore.benchmarks import RotatedBenchmark
from clcore.benchmarks.sources import DIGIT_NAMES
from clcore.benchmarks.tensor_loader import TensorBatchLoader

STUDY_ANGLES = (45.0, 90.0, 135.0, 180.0)


def logits(backbone: nn.Module, head: nn.Linear, x: torch.Tensor, scale: float) -> torch.Tensor:
    return head(scale * F.normalize(backbone(x), dim=-1))


def accuracy(
    backbone: nn.Module, head: nn.Linear, benchmark: RotatedBenchmark, task_id: int, scale: float
) -> float:
    split = benchmark.task_split("test", task_id)
    with torch.no_grad():
        predictions = logits(backbone, head, benchmark.prepare_batch(split.images, task_id), scale).argmax(-1)
    return float((predictions == split.labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="data/mnist-from-test", help="folder holding MNIST/raw/")
    parser.add_argument("--out", type=Path, default=Path("data/tak_small"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--logit-scale", type=float, default=10.0, help="fixed scale of the normalised features"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    # Task 1 upright (pre-training data), then the study's angles (evaluation only). Same seed and
    # validation split as the study's benchmark, so theta_0 never saw the study's validation images.
    benchmark = RotatedBenchmark(
        "mnist", num_tasks=1 + len(STUDY_ANGLES), angles=[0.0, *STUDY_ANGLES], root=args.root, seed=args.seed
    )
    benchmark.load()
    backbone = MLP(input_dim=benchmark.input_dim, hidden_dims=(256, 100), output_dim=64)
    head = nn.Linear(64, 10)
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    train = benchmark.task_split("train", 0)
    loader = TensorBatchLoader(train.images, train.labels, 0, batch_size=128, shuffle=True, seed=args.seed)
    for epoch in range(args.epochs):
        for images, labels, task_id in loader:
            loss = F.cross_entropy(
                logits(backbone, head, benchmark.prepare_batch(images, task_id), args.logit_scale), labels
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(backbone.state_dict(), args.out / "mlp_theta0.pt")
    # The scale folded into the weight: TAK's heads see normalised features, logits = W' z + b.
    weight = args.logit_scale * head.weight.detach()
    torch.save(
        {"weight": weight, "bias": head.bias.detach(), "class_names": list(DIGIT_NAMES)},
        args.out / "mlp_head.pt",
    )
    report = {
        f"{angle:g}": accuracy(backbone, head, benchmark, task, args.logit_scale)
        for task, angle in enumerate([0.0, *STUDY_ANGLES])
    }
    (args.out / "theta0_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        "theta_0 test accuracy by rotation angle:",
        {angle: round(100 * acc, 1) for angle, acc in report.items()},
    )


if __name__ == "__main__":
    main()
