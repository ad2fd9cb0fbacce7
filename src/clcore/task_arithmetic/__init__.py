"""Task arithmetic in pure PyTorch: task vectors, linearised models, merging, aTLAS.

Importing it loads neither Lightning nor Hydra nor an application (``clcore.clrun``,
``clcore.clta``); TAK, ``clta`` and your own code build on these pieces.
"""

from clcore.task_arithmetic.atlas import (
    ATLASModel,
    cross_entropy_objective,
    entropy_objective,
    fit_atlas,
)
from clcore.task_arithmetic.linearize import LinearizedModel
from clcore.task_arithmetic.merging import (
    MERGE_METHODS,
    dare,
    iso,
    iso_cts,
    isotropic_matrix,
    merge,
    ta,
    ties,
    ties_entry,
    tsv,
    tsv_factors,
)
from clcore.task_arithmetic.task_vectors import LinearTaskVector, TaskVector, unpack_task_vectors

__all__ = [
    "ATLASModel",
    "LinearTaskVector",
    "LinearizedModel",
    "MERGE_METHODS",
    "TaskVector",
    "cross_entropy_objective",
    "dare",
    "entropy_objective",
    "fit_atlas",
    "iso",
    "iso_cts",
    "isotropic_matrix",
    "merge",
    "ta",
    "ties",
    "ties_entry",
    "tsv",
    "tsv_factors",
    "unpack_task_vectors",
]
