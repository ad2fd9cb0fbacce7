"""Random: the untrained network, the chance-level reference row of a results table."""

from __future__ import annotations

from clcore.algorithms.base import CLAlgorithm


def train_nothing(trainer) -> None:
    """Make this ``Trainer.fit`` return without a training or validation batch.

    ``limit_train_batches = 0`` is the Trainer's own switch for it (its fit loop then skips, and
    the train loader is never requested); called from a module's ``setup("fit")``, before the fit
    loop reads it. Each task has a fresh Trainer, so it holds for one task only.
    """
    trainer.limit_train_batches = 0


class Random(CLAlgorithm):
    """The network as initialised, never trained: ``fit`` does nothing, heads keep their random init.

    Row ``i`` of its accuracy matrix is the untrained network on tasks ``1..i``: chance level for
    the paradigm (TIL: 1 / classes of the task; CIL: about 1 / classes seen; DIL: 1 / classes),
    the floor a results table compares against. Its diagonal is the quantity that the task loop
    measures as ``b_j`` for forward transfer (``eval.zero_shot``, GEM, Lopez-Paz & Ranzato 2017,
    Sec. 2), here as an algorithm row of its own; the two are not bit-identical, because the
    zero-shot copy draws its heads' initial weights at a different point of the random stream.
    In TIL and DIL every column of the matrix is constant (nothing changes), so BWT is 0; in CIL
    each new task's randomly initialised block of the grown head also competes for the earlier
    tasks' samples, so an earlier task's accuracy can change from row to row (as for any CIL model).
    """

    def setup(self, stage: str) -> None:
        if stage == "fit":
            train_nothing(self.trainer)
