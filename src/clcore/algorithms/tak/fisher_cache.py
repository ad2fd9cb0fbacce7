"""Disk cache of KFAC factors: computed once at theta_0 per task, reused by every later task.

TAK (Porrello et al., ICLR 2026) trains task t against the other tasks' curvature without
touching their data; the factors are what stands in for that data, so they are cached. One file
per key (data set, task, model, fraction, samples, ...), named by a hash of the key. The file
holds the key itself and the factors as tensors, strings and ints only, so it is read back with
``torch.load(weights_only=True)`` (``load_tensors_safely``): no pickled code runs, and a FIFO or
folder planted under the file's name is refused unopened. A file that cannot be read, or that holds
another key, raises ``ValueError`` naming the file (delete it to recompute) rather than being
silently recomputed: a stale cache would otherwise change results without anyone noticing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from clcore.algorithms.tak.kfac import KFACFactors
from clcore.utils.atomic import torch_save_atomic
from clcore.utils.safe_load import RefusedFileError, load_tensors_safely

CACHE_FORMAT = "clcore.kfac_factors/1"
REMOTE_PREFIXES = ("http://", "https://", "hf://")


def load_or_compute_factors(
    cache_dir: str | os.PathLike[str] | None,
    key: Mapping[str, Any],
    compute_fn: Callable[[], KFACFactors],
) -> KFACFactors:
    """The cached factors for ``key``, or ``compute_fn()`` saved under it (no cache if ``cache_dir`` is None).

    Args:
        cache_dir: a local folder (created if missing). Remote sources are refused offline.
        key: JSON-serialisable description of what the factors depend on,
            e.g. ``{"dataset": "cars", "task": 3, "model": "ViT-B-32", "num_samples": 1}``.
        compute_fn: computes the factors on a cache miss.
    """
    if cache_dir is None:
        return _checked(compute_fn())
    path = cache_file(cache_dir, key)
    if path.exists():
        return _load(path, canonical_key(key))
    factors = _checked(compute_fn())
    _save_atomically(path, canonical_key(key), factors)
    return factors


def cache_file(cache_dir: str | os.PathLike[str], key: Mapping[str, Any]) -> Path:
    """``<cache_dir>/kfac-<first 20 hex of sha256(canonical key)>.pt``."""
    if str(cache_dir).startswith(REMOTE_PREFIXES):
        raise ValueError(
            f"KFAC cache {str(cache_dir)!r} is remote; only local folders are supported offline: "
            "download the factor files into a local folder and pass its path"
        )
    digest = hashlib.sha256(canonical_key(key).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"kfac-{digest}.pt"


def canonical_key(key: Mapping[str, Any]) -> str:
    """Key as sorted, compact JSON: equal keys give equal strings whatever their insertion order."""
    try:
        return json.dumps(dict(key), sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise TypeError(
            f"KFAC cache key must be JSON-serialisable (str, int, float, bool, lists, dicts): {exc}"
        ) from exc


def _load(path: Path, expected_key: str) -> KFACFactors:
    try:
        content = load_tensors_safely(path, "KFAC cache file")
    except RefusedFileError:  # a FIFO, a folder, pickled code: a ValueError with clcore's message
        raise
    except Exception as exc:  # truncated file, not a torch file: both mean "unreadable"
        raise ValueError(f"KFAC cache file {path} cannot be read ({exc}); delete it to recompute") from exc
    if not isinstance(content, dict) or content.get("format") != CACHE_FORMAT:
        raise ValueError(f"KFAC cache file {path} is not a {CACHE_FORMAT} file; delete it to recompute")
    if content.get("key") != expected_key:
        raise ValueError(
            f"KFAC cache file {path} holds factors for key {content.get('key')}, not for {expected_key}; "
            "delete it to recompute"
        )
    try:
        return KFACFactors.from_state_dict(content["factors"])
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"KFAC cache file {path} holds malformed factors ({exc}); delete it to recompute"
        ) from exc


def _save_atomically(path: Path, key: str, factors: KFACFactors) -> None:
    # Write then rename: a run killed mid-save leaves no truncated file under the final name.
    content = {"format": CACHE_FORMAT, "key": key, "factors": factors.to(device="cpu").state_dict()}
    torch_save_atomic(path, content)


def _checked(factors: Any) -> KFACFactors:
    if not isinstance(factors, KFACFactors):
        raise TypeError(f"compute_fn must return KFACFactors, got {type(factors).__name__}")
    return factors
