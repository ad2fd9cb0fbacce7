"""An algorithm written outside clcore: the example of docs/extending/algorithms.md (run by the tests)."""

import torch

from clcore.algorithms import CLAlgorithm
from clcore.metrics.names import task_metric


class L2Anchor(CLAlgorithm):
    """Finetuning plus ``strength * ||theta - theta_{t-1}||^2`` on the backbone."""

    def __init__(self, *args, strength: float = 1.0, **kwargs):
        super().__init__(*args, options={"strength": strength}, **kwargs)
        self.strength = strength
        self.anchor: list[torch.Tensor] | None = None

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None):
        # the rule lives here once: the constructor and clrun's pre-flight check both read it
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        if options.get("strength", 1.0) < 0:
            problems.append(f"algorithm.strength={options['strength']}: must be >= 0")
        return problems

    def setup_task(self, task_id, num_classes):
        super().setup_task(task_id, num_classes)
        if task_id > 0:
            self.anchor = [p.detach().clone() for p in self.backbone.parameters()]

    def training_step(self, batch, batch_idx):
        x, labels, task_id = batch
        loss = self.loss(self(x, task_id), self.heads.targets(labels, task_id))
        if self.anchor is not None:
            drift = sum(((p - a) ** 2).sum() for p, a in zip(self.backbone.parameters(), self.anchor))
            loss = loss + self.strength * drift
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False)
        return loss

    # the anchor lives outside state_dict(): a resumed run gets it back from the checkpoint
    def cl_state_dict(self):
        return {"anchor": self.anchor}

    def load_cl_state_dict(self, state):
        self.anchor = state["anchor"]
