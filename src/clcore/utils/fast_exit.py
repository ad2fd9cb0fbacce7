"""Ending a finished command without Python's interpreter teardown.

A process that imported torch and Lightning spends 1.3-1.7 s after its last line in the
interpreter's teardown (freeing every module's objects), on the 2-core machine: about a tenth of a
short ``clrun`` run, paid again by every job of a sweep launched as its own process. Nothing
of the run happens there: results, checkpoints and logs are written and closed before.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_without_teardown() -> None:
    """After a command has *succeeded*: run the exit handlers, flush the standard streams, ``os._exit(0)``.

    The thread shutdown and the exit handlers are what a normal exit would run first (``logging.shutdown`` flushing Hydra's
    ``cli.log``, ``wandb.finish``, coverage); only the teardown after them is skipped. Call it on
    success only: a failure keeps Python's normal way out and its exit status.
    ``CLCORE_FULL_EXIT=1`` keeps the normal exit (profilers or tools that inspect the teardown).
    """
    if os.environ.get("CLCORE_FULL_EXIT", "") not in ("", "0"):
        return
    # What a normal exit does first (Py_FinalizeEx's wait_for_thread_shutdown): the executors'
    # shutdown hooks (concurrent.futures, joblib's loky workers of hydra/launcher=parallel) and the
    # join of non-daemon threads. Without it, multiprocessing's exit handler below waits for loky's
    # idle workers to time out: five minutes.
    threading._shutdown()
    atexit._run_exitfuncs()  # the handlers a normal exit runs, in the same (reverse) order
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(0)
