"""The backbone contract: images in, a feature vector per image out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


class CLBackbone(nn.Module):
    """Feature extractor shared by all tasks.

    Subclasses set ``output_dim`` (the feature size the heads read) and implement
    ``forward(x) -> features`` of shape ``[batch, output_dim]``. Backbones that need the task
    (HAT's mask backbones) take extra keyword arguments; the algorithm that owns them passes those.
    A backbone with rules about its options, or about the run it serves, states them in
    ``config_problems``.
    """

    @classmethod
    def config_problems(cls, options: Mapping[str, Any], *, num_tasks: int | None = None) -> list[str]:
        """Every problem with these options for a run of ``num_tasks`` tasks, each with its fix.

        ``options`` are the constructor's keyword arguments as plain data (the config's
        ``backbone.*`` keys; absent or null ones take their default or follow the benchmark);
        ``num_tasks`` is the run's task count, where known. Read by the constructor or the
        algorithm that owns the backbone, and by ``clrun``'s pre-flight check. Default: none.
        """
        return []

    @classmethod
    def variant_for(cls, required: type, options: Mapping[str, Any]) -> tuple[type, dict] | None:
        """The version of this backbone that an algorithm needing a ``required`` backbone uses,
        with its options: ``(class, options)``, or None where there is none for these options.

        So ``clrun algorithm=hat`` with the default ``backbone=mlp`` runs HAT on the mask version
        of the same MLP instead of refusing (``clcore.clrun.construction.use_backbone_the_algorithm_needs``).
        Default: none.
        """
        return None

    def __init__(self, output_dim: int) -> None:
        super().__init__()
        if output_dim <= 0:
            raise ValueError(f"backbone output_dim must be positive, got {output_dim}")
        self.output_dim = output_dim

    def setup_task(self, task_id: int) -> None:
        """Called before task ``task_id`` (0-based) trains. Default: nothing to do."""

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
