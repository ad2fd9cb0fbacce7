"""TAK's files come from the ``TAKOutputs`` callback, not from the algorithm; ``load_task_vectors``
starts a run from an earlier run's saved vectors (the reference's ``--resume`` / ``--load_path``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from clcore.algorithms.tak import TAKOutputs
from clcore.algorithms.tak.alpha_sweep import sweep_csv
from clcore.clrun.task_loop import run_sequence
from clcore.task_arithmetic.task_vectors import TaskVector
from tests.library.tak.test_tak import MLP_TAK, KeepAlgorithm

TAK_FILES = {
    "results/alpha_sweep.csv",
    "plots/alpha_sweep.png",
    "task_vectors/task_1.pt",
    "task_vectors/task_2.pt",
}


def run(make_config, tmp_path, subdir: str, *overrides: str, callbacks=()):
    keep = KeepAlgorithm()
    cfg = make_config(
        *MLP_TAK,
        "benchmark=split_digits",
        f"algorithm.fisher_cache={tmp_path / 'fisher'}",
        *overrides,
        subdir=subdir,
    )
    results = run_sequence(cfg, extra_callbacks=[*callbacks, keep])
    return results, keep.algorithm, tmp_path / subdir


def files_in(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_the_callback_writes_the_sweep_and_the_task_vectors_and_without_it_no_file_is_written(
    make_config, tmp_path
):
    plain, plain_algorithm, plain_folder = run(make_config, tmp_path, "plain")
    written, algorithm, folder = run(
        make_config, tmp_path, "written", callbacks=[TAKOutputs(save_task_vectors=True)]
    )
    # Writing changes nothing that was computed; without the callback only the pipeline's files exist.
    torch.testing.assert_close(plain.acc_matrix, written.acc_matrix, equal_nan=True)
    assert files_in(folder) - files_in(plain_folder) == TAK_FILES
    assert not files_in(plain_folder) & TAK_FILES
    assert [p.alpha for p in plain_algorithm.alpha_sweep_points] == [0.5, 1.0]  # computed, kept in memory

    # The sweep CSV: the points the algorithm kept; alpha 1 is the merge the accuracy matrix measured.
    assert (folder / "results" / "alpha_sweep.csv").read_text() == sweep_csv(algorithm.alpha_sweep_points)
    with open(folder / "results" / "alpha_sweep.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["alpha"] for row in rows] == ["0.5", "1"]
    assert float(rows[1]["average_accuracy"]) == pytest.approx(
        written.summary()["average_accuracy"], abs=1e-6
    )
    assert (folder / "plots" / "alpha_sweep.png").read_bytes().startswith(b"\x89PNG")

    # The task vectors: tau_t as TaskVector.load reads it (tangent: linear), with the heads after task t.
    for task in (0, 1):
        path = folder / "task_vectors" / f"task_{task + 1}.pt"
        vector = TaskVector.load(path)
        assert vector.kind == "linear" and vector.keys() == algorithm.task_vectors[task].keys()
        for name, tensor in algorithm.task_vectors[task].items():
            torch.testing.assert_close(vector[name], tensor)
        saved = torch.load(path, weights_only=True)
        assert saved["task"] == task + 1 and f"heads.{task}.weight" in saved["heads"]
    last_heads = torch.load(folder / "task_vectors" / "task_2.pt", weights_only=True)["heads"]
    for name, tensor in algorithm.heads.state_dict().items():
        torch.testing.assert_close(last_heads[name], tensor)


@pytest.mark.slow
def test_load_task_vectors_reloads_saved_vectors_and_trains_the_tasks_without_a_file(make_config, tmp_path):
    first, _, folder = run(make_config, tmp_path, "first", callbacks=[TAKOutputs(save_task_vectors=True)])
    load = ["algorithm.load_task_vectors=true", f"algorithm.load_path={folder / 'task_vectors'}"]

    reloaded, algorithm, _ = run(make_config, tmp_path, "reloaded", *load)
    torch.testing.assert_close(reloaded.acc_matrix, first.acc_matrix, equal_nan=True)
    assert reloaded.summary()["task_vector_loaded"] == [1.0, 1.0]
    assert reloaded.summary()["single_task_accuracy"] == pytest.approx(
        first.summary()["single_task_accuracy"]
    )
    assert all(torch.count_nonzero(p) == 0 for p in algorithm.weight_delta.full.values())  # never stepped

    (folder / "task_vectors" / "task_2.pt").unlink()
    partly, algorithm, _ = run(make_config, tmp_path, "partly", *load)
    assert partly.summary()["task_vector_loaded"] == [1.0, 0.0]  # task 2 had no file: it trained
    torch.testing.assert_close(partly.acc_matrix[0], first.acc_matrix[0], equal_nan=True)
    assert any(torch.count_nonzero(p) > 0 for p in algorithm.weight_delta.full.values())
