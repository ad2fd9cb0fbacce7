"""Continual-learning algorithms, one per file, all ``CLAlgorithm`` LightningModules."""

from clcore.algorithms.base import CLAlgorithm
from clcore.algorithms.finetuning import Finetuning
from clcore.algorithms.fix import Fix
from clcore.algorithms.hat import HAT
from clcore.algorithms.tak import TAK

__all__ = ["CLAlgorithm", "Finetuning", "Fix", "HAT", "TAK"]
