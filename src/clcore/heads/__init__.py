"""Heads per paradigm: TIL (one per task), CIL (grows with classes), DIL (one shared).

Loaded on first use (``clcore.utils.lazy_exports``), like the other package roots.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "CLHeads": "clcore.heads.base",
    "HeadDIL": "clcore.heads.dil",
    "HeadsCIL": "clcore.heads.cil",
    "HeadsTIL": "clcore.heads.til",
    "ZeroShotHead": "clcore.heads.zero_shot_head",
    "build_zero_shot_weights": "clcore.heads.zero_shot_head",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
