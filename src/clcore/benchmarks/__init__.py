"""Benchmarks: per-task LightningDataModules over in-memory uint8 data with per-batch transforms."""

from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.errors import DataNotFoundError
from clcore.benchmarks.permuted import PermutedBenchmark
from clcore.benchmarks.rotated import RotatedBenchmark
from clcore.benchmarks.split import SplitBenchmark

__all__ = ["CLBenchmark", "DataNotFoundError", "PermutedBenchmark", "RotatedBenchmark", "SplitBenchmark"]
