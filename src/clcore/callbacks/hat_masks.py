"""PNG plots of HAT's task masks, cumulative mask and network capacity after each task."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from clcore.backbones.hat_mask import HATMaskBackbone
from clcore.callbacks.base import CLCallback


class HATMaskPlots(CLCallback):
    """After each task, ``<default_root_dir>/<output_subdir>/``:

    - ``masks_after_task_<t>.png``: one panel per masked layer, a row per task seen so far with
      its binary test mask (Serra et al. 2018, Sec. 2.2) and a last row with the cumulative mask
      ``a^{<=t}`` (Sec. 2.3); columns are units (channels for convs);
    - ``capacity.png``: network capacity (AdaHAT, Wang et al. 2024, Sec. 4.1) after each task.

    Everything is read from the backbone's stored masks, so the plots are also right after a
    resumed run. By default only the last task's figure is drawn, at the end of the sequence: it
    already shows every task's mask, and a figure costs 0.1-0.3 s, which a short task would
    feel; ``every_task=true`` draws one figure per task as it ends. Does nothing for
    algorithms without a HAT mask backbone. ``plot=False`` (the run's ``plots`` setting, off by
    default for speed) draws nothing.
    """

    def __init__(
        self,
        output_subdir: str = "plots/hat_masks",
        dpi: int = 100,
        every_task: bool = False,
        plot: bool = True,
    ) -> None:
        self.output_subdir = output_subdir
        self.dpi = dpi
        self.every_task = every_task
        self.plot = plot

    def on_task_end(self, trainer, algorithm, task_id: int, results=None) -> None:
        if self.every_task:
            self._draw_if_hat(trainer, algorithm, task_id)

    def on_sequence_end(self, trainer, algorithm, results=None) -> None:
        if not self.every_task and results is not None and results.tasks_done > 0:
            self._draw_if_hat(trainer, algorithm, results.tasks_done - 1)

    def _draw_if_hat(self, trainer, algorithm, task_id: int) -> None:
        if not self.plot or (trainer is not None and not trainer.is_global_zero):
            return
        if not isinstance(getattr(algorithm, "backbone", None), HATMaskBackbone):
            return
        folder = Path(trainer.default_root_dir if trainer is not None else ".") / self.output_subdir
        self.draw(algorithm, task_id, folder)

    def draw(self, algorithm, task_id: int, folder: Path) -> list[Path]:
        from clcore.callbacks.figures import new_figure, save_png

        folder.mkdir(parents=True, exist_ok=True)
        backbone = algorithm.backbone
        layer_names = backbone.masked_layer_names
        tasks_seen = task_id + 1

        # A grid of panels keeps deep backbones (ResNet-18: 21 masked convs) at a sane image size.
        columns = 1 if len(layer_names) <= 6 else 3
        rows_of_panels = math.ceil(len(layer_names) / columns)
        panel_height = min(0.25 * (tasks_seen + 1) + 0.4, 2.2)
        fig, axes = new_figure(
            7 * columns if columns == 1 else 14,
            (panel_height + 0.3) * rows_of_panels + 0.4,
            rows_of_panels,
            columns,
            # task numbers on the left, the figure's title on top, each panel's title above it
            margins=(0.4, 0.1, 0.1, 0.5),
            gaps=(0.4, 0.3),
        )
        cumulative_mask = backbone.previous_cumulative_mask(tasks_seen)
        with torch.no_grad():
            for ax, name in zip(axes.flat, layer_names):
                rows = torch.cat([backbone.gates[name].test_masks[:tasks_seen], cumulative_mask[name][None]])
                ax.imshow(
                    rows.float().cpu().numpy(),
                    aspect="auto",
                    interpolation="nearest",
                    cmap="Greys",
                    vmin=0,
                    vmax=1,
                )
                ax.set_yticks(
                    range(tasks_seen + 1), [str(t + 1) for t in range(tasks_seen)] + ["cum."], fontsize=6
                )
                ax.set_xticks([])
                ax.set_title(f"{name} ({rows.shape[1]} units)", fontsize=7)
        for ax in axes.flat[len(layer_names) :]:
            ax.axis("off")
        fig.suptitle(f"HAT binary masks per task after task {tasks_seen} (black = unit used)", fontsize=9)
        masks_path = save_png(fig, folder / f"masks_after_task_{tasks_seen}.png", dpi=self.dpi)

        capacity = [float(algorithm.capacity_after_task(k)) for k in range(tasks_seen)]
        fig, axes = new_figure(4.5, 3.0, margins=(0.75, 0.15, 0.55, 0.15))
        ax = axes[0, 0]
        ax.plot(range(1, tasks_seen + 1), capacity, marker="o")
        ax.set_xticks(range(1, tasks_seen + 1))
        ax.set_xlabel("after training task")
        ax.set_ylabel("network capacity")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        capacity_path = save_png(fig, folder / "capacity.png", dpi=self.dpi)
        return [masks_path, capacity_path]
