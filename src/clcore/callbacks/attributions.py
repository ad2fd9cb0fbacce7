"""Captum attribution maps of a fixed batch of every task, after every task: how what the
network looks at shifts as the sequence goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clcore.callbacks.base import CLCallback


class _TaskForward(nn.Module):
    """Pixels in [0, 1] of task ``task_id`` -> the algorithm's evaluation logits for that task.

    Attributing to the raw pixels, before normalisation and the task's own transform (a pixel
    permutation, a rotation), puts the maps in image space, where a person can read them, and
    makes maps of different tasks comparable. The benchmark's ``prepare_batch`` (normalisation,
    the task's transform, and a backbone's own input convention such as CLIP's 224 x 224) is
    tensor ops, so the gradient flows through it. It expects 0..255 values and divides in place,
    hence ``* 255`` (which also keeps Captum's leaf input out of the in-place op).
    """

    def __init__(self, algorithm: nn.Module, benchmark, task_id: int) -> None:
        super().__init__()
        self.algorithm = algorithm
        self.benchmark = benchmark
        self.task_id = task_id

    def forward(self, pixels: Tensor) -> Tensor:
        return self.algorithm.eval_logits(
            self.benchmark.prepare_batch(pixels * 255.0, self.task_id), self.task_id
        )


class Attributions(CLCallback):
    """After training task ``t``, attributes the first ``num_images`` test images of every task
    seen so far to their true class with a Captum method, and writes under
    ``<output>/<output_subdir>/``:

    - ``task_<j>/inputs.pt`` (uint8 ``[N, C, H, W]``) and ``task_<j>/labels.pt`` (local labels),
      once: the fixed batch of task ``j``;
    - ``task_<j>/after_task_<t>.pt``: the attributions, float ``[N, C, H, W]`` in pixel space;
    - ``task_<j>/predictions_after_task_<t>.json``: what the model predicts for those images
      after task ``t``, one entry per image: ``predicted`` and ``target`` in the head's output
      space (what the test accuracy compares), ``predicted_class`` and ``true_class`` as classes
      of the base data set (a digit, a CIFAR class id; -1 where a prediction maps to no class);
    - ``task_<j>.png``: the run's caption, the images with their true class and, one row per
      task trained since, their maps (summed over channels) titled ``true 3 / pred 5 ✗``; a
      colour bar: red supports the true class, blue speaks against it, one symmetric scale per
      image shared by its rows (so a map that fades is a real change, not a rescaling), its
      largest ``|attribution|`` under the image;
    - ``task_<j>.json``: what the PNG shows, as numbers: true and predicted classes per row,
      correct or not, and each image's colour scale.

    The predictions are one extra forward pass of the evaluation network without gradients,
    and the attributions and predictions run with the random generators forked and restored:
    the run trains exactly as without the callback (``tests/clrun/test_measurement_neutral.py``).

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
        from clcore.callbacks.figures import run_caption
        from clcore.utils.atomic import torch_save_atomic, write_json_atomic

        benchmark = trainer.datamodule
        folder = Path(trainer.default_root_dir) / self.output_subdir
        caption = run_caption(trainer, algorithm, results)
        for seen in range(task_id + 1):
            task_folder = folder / f"task_{seen + 1}"
            split = benchmark.task_split(benchmark.eval_split, seen)
            images, labels = split.images[: self.num_images].cpu(), split.labels[: self.num_images].cpu()
            if not isinstance(images, torch.Tensor):  # a streamed data set: read these few from disk
                images = images.read()
            if not (task_folder / "inputs.pt").exists():
                torch_save_atomic(task_folder / "inputs.pt", images)
                torch_save_atomic(task_folder / "labels.pt", labels)
            # A Captum method may draw random numbers (GradientShap, NoiseTunnel): fork the
            # generators, so the next task trains from the same random state as without the callback.
            with _forked_rng(algorithm):
                maps = self.attribute(algorithm, benchmark, images, labels, seen)
                predictions = self.predict(algorithm, benchmark, images, labels, seen)
            torch_save_atomic(task_folder / f"after_task_{task_id + 1}.pt", maps)
            write_json_atomic(
                task_folder / f"predictions_after_task_{task_id + 1}.json",
                {key: value.tolist() for key, value in predictions.items()},
            )
            self.draw(folder, seen, task_id, caption)

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

    @staticmethod
    def predict(algorithm: nn.Module, benchmark, images: Tensor, labels: Tensor, task_id: int) -> dict:
        """What the evaluation network predicts for uint8 ``images`` of task ``task_id``, exactly as
        the test step does (argmax of ``eval_logits`` of the prepared batch), without gradients and
        without changing the model.

        ``predicted`` / ``target``: in the head's output space (local labels in TIL and DIL, the
        class index over every task so far in CIL); ``predicted_class`` / ``true_class``: the base
        data set's class ids (-1 where the prediction maps to none). CPU int64 ``[N]`` each.
        """
        device = next(algorithm.parameters()).device
        was_training = algorithm.training
        algorithm.eval()
        try:
            with torch.no_grad():
                logits = algorithm.eval_logits(benchmark.prepare_batch(images.to(device), task_id), task_id)
        finally:
            algorithm.train(was_training)
        predicted = logits.argmax(-1).cpu()
        target = algorithm.heads.targets(labels.to(device), task_id).cpu()
        return {
            "predicted": predicted,
            "target": target,
            "predicted_class": _base_classes(algorithm, benchmark, predicted, task_id),
            "true_class": _base_classes(algorithm, benchmark, target, task_id),
        }

    def draw(self, folder: Path, task_id: int, last_trained: int, caption: str = "") -> Path:
        """``task_<j>.png`` and ``task_<j>.json`` (``figure``) in ``folder``; the PNG's path."""
        from clcore.callbacks.figures import save_png
        from clcore.utils.atomic import write_json_atomic

        figure, record = self.figure(folder, task_id, last_trained, caption)
        path = save_png(figure, folder / f"task_{task_id + 1}.png", dpi=self.dpi)
        write_json_atomic(folder / f"task_{task_id + 1}.json", record)
        return path

    def figure(self, folder: Path, task_id: int, last_trained: int, caption: str = "") -> tuple[Any, dict]:
        """The figure of task ``task_id``'s images (a ``matplotlib.figure.Figure``) from the files in
        ``folder``: the images, then one row of maps per task trained since, each image with its
        true and predicted class; ``caption`` (``figures.run_caption``: which run) across the top.
        And what it shows as numbers (``task_<j>.json``)."""
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        from clcore.callbacks.figures import CAPTION_LINE, add_caption, new_figure, wrap_caption
        from clcore.utils.safe_load import load_tensors_safely

        task_folder = folder / f"task_{task_id + 1}"
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
        predictions = {}  # a run from before predictions were recorded has none
        for t in after:
            path = task_folder / f"predictions_after_task_{t}.json"
            if path.is_file():
                predictions[t] = json.loads(path.read_text())
        scale = maps.abs().amax(dim=(0, 2, 3)).clamp_min(1e-12)  # one scale per image, shared by its rows
        n, rows = images.shape[0], 1 + len(after)

        def true_class(column: int) -> int:
            for record in predictions.values():
                return int(record["true_class"][column])
            return int(labels[column])

        # inches: 1.05 a panel; room left for the row names, right for the colour bar, above for
        # the caption and the title, below for each image's scale
        column_width, row_height = 1.05, 1.05
        left, right, bottom = 0.55, 1.45, 0.3
        width = max(5.8, left + right + n * column_width + (n - 1) * 0.1)
        wrapped = wrap_caption(caption, width)
        caption_height = len(wrapped.splitlines()) * CAPTION_LINE if wrapped else 0.0
        top = 0.25 + caption_height + 0.3
        height = top + bottom + rows * row_height + (rows - 1) * 0.3
        fig, axes = new_figure(
            width,
            height,
            rows,
            n,
            margins=(left, width - left - n * column_width - (n - 1) * 0.1, bottom, top),
            gaps=(0.1, 0.3),
        )
        add_caption(fig, wrapped, height)
        fig.text(
            0.01,
            1 - (0.12 + caption_height + 0.15) / height,
            f"task {task_id + 1}: {self.method} attributions to the true class",
            fontsize=8.5,
            ha="left",
            va="center",
        )
        record: dict[str, Any] = {
            "task": task_id + 1,
            "method": self.method,
            "caption": caption,
            "true_class": [true_class(c) for c in range(n)],
            "colour_scale": [float(s) for s in scale],
            "after_task": {},
        }
        for column in range(n):
            picture = images[column].permute(1, 2, 0).squeeze(-1).numpy()
            axes[0, column].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axes[0, column].set_title(f"true {true_class(column)}", fontsize=7)
            for row, t in enumerate(after, start=1):
                ax = axes[row, column]
                ax.imshow(
                    maps[row - 1, column].numpy(),
                    cmap="bwr",
                    vmin=-float(scale[column]),
                    vmax=float(scale[column]),
                )
                if t in predictions:
                    predicted = int(predictions[t]["predicted_class"][column])
                    right_answer = bool(
                        predictions[t]["predicted"][column] == predictions[t]["target"][column]
                    )
                    shown = "?" if predicted < 0 else str(predicted)
                    ax.set_title(
                        f"true {true_class(column)} / pred {shown} {'✓' if right_answer else '✗'}",
                        fontsize=6.5,
                        color="black" if right_answer else "tab:red",
                        fontweight="normal" if right_answer else "bold",
                    )
                    if not right_answer:  # a red frame: wrong at a glance
                        for spine in ax.spines.values():
                            spine.set_edgecolor("tab:red")
                            spine.set_linewidth(1.5)
            axes[-1, column].set_xlabel(f"max |a| {float(scale[column]):.2g}", fontsize=6, color="0.3")
        for row, t in enumerate(after, start=1):
            axes[row, 0].set_ylabel(f"after task {t}", fontsize=7)
            if t in predictions:
                record["after_task"][str(t)] = {
                    "predicted_class": [int(v) for v in predictions[t]["predicted_class"]],
                    "correct": [
                        bool(p == q) for p, q in zip(predictions[t]["predicted"], predictions[t]["target"])
                    ],
                }
        axes[0, 0].set_ylabel("input", fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        # one colour bar for every map: each image has its own scale (its max |a|), so the bar
        # reads in fractions of it; the sign is what matters across images
        bar = fig.add_axes(
            (
                (left + n * column_width + (n - 1) * 0.1 + 0.25) / width,  # beside the last image
                bottom / height,
                0.12 / width,
                (rows - 1) * (row_height + 0.3) / height if rows > 1 else row_height / height,
            )
        )
        colours = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap="bwr"), cax=bar)
        colours.set_ticks([-1, 0, 1], labels=["−max |a|\nagainst", "0", "+max |a|\nsupports"])
        colours.ax.tick_params(labelsize=6)
        colours.set_label(
            "attribution to the true class\n(each image on its own scale)", fontsize=6.5, labelpad=2
        )
        return fig, record


def _forked_rng(algorithm: nn.Module):
    """The global random generators (CPU, and the algorithm's CUDA device) restored after the block."""
    device = next(algorithm.parameters()).device
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _base_classes(algorithm: nn.Module, benchmark, head_indices: Tensor, task_id: int) -> Tensor:
    """Base-data class ids of head outputs ``head_indices`` of task ``task_id`` (-1: none)."""
    heads = algorithm.heads
    try:
        if hasattr(heads, "class_offset"):  # CIL: one output per class of every task so far
            lookup = [c for t in range(heads.num_tasks_seen) for c in benchmark.classes_of(t)]
        else:  # TIL / DIL: the task's own classes, in local-label order
            lookup = list(benchmark.classes_of(task_id))
    except (AttributeError, NotImplementedError, IndexError):
        return head_indices.clone()
    return torch.tensor(
        [lookup[i] if 0 <= i < len(lookup) else -1 for i in head_indices.tolist()], dtype=torch.int64
    )
