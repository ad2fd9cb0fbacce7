"""Callbacks used by the tests, composed in from the command line like a researcher's own."""

from clcore.callbacks import CLCallback


class BackboneSnapshots(CLCallback):
    """Keeps a copy of the backbone's state (parameters and buffers) after every task."""

    taken: list[dict] = []

    def on_task_end(self, trainer, algorithm, task_id, results):
        BackboneSnapshots.taken.append({k: v.detach().clone() for k, v in algorithm.backbone.state_dict().items()})
