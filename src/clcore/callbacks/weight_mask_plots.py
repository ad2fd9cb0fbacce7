"""PNG plot of the per-weight masks of PackNet and WSN: what each task uses, and the room left."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clcore.callbacks.base import CLCallback

if TYPE_CHECKING:
    from clcore.components.weight_masks import WeightMaskAlgorithm


class WeightMaskPlots(CLCallback):
    """At the end of the sequence, ``<default_root_dir>/<output_subdir>/weight_masks.png``:

    - left, per task (rows) and masked layer (columns): the share of the layer's weights that the
      task's test network uses (PackNet: the weights of tasks 1..t; WSN: the subnetwork ``m_t``,
      reused weights included);
    - right: the capacity left after each task, the share of masked weights no task uses yet (the
      run's ``capacity`` in ``summary.json``).

    Read from the algorithm's stored masks (checkpointed buffers), so right after a resume too.
    Does nothing for other algorithms (HAT's unit masks: ``HATMaskPlots``). ``plot=False`` (the
    run's ``plots`` setting) draws nothing.
    """

    def __init__(self, output_subdir: str = "plots", dpi: int = 100, plot: bool = True) -> None:
        self.output_subdir, self.dpi, self.plot = output_subdir, dpi, plot

    def on_sequence_end(self, trainer, algorithm, results=None) -> None:
        if not self.plot or not trainer.is_global_zero:
            return
        # imported here: the callback is in the default set, and most runs never need the mask block
        from clcore.components.weight_masks import WeightMaskAlgorithm

        if not isinstance(algorithm, WeightMaskAlgorithm):
            return
        if results is None or results.tasks_done == 0:
            return
        from clcore.callbacks.figures import run_caption

        folder = Path(trainer.default_root_dir) / self.output_subdir
        self.draw(algorithm, results.tasks_done, folder, run_caption(trainer, algorithm, results))

    @staticmethod
    def shares(algorithm: WeightMaskAlgorithm, tasks: int) -> tuple[list[list[float]], list[float]]:
        """``(used[t][l], capacity[t])``: layer ``l``'s share used by task ``t``'s test network, and
        the share of all masked weights no task ``<= t`` uses."""
        used, capacity, union = [], [], None
        for task_id in range(tasks):
            masks = algorithm.used_by_task(task_id)
            used.append([float(masks[name].float().mean()) for name in algorithm.masked_names])
            union = masks if union is None else {name: union[name] | masks[name] for name in masks}
            total = sum(mask.numel() for mask in union.values())
            capacity.append(1.0 - sum(int(mask.sum()) for mask in union.values()) / total)
        return used, capacity

    def draw(self, algorithm: WeightMaskAlgorithm, tasks: int, folder: Path, caption: str = "") -> Path:
        """The figure; ``caption`` (``figures.run_caption``: which run) across the top."""
        import matplotlib

        from clcore.callbacks.figures import add_caption, new_figure, save_png

        folder.mkdir(parents=True, exist_ok=True)
        used, capacity = self.shares(algorithm, tasks)
        layers = [name.removesuffix(".weight") for name in algorithm.masked_names]
        width = 3.0 + 0.45 * len(layers)
        fig, axes = new_figure(width + 4.5, 3.4, 1, 2, margins=(0.75, 0.2, 0.8, 0.75), gaps=(1.5, 0.8))
        left, right = axes[0, 0], axes[0, 1]
        image = left.imshow(used, vmin=0, vmax=1, cmap=matplotlib.colormaps["viridis"], aspect="auto")
        left.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=6)
        left.set_yticks(range(tasks), [f"task {t + 1}" for t in range(tasks)], fontsize=7)
        left.set_title("share of each layer's weights a task uses", fontsize=8)
        fig.colorbar(image, ax=left, fraction=0.05, label="share of the layer's weights")
        right.plot(range(1, tasks + 1), [100 * c for c in capacity], marker="o")
        right.set_xticks(range(1, tasks + 1))
        right.set_ylim(0, 100)
        right.set_xlabel("after task")
        right.set_ylabel("capacity left (%)")
        right.set_title("masked weights no task uses yet", fontsize=8)
        right.grid(alpha=0.3)
        fig.suptitle(
            f"{type(algorithm).__name__} weight masks after task {tasks}", fontsize=9, y=1 - 0.4 / 3.4
        )
        add_caption(fig, caption, 3.4)
        return save_png(fig, folder / "weight_masks.png", dpi=self.dpi)
