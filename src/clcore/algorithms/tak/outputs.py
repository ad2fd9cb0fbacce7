"""``TAKOutputs``: the files a TAK run leaves in its output folder, written by a callback.

``TAK`` computes and keeps in memory what Porrello et al. (ICLR 2026) report beside the accuracy
matrix: each task's vector tau_t (``task_vectors``, also in ``cl_state_dict``) and, after the last
task, the alpha sweep of the merge (``alpha_sweep_points``). This callback writes them, as
``HATMaskPlots`` draws HAT's masks, so an algorithm built without it writes no file.
"""

from __future__ import annotations

from pathlib import Path

from clcore.algorithms.tak.algorithm import TAK
from clcore.algorithms.tak.alpha_sweep import write_alpha_sweep
from clcore.algorithms.tak.task_vector_files import task_vector_content, task_vector_file
from clcore.callbacks.base import CLCallback
from clcore.utils.atomic import torch_save_atomic


class TAKOutputs(CLCallback):
    """In ``<default_root_dir>`` (the run folder):

    - ``results/alpha_sweep.csv`` and ``plots/alpha_sweep.png``: the merged model's accuracy per
      alpha of the final sweep (``clcore.algorithms.tak.alpha_sweep``), at the end of the sequence;
    - with ``save_task_vectors``, ``task_vectors/task_<t>.pt`` after each task: tau_t and the heads,
      readable by ``TaskVector.load`` and by a later run's ``algorithm.load_task_vectors``
      (``clcore.algorithms.tak.task_vector_files``).

    Only the global-zero process writes. Does nothing for algorithms other than ``TAK``.
    """

    def __init__(self, save_task_vectors: bool = False) -> None:
        self.save_task_vectors = save_task_vectors

    def on_task_end(self, trainer, algorithm, task_id: int, results=None) -> None:
        if self.save_task_vectors and self._writes(trainer, algorithm):
            content = task_vector_content(
                algorithm.task_vectors[task_id], algorithm.tangent, task_id, algorithm.heads.state_dict()
            )
            torch_save_atomic(task_vector_file(_run_folder(trainer) / "task_vectors", task_id), content)

    def on_sequence_end(self, trainer, algorithm, results=None) -> None:
        # Empty when the sweep did not run in this process (e.g. a run resumed after its last task,
        # whose first process wrote the files already).
        if self._writes(trainer, algorithm) and algorithm.alpha_sweep_points:
            points = algorithm.alpha_sweep_points
            root = _run_folder(trainer)
            write_alpha_sweep(
                points,
                root / "results" / "alpha_sweep.csv",
                root / "plots" / "alpha_sweep.png",
                f"TAK, {algorithm.merging} merge of {len(points[0].task_accuracy)} tasks",
            )

    @staticmethod
    def _writes(trainer, algorithm) -> bool:
        return isinstance(algorithm, TAK) and (trainer is None or trainer.is_global_zero)


def _run_folder(trainer) -> Path:
    return Path(trainer.default_root_dir if trainer is not None else ".")
