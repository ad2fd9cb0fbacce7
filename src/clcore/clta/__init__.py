"""``clta``: the task-arithmetic protocol as an application on the library.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023 (fine-tune per task, add and
negate task vectors); Ortiz-Jimenez et al., NeurIPS 2023 (linearised fine-tuning); Zhang et al.,
NeurIPS 2024 (aTLAS). ``run_protocol(cfg)`` runs a composed ``configs/ta/task_arithmetic.yaml``.

The modules, in the order a run meets them:

- ``cli``: the Hydra entry point (``clta``); its own config tree, ``clcore/configs/ta``.
- ``protocol``: ``run_protocol``, the protocol end to end, and the results JSON and table.
- ``clip_model`` / ``small_mlp``: the pre-trained model, theta_0 with frozen heads: a CLIP image
  encoder with zero-shot heads, or a small MLP that clcore pre-trains for CPU-sized studies.
- ``vision_datasets`` / ``rotated_tasks``: the tasks: the papers' image data sets from local
  folders, or rotated views of digits or MNIST; ``task_data``: one task's splits and class names.
- ``finetune``: one task's fine-tuning (standard or linearised) into a task vector.
- ``evaluation``: accuracy of theta_0 + alpha tau in each evaluation mode; ``selection``: alpha
  on validation data; ``report``: the markdown tables.

The library supplies the rest and the protocol does not repeat it: task vectors, linearisation,
merging and aTLAS (``clcore.task_arithmetic``), the warm-up + cosine schedule
(``clcore.utils.lr_schedules.warmup_cosine``), the top-1 count (``clcore.metrics.top1_accuracy``),
the rotation (``clcore.benchmarks.rotated.rotate``), the base data sets (``clcore.benchmarks.sources``).
Nothing in the library imports this package.

Exports load lazily, so that ``clta --help`` (which imports ``clcore.clta.cli``) answers before torch loads.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(["RESULTS_JSON", "RESULTS_TABLE", "run_protocol"], "clcore.clta.protocol"),
    **dict.fromkeys(["FinetuneSettings", "finetune"], "clcore.clta.fine_tuning"),
    **dict.fromkeys(["EncoderEditor", "accuracy"], "clcore.clta.evaluation"),
    **dict.fromkeys(["select_addition_alpha", "select_negation_alpha"], "clcore.clta.selection"),
    "TaskData": "clcore.clta.task_data",
    "RotatedTasks": "clcore.clta.rotated_tasks",
    "VisionTaskSource": "clcore.clta.vision_datasets",
    "SmallPretrainedMLP": "clcore.clta.small_mlp",
    "CLIPZeroShotModel": "clcore.clta.clip_model",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
