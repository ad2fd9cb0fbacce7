"""Captum attribution maps of a fixed batch of every task, after every task: how what the
network looks at shifts as the sequence goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clcore.callbacks.base import CLCallback


class _TaskForward(nn.Module):
    """Pixels in [0, 1] of task ``task_id`` -> the algorithm's evaluation logits for that task.

    Attributing to the raw pixels, before normalisation and the task's own transform (a pixel
    permutation, a rotation), puts the maps in image space, where a person can read them, and
    makes maps of different tasks comparable. The benchmark's transform is tensor ops, so the
    gradient flows through it. ``transform_batch`` expects 0..255 values and divides in place,
    hence ``* 255`` (which also keeps Captum's leaf input out of the in-place op).
    """

    def __init__(self, algorithm: nn.Module, benchmark, task_id: int) -> None:
        super().__init__()
        self.algorithm = algorithm
        self.benchmark = benchmark
        self.task_id = task_id

    def forward(self, pixels: Tensor) -> Tensor:
        return self.algorithm.eval_logits(
            self.benchmark.transform_batch(pixels * 255.0, self.task_id), self.task_id
        )


class Attributions(CLCallback):
    """After training task ``t``, attributes the first ``num_images`` test images of every task
    seen so far to their true class with a Captum method, and writes under
    ``<output>/<output_subdir>/``:

    - ``task_<j>/inputs.pt`` (uint8 ``[N, C, H, W]``) and ``task_<j>/labels.pt`` (local labels),
      once: the fixed batch of task ``j``;
    - ``task_<j>/after_task_<t>.pt``: the attributions, float ``[N, C, H, W]`` in pixel space;
    - ``task_<j>.png``: the images and, one row per task trained since, their maps (summed over
      channels; red supports the true class, blue speaks against it; one colour scale per
      image across rows, so a map that fades is a real change, not a rescaling).

    Args:
        method: a class name in ``captum.attr`` (``IntegratedGradients``, ``Saliency``,
            ``InputXGradient``, ``DeepLift``, ``GuidedBackprop``, ...).
        num_images: images per task.
        method_kwargs: passed to the method's constructor.
        attribute_kwargs: passed to ``attribute`` (e.g. ``{n_steps: 32}`` for IntegratedGradients).
            The baseline of IntegratedGradients / DeepLift is Captum's default, zeros: a black image.

    Captum is imported only when the callback runs (``pip install clcore[captum]``).
    """

    def __init__(
        self,
        method: str = "IntegratedGradients",
        num_images: int = 8,
        method_kwargs: dict[str, Any] | None = None,
        attribute_kwargs: dict[str, Any] | None = None,
        output_subdir: str = "attributions",
        dpi: int = 100,
    ) -> None:
        self.method = method
        self.num_images = num_images
        self.method_kwargs = dict(method_kwargs or {})
        self.attribute_kwargs = dict(attribute_kwargs or {})
        self.output_subdir = output_subdir
        self.dpi = dpi

    def on_task_end(self, trainer, algorithm, task_id: int, results=None) -> None:
        if not trainer.is_global_zero:
            return
        from clcore.utils.atomic import torch_save_atomic

        benchmark = trainer.datamodule
        folder = Path(trainer.default_root_dir) / self.output_subdir
        for seen in range(task_id + 1):
            task_folder = folder / f"task_{seen + 1}"
            split = benchmark.task_split(benchmark.eval_split, seen)
            images, labels = split.images[: self.num_images].cpu(), split.labels[: self.num_images].cpu()
            if not (task_folder / "inputs.pt").exists():
                torch_save_atomic(task_folder / "inputs.pt", images)
                torch_save_atomic(task_folder / "labels.pt", labels)
            maps = self.attribute(algorithm, benchmark, images, labels, seen)
            torch_save_atomic(task_folder / f"after_task_{task_id + 1}.pt", maps)
            self.draw(folder, seen, task_id)

    def attribute(
        self, algorithm: nn.Module, benchmark, images: Tensor, labels: Tensor, task_id: int
    ) -> Tensor:
        """Attributions ``[N, C, H, W]`` (CPU, float) of uint8 ``images`` to their true classes."""
        try:
            import captum.attr
        except ImportError as error:
            raise ImportError(
                "the Attributions callback needs Captum: pip install 'clcore[captum]'"
            ) from error
        explainer = getattr(captum.attr, self.method)(
            _TaskForward(algorithm, benchmark, task_id), **self.method_kwargs
        )
        device = next(algorithm.parameters()).device
        pixels = (
            images.to(device).float() / 255.0
        ).requires_grad_()  # gradient methods need it; saves Captum a warning
        targets = algorithm.heads.targets(labels.to(device), task_id)
        was_training = algorithm.training
        algorithm.eval()  # the evaluation network: batch-norm statistics, no dropout
        try:
            with torch.enable_grad():
                maps = explainer.attribute(pixels, target=targets, **self.attribute_kwargs)
        finally:
            algorithm.train(was_training)
        return maps.detach().float().cpu()

    def draw(self, folder: Path, task_id: int, last_trained: int) -> Path:
        """``task_<j>.png``: the images, then one row of maps per task trained since task ``j``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        task_folder = folder / f"task_{task_id + 1}"
        from clcore.utils.safe_load import load_tensors_safely

        images = load_tensors_safely(task_folder / "inputs.pt", "attribution inputs")
        labels = load_tensors_safely(task_folder / "labels.pt", "attribution labels")
        after = [
            t for t in range(task_id + 1, last_trained + 2) if (task_folder / f"after_task_{t}.pt").exists()
        ]
        maps = torch.stack(
            [
                load_tensors_safely(task_folder / f"after_task_{t}.pt", "attribution maps").sum(1)
                for t in after
            ]
        )  # [R, N, H, W]
        scale = maps.abs().amax(dim=(0, 2, 3)).clamp_min(1e-12)  # one scale per image, shared by its rows
        n = images.shape[0]
        fig, axes = plt.subplots(
            1 + len(after), n, figsize=(1.2 * n + 1.2, 1.25 * (1 + len(after)) + 0.4), squeeze=False
        )
        for column in range(n):
            picture = images[column].permute(1, 2, 0).squeeze(-1).numpy()
            axes[0, column].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axes[0, column].set_title(f"label {int(labels[column])}", fontsize=7)
            for row in range(1, len(after) + 1):
                axes[row, column].imshow(
                    maps[row - 1, column].numpy(),
                    cmap="bwr",
                    vmin=-float(scale[column]),
                    vmax=float(scale[column]),
                )
        for row, t in enumerate(after, start=1):
            axes[row, 0].set_ylabel(f"after task {t}", fontsize=7)
        axes[0, 0].set_ylabel("input", fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"task {task_id + 1}: {self.method} attributions to the true class", fontsize=9)
        fig.tight_layout()
        path = folder / f"task_{task_id + 1}.png"
        fig.savefig(path, dpi=self.dpi)
        plt.close(fig)
        return path
