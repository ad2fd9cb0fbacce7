"""The resume policy: whether a run continues from the checkpoints in its output folder.

``resume`` in the config: ``auto`` (default) continues when the output folder holds checkpoints of
the same configuration and starts fresh in an empty folder; ``true`` insists on continuing;
``false`` starts over, replacing the folder's checkpoints and results. "The same configuration"
is the resolved config without the keys a continuation may change (``IGNORED_CONFIG_KEYS``),
compared with the folder's ``config.yaml`` and with the hash inside its last checkpoint. The
checkpoints themselves (their format, RNG states, safe reading) are ``clcore.clrun.checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from clcore.clrun.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint
from clcore.clrun.lock import is_first_process
from clcore.config_rules import raise_if_problems

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "true", "false")
# Keys that may change between a run and its continuation: they do not change what is computed.
IGNORED_CONFIG_KEYS = (
    "resume",
    "paths",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "callbacks.progress_bar.enabled",
)


# ---- which configuration -----------------------------------------------------------------------
def comparable_config(cfg: DictConfig | dict) -> dict:
    """The resolved config as plain data, without the keys a continuation may change."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for dotted in IGNORED_CONFIG_KEYS:
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


def config_hash(cfg: DictConfig | dict) -> str:
    canonical = json.dumps(comparable_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_differences(saved: dict, current: dict, limit: int = 8) -> list[str]:
    """``key: <saved> in the folder, <current> now`` for every differing leaf, at most ``limit``."""
    before, after = _flatten(saved), _flatten(current)
    keys = sorted(set(before) | set(after))
    lines = [
        f"{key}: {_shown(before, key)} in the folder, {_shown(after, key)} now"
        for key in keys
        if key not in before or key not in after or before[key] != after[key]
    ]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _shown(flat: dict, key: str) -> str:
    return repr(flat[key]) if key in flat else "(absent)"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# ---- whether to continue -------------------------------------------------------------------
def resume_mode(cfg: DictConfig) -> str:
    """``auto``/``true``/``false`` (YAML parses the last two as booleans); anything else as given."""
    value = cfg.get("resume", "auto")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def resume_plan(cfg: DictConfig, data_fingerprint: str | None = None) -> tuple[Path | None, list[str]]:
    """The checkpoint this run continues from (None: start fresh), and every problem that forbids it.

    ``data_fingerprint``: the loaded benchmark's (``CLBenchmark.data_fingerprint``); a checkpoint
    written on other data is refused, since continuing would mix two data sets in one matrix.
    """
    mode = resume_mode(cfg)
    if mode not in RESUME_MODES:
        return None, [f"resume={cfg.get('resume')!r} is not one of auto, true, false"]
    if mode == "false":
        return None, []
    output_dir = Path(cfg.paths.output_dir)
    problems = []
    if mode == "true" and not cfg.get("save_checkpoints", True):
        problems.append(
            "resume=true needs the per-task checkpoints, but save_checkpoints=false: set save_checkpoints=true"
        )
    saved_config = output_dir / "config.yaml"
    if saved_config.is_file():
        try:
            differences = config_differences(
                comparable_config(OmegaConf.load(saved_config)), comparable_config(cfg)
            )
        except Exception as error:
            differences = [f"its config.yaml cannot be read ({error})"]
        if differences:
            problems.append(
                f"output folder {output_dir} holds a different experiment ({'; '.join(differences)}). "
                f"Use a new folder (hydra.run.dir=...), or resume=false to start over there, replacing its checkpoints and results"
            )
    latest = latest_checkpoint(output_dir)
    if latest is None:
        if mode == "true":
            problems.append(
                f"resume=true but {output_dir / 'checkpoints'} holds no task_<t>.ckpt to continue from: run without resume=true to start"
            )
        return None, problems
    if not problems:  # same experiment: is its last checkpoint usable?
        try:
            checkpoint = read_checkpoint(latest, lazy=True)
            if checkpoint["config_hash"] != config_hash(cfg):
                problems.append(
                    f"checkpoint {latest} was written by a different configuration (config hash differs); "
                    f"use a new hydra.run.dir, or resume=false to start over in {output_dir}"
                )
            saved_data = checkpoint.get("data_fingerprint")
            if data_fingerprint is not None and saved_data is not None and saved_data != data_fingerprint:
                problems.append(
                    f"the data changed since {latest} was written (data fingerprint {saved_data} then, "
                    f"{data_fingerprint} now): continuing would mix two data sets in one accuracy matrix. "
                    f"Put the original data back under benchmark.root, or start over with resume=false"
                )
        except CheckpointError as error:
            problems.append(str(error))
    return (None if problems else latest), problems


def checked_resume_plan(cfg: DictConfig, data_fingerprint: str | None = None) -> Path | None:
    """``resume_plan``, raising its problems as one ``ConfigError``."""
    resume_from, problems = resume_plan(cfg, data_fingerprint)
    raise_if_problems(problems)
    return resume_from


def clear_previous_run(output_dir: Path) -> None:
    """Remove the checkpoints and results a fresh start replaces, so no stale file outlives it.

    Without this, a new run killed early would leave the old run's later checkpoints beside its
    own, and the next ``resume`` would continue from one of them; and the loggers, which append to
    what they find so that a resumed run keeps its logs, would mix the two runs.
    """
    output_dir = Path(output_dir)
    stale = [*sorted((output_dir / "checkpoints").glob("task_*.ckpt"))]
    stale += [
        path
        for path in (
            output_dir / "results" / "acc_matrix.csv",
            output_dir / "results" / "summary.json",
            output_dir / "results" / "learning_curves.csv",
            # the loggers continue what they find (a resumed run keeps its earlier tasks' logs)
            output_dir / "logs" / "metrics.csv",
        )
        if path.is_file()
    ]
    stale += sorted((output_dir / "logs" / "tensorboard").rglob("events.out.tfevents.*"))  # task_<t>/ too
    if stale and is_first_process():  # said once, not once per process of a DDP run
        log.warning(
            "starting over in %s: removing %d file(s) of the previous run (%s)",
            output_dir,
            len(stale),
            ", ".join(p.name for p in stale),
        )
    for path in stale:
        path.unlink(missing_ok=True)  # every process of a multi-GPU run clears
