"""Benchmarks: per-task LightningDataModules over in-memory uint8 data with per-batch transforms.

Their base data sets are registry entries (``clcore.benchmarks.sources``): ``register_source``
adds one, from this package or from your own code.
"""

from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.errors import DataNotFoundError
from clcore.benchmarks.permuted import PermutedBenchmark
from clcore.benchmarks.rotated import RotatedBenchmark
from clcore.benchmarks.sources import DataSource, ImageData, register_source
from clcore.benchmarks.split import SplitBenchmark

__all__ = [
    "CLBenchmark",
    "DataNotFoundError",
    "DataSource",
    "ImageData",
    "PermutedBenchmark",
    "RotatedBenchmark",
    "SplitBenchmark",
    "register_source",
]
