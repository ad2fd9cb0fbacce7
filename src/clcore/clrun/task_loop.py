"""The task loop: one Trainer per task, test on every seen task, results written after each task.

    for t in tasks:
        benchmark.setup_task(t)            per-task dataloaders
        algorithm.setup_task(t, classes)   heads grow, masks reset, ...
        Trainer(...).fit(...)              one Trainer per task, fresh optimizer
        Trainer(...).test(...)             every seen task, dataloader_idx = task index
        results + checkpoint written, atomically

Before anything is written: the pre-flight check (``clcore.clrun.checks``) judges the config, every
problem at once, and loads the benchmark; ``clcore.clrun.construction`` constructs the model, callbacks,
loggers and the first Trainer. Then the output folder is locked (``clcore.clrun.lock``), the run
continues after the last finished task of an earlier one or replaces it (``clcore.clrun.resume``),
and ``clcore.clrun.checkpoint`` files are written after each task (docs/reliability.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lightning import Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf

from clcore.algorithms.base import CLAlgorithm
from clcore.clrun import checkpoint, resume
from clcore.clrun.checks import preflight
from clcore.clrun.construction import build_run, use_backbone_the_algorithm_needs
from clcore.clrun.hydra_files import write_hydra_record
from clcore.clrun.lock import is_first_process, output_folder_lock
from clcore.config_rules import ConfigError
from clcore.lightning_speed import entry_points_looked_up_once, use_cached_cuda_check
from clcore.loggers.media import log_accuracy_matrix, log_images
from clcore.loggers.sequence_step import continue_logging_step, logging_step
from clcore.metrics.names import task_metric
from clcore.metrics.results import ContinualResults
from clcore.utils.atomic import remove_stale_temporaries, write_json_atomic, write_text_atomic
from clcore.utils.quiet import silence_known_noise
from clcore.utils.rng import preserved_rng_state

log = logging.getLogger(__name__)


def write_results(results: ContinualResults, output_dir: Path) -> None:
    """``results/acc_matrix.csv`` and ``results/summary.json``, each replaced atomically."""
    write_text_atomic(output_dir / "results" / "acc_matrix.csv", results.acc_matrix_csv())
    write_json_atomic(output_dir / "results" / "summary.json", results.summary())


def _log_task_summary(trainer: Trainer, results: ContinualResults, task_id: int, step: int) -> None:
    """Row t of R, average accuracy and BWT to every logger, at ``step``: the sequence-wide step
    after the task's last training step (``clcore.loggers.sequence_step``).

    ``test/acc/task_<j>`` is one curve per task j across the sequence (its forgetting curve);
    the matrix so far is a table where a logger shows tables (``clcore.loggers.media``).
    """
    if not trainer.loggers:
        return
    summary = results.summary()
    row = results.acc_matrix[task_id, : task_id + 1].tolist()
    metrics = {task_metric("test/acc", j): acc for j, acc in enumerate(row)}
    metrics["test/average_accuracy"] = summary["average_accuracy"]
    if summary["bwt"] is not None:
        metrics["test/bwt"] = summary["bwt"]
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
    log_accuracy_matrix(trainer.loggers, results, step)
    for logger in trainer.loggers:
        # the Trainer that would save these has finished: write them now (the CSV file, TensorBoard's buffer)
        logger.save()


def _call(callbacks: list, hook: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if callable(method):
            method(*args)


def run_sequence(cfg: DictConfig, extra_callbacks: list | None = None) -> ContinualResults:
    """Run the whole task sequence described by ``cfg`` and return its results.

    ``extra_callbacks`` are added to the configured ones (for programmatic use: notebooks,
    benchmarks, tests that need the callback object afterwards).

    Nothing in the output folder is touched until the run is known to start: the pre-flight check
    judges the config and loads the data, ``build_run`` constructs every object (model, callbacks,
    loggers, a Trainer), and only then the folder is locked against a second run, stale files of a
    killed writer are removed, and a fresh start replaces the previous run's results.
    """
    # One Trainer per task would repeat Lightning's start-up notes (GPU available, tips) T times.
    for name in ("lightning.pytorch", "lightning.fabric"):  # and DDP's "Initializing distributed" per rank
        logging.getLogger(name).setLevel(logging.WARNING)
    silence_known_noise()
    use_cached_cuda_check()
    switched = use_backbone_the_algorithm_needs(cfg)
    if switched and is_first_process():
        log.info(switched)
    plan = preflight(cfg)
    output_dir = Path(cfg.paths.output_dir)
    seed_everything(cfg.seed, workers=True, verbose=False)
    benchmark = plan.benchmark
    run = build_run(cfg, benchmark, str(output_dir), extra_callbacks)
    algorithm, callbacks = run.algorithm, run.callbacks
    untrained = _copy_for_zero_shot(algorithm) if cfg.eval.zero_shot else None
    fingerprint = plan.data_fingerprint
    with output_folder_lock(output_dir):
        # Decided again under the lock: a run that held the folder may have finished meanwhile.
        resume_from = resume.checked_resume_plan(cfg, fingerprint)
        results = ContinualResults(benchmark.num_tasks)
        last_step = None  # the sequence-wide logging step of the checkpoint resumed from
        if resume_from is not None:
            # Also restores the RNG states saved after that task: the next task starts as it would have.
            saved = checkpoint.read_checkpoint(resume_from)
            results = checkpoint.restore(saved, algorithm, untrained, callbacks)
            # None for a checkpoint written before the step was recorded: the loggers then keep
            # everything they hold, as before, rather than drop rows they cannot place
            last_step = saved.get("logging_step")
            if is_first_process():
                log.info("resuming from %s: tasks 1-%d done", resume_from, results.tasks_done)
        else:
            resume.clear_previous_run(output_dir)
        if is_first_process():
            # before their first write: a resumed run's loggers drop (CSV), hide (TensorBoard) or
            # step over (W&B) what the killed run logged after its checkpoint; a fresh one starts anew
            for logger in run.loggers:
                continue_after = getattr(logger, "continue_after", None)
                if callable(continue_after):
                    continue_after(last_step)
        if is_first_process():  # the other ranks of a DDP run write nothing here
            for folder in (output_dir, output_dir / "results", output_dir / "checkpoints"):
                remove_stale_temporaries(folder)
            write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            write_hydra_record(cfg, output_dir)
        try:
            first_step = 0 if last_step is None else last_step + 1
            _run_tasks(
                cfg, run, benchmark, untrained, results, plan.config_hash, fingerprint, output_dir, first_step
            )
        except ConfigError as error:
            # Raised once training started (a rule only a later task meets): not a refusal that left
            # the folder untouched, so not reported as one (``clrun`` writes results/FAILED for it).
            raise RuntimeError(f"the run stopped during its task sequence: {error}") from error
    return results


def _run_tasks(cfg, run, benchmark, untrained, results, config_digest, fingerprint, output_dir, step) -> None:
    """The loop itself: from the first unfinished task to the last, then the end-of-run callbacks.

    ``step``: the sequence-wide logging step the next task's first training batch logs at.
    """
    algorithm, callbacks = run.algorithm, run.callbacks
    # One Trainer per task; the installed packages' entry points are read for the first only.
    with entry_points_looked_up_once():
        trainer = None
        for task_id in range(results.tasks_done, benchmark.num_tasks):
            started = time.perf_counter()
            benchmark.setup_task(task_id)
            algorithm.setup_task(task_id, benchmark.num_classes_of(task_id))
            trainer = run.first_trainer if trainer is None else run.new_trainer()
            continue_logging_step(trainer, step)  # the task's curves follow the previous task's
            if untrained is not None and task_id > 0:
                # measured, not part of the experiment: the next draws are those of a run without it
                with preserved_rng_state():
                    _zero_shot_eval(trainer, algorithm, untrained, benchmark, results, task_id)
            trainer.fit(algorithm, datamodule=benchmark)
            task_end_step = logging_step(trainer)  # one past the task's last logged training step
            step = task_end_step + 1
            trainer.test(algorithm, datamodule=benchmark, verbose=False)
            results.record_row(task_id, algorithm.last_test_accuracy)
            for name, value in algorithm.on_task_end(task_id).items():
                results.record_extra(task_id, name, value)
            results.record_extra(task_id, "task_seconds", time.perf_counter() - started)
            if trainer.is_global_zero:
                write_results(results, output_dir)
            with preserved_rng_state():  # loggers and callbacks measure; they never change what follows
                _log_task_summary(trainer, results, task_id, task_end_step)
                _call(callbacks, "on_task_end", trainer, algorithm, task_id, results)
            # Last, so the saved RNG state is the one the next task starts from.
            if trainer.is_global_zero and cfg.save_checkpoints:
                checkpoint.save_checkpoint(
                    output_dir,
                    task_id,
                    algorithm,
                    results,
                    config_digest,
                    untrained,
                    callbacks,
                    fingerprint,
                    logging_step=task_end_step,
                )
            if trainer.is_global_zero:  # once, not once per process of a DDP run
                log.info("task %d/%d done: %s", task_id + 1, benchmark.num_tasks, _row_text(results, task_id))
        if (
            trainer is None
        ):  # resumed after the last task: nothing to train, the end-of-run callbacks still run
            trainer = run.first_trainer
        _call(callbacks, "on_sequence_end", trainer, algorithm, results)
        if trainer.is_global_zero and trainer.loggers:  # the plots and maps, where a logger shows images
            log_images(trainer.loggers, output_dir, step - 1)
            for logger in trainer.loggers:
                logger.save()


def _row_text(results: ContinualResults, task_id: int) -> str:
    return " ".join(f"{100 * v:.1f}" for v in results.acc_matrix[task_id, : task_id + 1].tolist())


def _copy_for_zero_shot(algorithm: CLAlgorithm) -> CLAlgorithm:
    """The randomly initialised model, kept to measure b_j for forward transfer (GEM Sec. 2)."""
    import copy

    return copy.deepcopy(algorithm)


def _zero_shot_eval(
    trainer, algorithm, untrained, benchmark, results: ContinualResults, task_id: int
) -> None:
    """R[j-1, j] (current model, before training task j) and b_j (untrained model) on task j."""
    benchmark.test_tasks = [task_id]
    for model, target in ((algorithm, results.acc_before_training), (untrained, results.acc_untrained)):
        if model is untrained:
            for t in range(untrained.heads.num_tasks_seen, task_id + 1):
                untrained.setup_task(t, benchmark.num_classes_of(t))
        trainer.test(model, datamodule=benchmark, verbose=False)
        target[task_id] = float(model.last_test_accuracy[task_id])
    benchmark.test_tasks = None
