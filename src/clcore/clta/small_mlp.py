"""A small pre-trained model for CPU-sized task-arithmetic studies, pre-trained by clcore itself.

Stands where CLIP stands in the real protocol (``clip_model.py``): an MLP feature extractor plus a
10-way digit classifier, trained together on the *upright* pre-training part of the base data
(``rotated_tasks.load_base_split``). The MLP is theta_0 and is what fine-tuning changes; the
classifier is frozen and serves as every digit task's head, as CLIP's zero-shot head does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clcore.backbones.mlp import MLP
from clcore.clta.rotated_tasks import load_base_split, normalised_images
from clcore.clta.task_data import TaskData
from clcore.metrics.task_accuracy import top1_accuracy


class SmallPretrainedMLP:
    """``encoder``: MLP(``hidden_dims``, ``output_dim``) pre-trained on upright images; ``head(task)``: the frozen classifier.

    ``pretrain``: ``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``seed`` (AdamW, constant lr).
    ``pretrain_test_accuracy`` is the pre-trained model's accuracy on the upright base test set.
    """

    def __init__(
        self,
        base_data: Mapping,
        hidden_dims: Sequence[int] = (256, 128),
        output_dim: int = 64,
        pretrain: Mapping | None = None,
    ) -> None:
        settings = {
            "steps": 500,
            "batch_size": 128,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "seed": 0,
            **(pretrain or {}),
        }
        split = load_base_split(
            base_data["source"],
            base_data.get("root"),
            base_data["pretrain_fraction"],
            base_data["split_seed"],
        )
        data = split.data
        torch.manual_seed(settings["seed"])
        channels, height, width = data.image_shape
        self.encoder = MLP(channels * height * width, list(hidden_dims), output_dim)
        self.classifier = nn.Linear(output_dim, data.num_classes)
        self.preprocess = None  # the digit tasks are tensors already

        images = normalised_images(data.train_images[split.pretrain_indices], data)
        labels = data.train_labels[split.pretrain_indices]
        self.pretrain_losses = self._pretrain(images, labels, settings)
        with torch.no_grad():
            test_logits = self.classifier(self.encoder(normalised_images(data.test_images, data)))
        self.pretrain_test_accuracy = top1_accuracy([(test_logits, data.test_labels)])
        self.settings = {
            "base_data": dict(base_data),
            "hidden_dims": list(hidden_dims),
            "output_dim": output_dim,
            "pretrain": settings,
        }
        self.num_pretrain_images = len(labels)

    def _pretrain(self, images: torch.Tensor, labels: torch.Tensor, settings: Mapping) -> list[float]:
        parameters = [*self.encoder.parameters(), *self.classifier.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"])
        generator = torch.Generator().manual_seed(settings["seed"])
        losses = []
        for _ in range(settings["steps"]):
            batch = torch.randint(len(labels), (settings["batch_size"],), generator=generator)
            loss = F.cross_entropy(self.classifier(self.encoder(images[batch])), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        self.encoder.eval()
        return losses

    def to(self, device: torch.device) -> SmallPretrainedMLP:
        self.encoder.to(device)
        self.classifier.to(device)
        return self

    def head(self, task: TaskData) -> nn.Module:
        if task.num_classes != self.classifier.out_features:
            raise ValueError(
                f"task {task.name} has {task.num_classes} classes; the pre-trained classifier has "
                f"{self.classifier.out_features}"
            )
        return copy.deepcopy(self.classifier).requires_grad_(False)

    def describe(self) -> dict:
        return {
            "kind": "small_pretrained_mlp",
            **self.settings,
            "pretrain_images": self.num_pretrain_images,
            "pretrain_final_loss": self.pretrain_losses[-1] if self.pretrain_losses else None,
            "pretrain_upright_test_accuracy": self.pretrain_test_accuracy,
            "encoder_parameters": sum(p.numel() for p in self.encoder.parameters()),
        }
