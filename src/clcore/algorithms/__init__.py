"""Continual-learning algorithms, one per file, all ``CLAlgorithm`` LightningModules.

Loaded on first use (``clcore.utils.lazy_exports``): a run of one algorithm imports that one, not
TAK's CLIP and task-arithmetic machinery.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "CLAlgorithm": "clcore.algorithms.base",
    "Finetuning": "clcore.algorithms.finetuning",
    "Fix": "clcore.algorithms.fix",
    "HAT": "clcore.algorithms.hat",
    "AdaHAT": "clcore.algorithms.adahat",
    "TAK": "clcore.algorithms.tak",
    # parameter isolation on per-weight masks (clcore.components.weight_masks)
    "PackNet": "clcore.algorithms.packnet",
    "WSN": "clcore.algorithms.wsn",
    # regularisation baselines on one penalty block (clcore.components.parameter_penalty)
    "EWC": "clcore.algorithms.ewc",
    "OnlineEWC": "clcore.algorithms.online_ewc",
    "SI": "clcore.algorithms.si",
    "MAS": "clcore.algorithms.mas",
    "L2": "clcore.algorithms.l2",
    "LwF": "clcore.algorithms.lwf",
    # replay on one memory block (clcore.components.replay_memory)
    "ER": "clcore.algorithms.er",
    "DER": "clcore.algorithms.der",
    "DERpp": "clcore.algorithms.der",
    "ICaRL": "clcore.algorithms.icarl",
    "AGEM": "clcore.algorithms.agem",
    "GDumb": "clcore.algorithms.gdumb",
    "ERACE": "clcore.algorithms.er_ace",
    # plasticity: selective reinitialisation of low-utility units
    "CBP": "clcore.algorithms.cbp",
    # reference rows of a results table
    "Joint": "clcore.algorithms.joint",
    "Independent": "clcore.algorithms.independent",
    "Random": "clcore.algorithms.random_network",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
