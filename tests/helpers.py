"""Callbacks used by the tests, composed in from the command line like a researcher's own."""

from clcore.callbacks import CLCallback


class BackboneSnapshots(CLCallback):
    """Keeps a copy of the backbone's state (parameters and buffers) after every task."""

    taken: list[dict] = []

    def on_task_end(self, trainer, algorithm, task_id, results):
        BackboneSnapshots.taken.append(
            {k: v.detach().clone() for k, v in algorithm.backbone.state_dict().items()}
        )


# ---- reliability tests: crashes, stalls, divergence, algorithm/backbone pairings -------------------
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from clcore.algorithms.finetuning import Finetuning  # noqa: E402
from clcore.backbones.mlp import MLP  # noqa: E402


class StallInTask(CLCallback):
    """Hangs in the middle of task ``task`` (1-based) so a test can kill the process there.

    At training batch ``batch`` of that task it writes ``marker`` (the test's signal that the
    process is inside the task; it holds the process id) and sleeps ``seconds``. When ``marker`` already exists, i.e. the
    same command runs again to resume, it does nothing: the resumed run is not slowed down.
    """

    def __init__(self, task: int, marker: str, batch: int = 5, seconds: float = 120.0) -> None:
        self.task, self.marker, self.batch, self.seconds = task, Path(marker), batch, seconds
        self.armed = not self.marker.exists()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.armed and pl_module.task_id + 1 == self.task and batch_idx == self.batch:
            self.marker.write_text(f"{os.getpid()}\n")  # the process to signal (a launcher's child)
            time.sleep(self.seconds)


class FailInTask(CLCallback):
    """Raises at a training batch of task ``task`` (1-based), as a crash in the middle of a task would."""

    def __init__(self, task: int, batch: int = 3) -> None:
        self.task, self.batch = task, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.task_id + 1 == self.task and batch_idx == self.batch:
            raise RuntimeError(f"simulated crash in task {self.task}")


class PoisonWeights(CLCallback):
    """Sets the backbone's weights to NaN at the start of training batch ``batch`` of task ``task``.

    ``batches_seen[task]`` counts the training batches that ran in each task, so a test can tell
    that the poisoned task stopped early rather than trained to its end.
    """

    batches_seen: dict[int, int] = {}

    def __init__(self, task: int, batch: int = 2) -> None:
        self.task, self.batch = task, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        task = pl_module.task_id + 1
        PoisonWeights.batches_seen[task] = PoisonWeights.batches_seen.get(task, 0) + 1
        if task == self.task and batch_idx == self.batch:
            with torch.no_grad():
                for parameter in pl_module.backbone.parameters():
                    parameter.fill_(float("nan"))


class SpecialMLP(MLP):
    """A backbone type that an algorithm can require."""


class NeedsSpecialBackbone(Finetuning):
    required_backbone_type = SpecialMLP


class TILOnly(Finetuning):
    supported_paradigms = ("til",)


class RemembersTasks(Finetuning):
    """Finetuning that keeps a plain list of its finished tasks: state only ``cl_state_dict`` saves.

    ``on_task_end`` reports how many tasks it remembers, so a resumed run that lost the list
    would record a different number than an uninterrupted one.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.finished_tasks: list[int] = []

    def on_task_end(self, task_id: int) -> dict[str, float]:
        self.finished_tasks.append(task_id)
        return {"tasks_remembered": len(self.finished_tasks)}

    def cl_state_dict(self) -> dict:
        return {"finished_tasks": list(self.finished_tasks)}

    def load_cl_state_dict(self, state: dict) -> None:
        self.finished_tasks = list(state["finished_tasks"])


# ---- researcher experience: the callback of the docs' "write a callback" page ------------------------
# --8<-- [start:forgetting_log]
import json  # noqa: E402
import pathlib  # noqa: E402

from clcore.callbacks import CLCallback  # noqa: E402


class ForgettingLog(CLCallback):
    """After every task, appends to ``<output>/<filename>`` one JSON line: how many points each
    earlier task has lost since it was trained, R[j, j] - R[i, j], read from the run's results.

    Add it without touching clcore:  clrun +callbacks.forgetting._target_=tests.helpers.ForgettingLog
    """

    def __init__(self, filename: str = "forgetting_log.jsonl") -> None:
        self.filename = filename

    def on_task_end(self, trainer, algorithm, task_id, results):
        if not trainer.is_global_zero:  # under data parallelism every process runs callbacks
            return
        R = results.acc_matrix  # fractions; NaN where not measured
        lost = {f"task_{j + 1}": 100 * float(R[j, j] - R[task_id, j]) for j in range(task_id)}
        line = {"after_task": task_id + 1, "points_lost": lost}
        with open(pathlib.Path(trainer.default_root_dir) / self.filename, "a") as stream:
            stream.write(json.dumps(line) + "\n")


# --8<-- [end:forgetting_log]


class Batches:
    """An iterable of ready batches with a length (Lightning accepts any such iterable)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def quiet_trainer(**overrides):
    """A Lightning Trainer for unit tests: one CPU epoch, no logger, checkpoints, bars or summaries."""
    import lightning as L

    settings = dict(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**(settings | overrides))


# ---- a data source of our own: what adding a data set takes (one registry entry) --------------------
class TinyLoader:
    """Loads a small synthetic data set of ``num_classes`` classes, 4x4 grey images; counts its calls.

    Each class is a constant image of its own brightness, so the classes are learnable.
    """

    def __init__(self, name: str, num_classes: int, per_class: int = 12) -> None:
        self.name, self.num_classes, self.per_class = name, num_classes, per_class
        self.calls = 0

    def __call__(self, root, download):
        from clcore.benchmarks.sources import ImageData

        self.calls += 1
        labels = torch.arange(self.num_classes).repeat_interleave(self.per_class)
        images = (labels * (255 // self.num_classes)).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
        images = images.contiguous()
        return ImageData(
            self.name, images, labels, images.clone(), labels.clone(), self.num_classes, (0.5,), (0.3,)
        )


class RunsCode:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint or cache would do.
    ``marker`` absolute, so that a payload run in a subprocess shows in the test's folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crash_and_resume(make_config, *overrides: str, task: int = 3):
    """Runs ``overrides`` once uninterrupted and once crashed in task ``task`` (``FailInTask``) then
    resumed with the same config; returns ``(reference, resumed)`` after checking their accuracy
    matrices are identical to the bit (NaN where a task was not tested yet)."""
    from clcore.clrun.task_loop import run_sequence

    reference = run_sequence(make_config(*overrides, subdir="reference"))
    cfg = make_config(*overrides, subdir="crashed")
    try:
        run_sequence(cfg, extra_callbacks=[FailInTask(task=task)])
    except RuntimeError as crash:
        assert f"simulated crash in task {task}" in str(crash)
    else:
        raise AssertionError(f"the run did not reach task {task}")
    resumed = run_sequence(cfg)
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    return reference, resumed
