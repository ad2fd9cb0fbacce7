"""Benchmarks: per-task LightningDataModules over in-memory uint8 data with per-batch transforms.

Their base data sets are registry entries (``clcore.benchmarks.sources``): ``register_source``
adds one, from this package or from your own code. Loaded on first use (``clcore.utils.lazy_exports``):
a permuted run does not import the rotated benchmark's torchvision transforms.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "CLBenchmark": "clcore.benchmarks.base",
    "DamagedDataError": "clcore.benchmarks.errors",
    "DataNotFoundError": "clcore.benchmarks.errors",
    "DataSource": "clcore.benchmarks.sources",
    "ImageData": "clcore.benchmarks.sources",
    "MultiDatasetBenchmark": "clcore.benchmarks.multi_dataset",
    "PermutedBenchmark": "clcore.benchmarks.permuted",
    "RotatedBenchmark": "clcore.benchmarks.rotated",
    "SplitBenchmark": "clcore.benchmarks.split",
    "register_source": "clcore.benchmarks.sources",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
