"""Fix: freeze the backbone after the first task (the frozen-feature baseline)."""

from __future__ import annotations

from clcore.algorithms.base import CLAlgorithm


class Fix(CLAlgorithm):
    """Train normally on task 1; from task 2 on the backbone is frozen and only the heads train.

    This is the "feature extraction" baseline of HAT (Serra et al. 2018, Sec. 4, from Razavian
    et al. 2014). New TIL heads keep training: a Fix that froze them would leave later tasks at
    chance, which is a bug, not the baseline. Batch-norm statistics are frozen too (the backbone
    runs in eval mode), so every backbone tensor stays bit-identical after task 1.
    """

    def setup_task(self, task_id: int, num_classes: int) -> None:
        super().setup_task(task_id, num_classes)
        frozen = task_id > 0
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(not frozen)

    @property
    def backbone_frozen(self) -> bool:
        return self.task_id > 0

    def on_train_epoch_start(self) -> None:
        # Lightning puts the whole module in train mode before each epoch; keep the frozen
        # backbone in eval mode so batch norm neither updates its statistics nor uses batch ones.
        if self.backbone_frozen:
            self.backbone.eval()

    def on_fit_end(self) -> None:
        # Lightning keeps module modes across fit/test; hand the next task a module in train mode.
        self.backbone.train()
