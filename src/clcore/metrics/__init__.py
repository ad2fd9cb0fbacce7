"""Continual-learning metrics: top-1 accuracy (torchmetrics), the accuracy matrix, AA, BWT, FWT, forgetting.

Loaded on first use (``clcore.utils.lazy_exports``), like the other package roots.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "ContinualResults": "clcore.metrics.results",
    "TaskAccuracy": "clcore.metrics.task_accuracy",
    "average_accuracy": "clcore.metrics.continual",
    "backward_transfer": "clcore.metrics.continual",
    "forgetting": "clcore.metrics.continual",
    "forward_transfer": "clcore.metrics.continual",
    "top1_accuracy": "clcore.metrics.task_accuracy",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
