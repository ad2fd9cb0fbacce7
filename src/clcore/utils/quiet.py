"""Warnings that every run would print and that the user can do nothing about, silenced by name.

Each one is a library's note on how clcore uses it, not on what the user configured:

- Lightning 2.6 builds torch's ``LeafSpec``, which torch 2.14 deprecates (every run);
- Lightning's "Found N module(s) in eval mode at the start of training": TAK and CLIP runs keep
  their frozen encoder parts in eval mode on purpose (no dropout, fixed statistics);
- torch's deprecation of ``torch.jit.script``, which open_clip's tokenizer path still calls.

A clean run prints its progress, the accuracy matrix and where the results went.
"""

from __future__ import annotations

import warnings

KNOWN_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"`torch\.jit\.script` is deprecated",
)


def silence_known_noise() -> None:
    """Ignore the ``KNOWN_NOISE`` warnings from here on (idempotent)."""
    for pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
