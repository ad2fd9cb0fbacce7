"""The per-task checkpoint format: what a finished task leaves behind, and reading it back safely.

After every finished task the task loop writes ``checkpoints/task_<t>.ckpt`` (atomically). It holds
everything the rest of the run depends on, so that a run killed during task k and started again
with the same command continues with task k and ends with the same accuracy matrix, bit for bit
on CPU, as a run that was never interrupted:

- ``state_dict``: the algorithm's parameters and buffers (HAT masks are buffers; heads re-grow
  from their extra state), plus ``cl_state``: algorithm state kept outside modules
  (``CLAlgorithm.cl_state_dict``, e.g. task vectors);
- ``untrained_state_dict``: the untrained copy used for forward transfer (``eval.zero_shot``);
- ``callbacks``: each callback's Lightning ``state_dict()`` (empty for stateless ones);
- ``results``: ``ContinualResults.state_dict()``, the accuracy matrix so far;
- ``rng``: torch, numpy and Python ``random`` states at the end of the task. Restoring them right
  before the next task's ``setup_task`` gives the new heads, dropout masks and any other global
  random draw exactly the values of the uninterrupted run; the data order needs nothing, each
  task's loader is seeded from the benchmark seed and the task id;
- ``config_hash``: which configuration wrote it (``clcore.clrun.resume.config_hash``);
- ``data_fingerprint``: which data it was trained on (``CLBenchmark.data_fingerprint``).

Only tensors, numbers, strings, lists and dicts are stored, so ``torch.load(weights_only=True)``
reads it, and a file that holds anything else (a pickle that would run code), or a path that is no
regular file (a FIFO would hang the start-up), is refused unread (``clcore.utils.safe_load``).
Whether a run continues from a checkpoint is the resume policy's decision (``clcore.clrun.resume``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from clcore.metrics.results import ContinualResults
from clcore.utils.atomic import torch_save_atomic
from clcore.utils.rng import capture_rng_state, restore_rng_state
from clcore.utils.safe_load import RefusedFileError, load_tensors_safely

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "clcore.checkpoint/1"
CHECKPOINT_KEYS = ("format", "task_id", "config_hash", "state_dict", "cl_state", "results", "rng")
_TASK_CHECKPOINT = re.compile(r"task_(\d+)\.ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, incomplete or from another config."""


# ---- writing and reading checkpoints -------------------------------------------------------
def checkpoint_path(output_dir: Path, task_id: int) -> Path:
    """``<output_dir>/checkpoints/task_<t>.ckpt`` with the 1-based task number."""
    return Path(output_dir) / "checkpoints" / f"task_{task_id + 1}.ckpt"


def save_checkpoint(
    output_dir: Path,
    task_id: int,
    algorithm,
    results: ContinualResults,
    config_digest: str,
    untrained=None,
    callbacks: list | tuple = (),
    data_fingerprint: str | None = None,
    logging_step: int = 0,
) -> Path:
    """Everything needed to continue after task ``task_id`` (0-based), written atomically.

    ``data_fingerprint``: the benchmark's (``CLBenchmark.data_fingerprint``), checked on resume.
    ``logging_step``: the sequence-wide step the task's results were logged at
    (``clcore.loggers.sequence_step``); a resumed run's loggers continue after it.
    """
    path = checkpoint_path(output_dir, task_id)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "task_id": task_id,
        "config_hash": config_digest,
        "data_fingerprint": data_fingerprint,
        "state_dict": algorithm.state_dict(),
        "cl_state": algorithm.cl_state_dict(),
        "untrained_state_dict": untrained.state_dict() if untrained is not None else None,
        "callbacks": [_callback_state(callback) for callback in callbacks],
        "results": results.state_dict(),
        "rng": capture_rng_state(),
        "logging_step": int(logging_step),
    }
    torch_save_atomic(path, checkpoint)
    return path


def _callback_state(callback) -> dict:
    state_dict = getattr(callback, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def read_checkpoint(path: Path, lazy: bool = False) -> dict:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` and checked for every key.

    ``lazy``: map tensors from the file instead of reading them (cheap; to validate a large one).
    Raises ``CheckpointError`` with what is wrong and what to do.
    """
    path = Path(path)
    try:
        checkpoint = load_tensors_safely(path, "checkpoint", lazy=lazy)
    except RefusedFileError as error:  # a FIFO, a folder, pickled code: the message says which
        raise CheckpointError(f"{error}; or start over with resume=false") from None
    except Exception as error:  # missing, truncated, empty, not a torch file at all
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is truncated or not a "
            f"checkpoint. Delete it to continue from the previous task's checkpoint, or start over with resume=false."
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a clcore checkpoint; delete it or use resume=false"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)} (not written by this clcore version, or damaged); "
            f"it cannot be resumed from: start over with resume=false or a new hydra.run.dir"
        )
    if checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {checkpoint['format']!r}, expected {CHECKPOINT_FORMAT!r}; use resume=false"
        )
    if _task_number(path) != checkpoint["task_id"] + 1:
        raise CheckpointError(
            f"checkpoint {path} holds task {checkpoint['task_id'] + 1}, not what its name says; delete it or use resume=false"
        )
    return checkpoint


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The ``task_<t>.ckpt`` with the highest t, or None; opens nothing.

    Whatever the path is (a FIFO, a folder), ``read_checkpoint`` refuses it with a
    ``CheckpointError`` that the resume plan reports like any other unusable checkpoint.
    """
    folder = Path(output_dir) / "checkpoints"
    found = (
        [path for path in folder.glob("task_*.ckpt") if _TASK_CHECKPOINT.fullmatch(path.name)]
        if folder.is_dir()
        else []
    )
    return max(found, key=_task_number, default=None)


def _task_number(path: Path) -> int:
    return int(_TASK_CHECKPOINT.fullmatch(path.name).group(1))


def restore(checkpoint: dict, algorithm, untrained=None, callbacks: list | tuple = ()) -> ContinualResults:
    """Load ``checkpoint`` into the freshly built objects; returns the results so far.

    The RNG states are restored last, so that nothing done here draws from them.
    """
    algorithm.load_state_dict(checkpoint["state_dict"])
    algorithm.load_cl_state_dict(checkpoint["cl_state"])
    saved_untrained = checkpoint.get("untrained_state_dict")
    if untrained is not None and saved_untrained is not None:
        untrained.load_state_dict(saved_untrained)
    for callback, state in zip(callbacks, checkpoint.get("callbacks", [])):
        if state:
            callback.load_state_dict(state)
    results = ContinualResults.from_state_dict(checkpoint["results"])
    restore_rng_state(checkpoint["rng"])
    return results
