"""Heads per paradigm: TIL (one per task), CIL (grows with classes), DIL (one shared)."""

from clcore.heads.base import CLHeads
from clcore.heads.cil import HeadsCIL
from clcore.heads.dil import HeadDIL
from clcore.heads.til import HeadsTIL
from clcore.heads.zero_shot_head import ZeroShotHead, build_zero_shot_weights

__all__ = ["CLHeads", "HeadDIL", "HeadsCIL", "HeadsTIL", "ZeroShotHead", "build_zero_shot_weights"]
