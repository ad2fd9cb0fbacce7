"""Heads per paradigm: TIL (one per task), CIL (grows with classes), DIL (one shared)."""

from clcore.heads.base import CLHeads
from clcore.heads.cil import HeadsCIL
from clcore.heads.dil import HeadDIL
from clcore.heads.til import HeadsTIL

__all__ = ["CLHeads", "HeadDIL", "HeadsCIL", "HeadsTIL"]
