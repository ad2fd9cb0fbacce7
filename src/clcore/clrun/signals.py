"""A scheduler's stop signal ends a run as a failure that can be resumed, never as a success.

SLURM's time limit and ``scancel`` send SIGTERM, and so does ``kill``. Left to itself, Lightning
notes the signal, raises its ``SIGTERMException`` at the next batch, a ``SystemExit`` without a
code, which Hydra's job wrapper does not catch: the process exited 0, a cut-off run looked finished,
and in a sweep the remaining jobs were silently skipped.

While a run is in progress, ``stop_on_signals`` turns SIGTERM (and SIGHUP, a closed terminal) into
``Signalled``, raised in the main thread wherever it is; the checkpoint of every finished task is
complete on disk (files are replaced atomically), so the same command continues after the last
one. The CLI turns it into ``StoppedBySignal``: one line saying what happened and how to continue,
``results/FAILED`` holding that line, and a non-zero exit. In a sweep run in this process, a signal
stops the sweep: the jobs not yet started are refused at once (``raise_if_stop_requested``) rather
than run, and the sweep exits non-zero.

SIGUSR2, submitit's timeout signal, is left to submitit: it requeues the job (with
``hydra.launcher.max_num_timeout`` > 0), and the requeued job resumes in the same folder.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import CompactHydraException

# Signals that mean "stop now" from a scheduler or the system; SIGINT (Ctrl-C) stays Python's
# KeyboardInterrupt, which Lightning and the CLI already report as an interruption.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# The signal that stopped a run of this process, for the jobs of a sweep that would follow it.
_stop_requested: signal.Signals | None = None


class Signalled(BaseException):
    """Raised by the handler in the main thread. A ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way (a callback, a data loader, Lightning's hooks) takes
    it for an ordinary error and carries on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)


class StoppedBySignal(CompactHydraException):
    """The run was stopped by a signal; its finished tasks are saved. Hydra prints the message
    alone and exits 1; ``clcore.clrun.sweeps.JobOutcome`` writes it to ``results/FAILED``."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, a stop signal raises ``Signalled`` in the main thread (elsewhere: no-op,
    Python delivers signals to the main thread only). The previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        global _stop_requested
        _stop_requested = signal.Signals(signum)
        raise Signalled(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def stopped_message(signalled: Signalled, output_dir: Path, tasks_done: int, num_tasks: int | None) -> str:
    """What happened, what is saved, and the command that continues."""
    name = signalled.signum.name
    of = f" of {num_tasks}" if num_tasks else ""
    if tasks_done:
        where = f"after task {tasks_done}{of}: tasks 1-{tasks_done} are saved in {output_dir / 'checkpoints'}"
    else:
        where = "before any task finished: nothing was saved"
    return (
        f"stopped by {name} {where}. The run did not finish. Re-run the same command with "
        f"hydra.run.dir={output_dir} (in a sweep: the same hydra.sweep.dir) to continue"
        + (f" with task {tasks_done + 1}" if tasks_done else "")
        + "."
    )


def raise_if_stop_requested() -> None:
    """A job of a sweep that a signal stopped earlier in this process is not started."""
    if _stop_requested is not None:
        raise StoppedBySignal(
            f"not started: {_stop_requested.name} stopped this sweep in an earlier job. Re-run the same "
            f"command with the same hydra.sweep.dir to run it (finished jobs are resumed as finished)."
        )
