"""One logging step for the whole task sequence, so that every task's curves follow the last one's.

``clrun`` trains each task with a new Trainer, and a new Trainer counts the steps it logs at from 0:
every task's curves started over at step 0, lay on top of each other, and ``epoch`` plotted against
the step zig-zagged. The task loop instead starts each task's Trainer where the previous one
stopped (``continue_logging_step``), logs the task's test accuracies one step after its last
training step, and saves that step in its checkpoint, so a resumed run goes on from it and its
loggers can drop what the interrupted task had logged after it (``clcore.loggers.continuation``).

The counter is Lightning's own count of logged training steps, the training epoch loop's
``_batches_that_stepped``: the step every Lightning logger call uses during ``fit``, which Lightning
itself restores from its checkpoints to continue a resumed fit's curves. It is a private attribute;
``tests/clrun/test_logger_layout.py`` fails if a Lightning release renames it.
"""

from __future__ import annotations


def logging_step(trainer) -> int:
    """The step the Trainer's loggers write the current training batch's metrics at."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def continue_logging_step(trainer, step: int) -> None:
    """Make a new Trainer log its first training batch at ``step`` instead of 0."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = int(step)


def is_logged_step(trainer, batch_idx: int) -> bool:
    """Whether Lightning writes this training batch's metrics to the loggers (the test in its
    ``_LoggerConnector.should_update_logs``), or it is an epoch's first batch, where a curve starts."""
    every = trainer.log_every_n_steps
    return batch_idx == 0 or (every > 0 and (logging_step(trainer) + 1) % every == 0)
