"""End-to-end runs of the real configs with tiny overrides, and what they must show."""

import csv
import json
from pathlib import Path

import pytest
import torch

from clcore.clrun.construction import build
from clcore.clrun.task_loop import run_sequence
from tests.helpers import BackboneSnapshots

pytestmark = pytest.mark.slow


def read_matrix(output_dir):
    with open(output_dir / "results" / "acc_matrix.csv") as stream:
        return list(csv.reader(stream))


def test_default_run_writes_every_result_file(make_config, tmp_path):
    cfg = make_config("benchmark.num_tasks=3", "callbacks=default", "logger=csv", "plots=true", quiet=False)
    cfg.trainer.enable_progress_bar = False
    run_sequence(cfg)
    out = tmp_path / "run"
    rows = read_matrix(out)
    assert rows[0] == ["after_task", "task_1", "task_2", "task_3"]
    assert [len(r) for r in rows] == [4, 4, 4, 4] and rows[1][2:] == ["", ""] and rows[3][3] != ""
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["tasks_done"] == 3 and len(summary["average_accuracy_per_task"]) == 3
    assert summary["bwt"] is not None and len(summary["forgetting_per_task"]) == 2
    for name in ("config.yaml", "plots/acc_matrix.png", "plots/average_accuracy.png", "logs/metrics.csv"):
        assert (out / name).is_file(), name
    checkpoint = torch.load(out / "checkpoints" / "task_3.ckpt", weights_only=True)
    assert checkpoint["task_id"] == 2 and "backbone.layers.1.weight" in checkpoint["state_dict"]
    logged = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss/task_1" in logged and "test/acc/task_3" in logged and "test/average_accuracy" in logged


def test_finetuning_forgets_on_permuted_digits(make_config):
    results = run_sequence(make_config("benchmark.num_tasks=4", "trainer.max_epochs=4"))
    summary = results.summary()
    assert summary["bwt"] < -0.10, summary  # clearly negative: earlier tasks lose > 10 points
    assert min(results.acc_matrix.diagonal().tolist()) > 0.6  # each task was learnt when trained


def test_fix_freezes_backbone_bit_identically_and_heads_still_learn(make_config):
    # The snapshot callback is added purely from the command line, as a researcher would.
    cfg = make_config(
        "algorithm=fix",
        "benchmark.num_tasks=3",
        "trainer.max_epochs=3",
        "backbone.batch_norm=true",
        "+callbacks.snap._target_=tests.helpers.BackboneSnapshots",
    )
    BackboneSnapshots.taken.clear()
    results = run_sequence(cfg)
    after_task_1, *later_tasks = BackboneSnapshots.taken
    assert len(later_tasks) == 2
    for later in later_tasks:
        for name, tensor in after_task_1.items():  # parameters and batch-norm statistics
            assert torch.equal(tensor, later[name]), f"{name} changed after task 1"
    # heads of later tasks still train: accuracy far above chance (10 classes -> 10%)
    assert min(results.acc_matrix.diagonal().tolist()[1:]) > 0.5


@pytest.mark.parametrize(
    ("overrides", "paradigm"),
    [
        (["experiment=finetuning_pmnist", "benchmark.source=digits", "benchmark.num_tasks=2"], "til"),
        (["experiment=fix_pmnist", "benchmark.source=digits", "benchmark.num_tasks=2"], "til"),
        (["experiment=finetuning_split_mnist", "benchmark.source=digits", "benchmark.num_tasks=3"], "cil"),
        (["experiment=finetuning_rotated_mnist", "benchmark.source=digits", "benchmark.num_tasks=3"], "dil"),
    ],
)
def test_real_experiment_configs_run(make_config, overrides, paradigm):
    cfg = make_config(*overrides, "trainer.max_epochs=1")
    results = run_sequence(cfg)
    assert cfg.paradigm._target_.lower().endswith(paradigm) or paradigm in cfg.paradigm._target_.lower()
    assert results.tasks_done == cfg.benchmark.num_tasks
    assert not torch.isnan(results.trained.tril()).any()


def test_cil_run_predicts_over_all_seen_classes(make_config):
    cfg = make_config(
        "experiment=finetuning_split_mnist",
        "benchmark.source=digits",
        "benchmark.num_tasks=3",
        "trainer.max_epochs=3",
    )
    results = run_sequence(cfg)
    # Finetuning in CIL: the newest task's classes dominate; old tasks collapse (well-known result)
    assert results.acc_matrix[2, 2] > 0.8
    assert results.acc_matrix[2, 0] < 0.3


def test_same_seed_gives_the_same_matrix(make_config):
    first = run_sequence(make_config("benchmark.num_tasks=2", "seed=5", subdir="a"))
    second = run_sequence(make_config("benchmark.num_tasks=2", "seed=5", subdir="b"))
    third = run_sequence(make_config("benchmark.num_tasks=2", "seed=6", subdir="c"))
    torch.testing.assert_close(first.trained, second.trained, rtol=0, atol=0, equal_nan=True)
    assert not torch.allclose(first.trained.nan_to_num(), third.trained.nan_to_num())


def test_unsupported_paradigm_fails_before_training(make_config):
    from clcore.algorithms import CLAlgorithm

    class TILOnly(CLAlgorithm):
        supported_paradigms = ("til",)

    cfg = make_config("paradigm=cil")
    benchmark, algorithm = build(cfg)
    with pytest.raises(ValueError, match="does not support paradigm=cil"):
        TILOnly(algorithm.backbone, algorithm.heads, algorithm.optimizer_factory, num_tasks=2)


def test_plots_are_off_by_default_and_drawing_them_changes_no_result(make_config):
    """``plots=false`` (the default) writes every CSV but no PNG; ``plots=true`` draws them and the
    accuracy matrix stays bit-identical: measuring must not change the experiment."""
    tiny = ("benchmark.num_tasks=2", "trainer.limit_train_batches=3", "callbacks=default", "logger=csv")
    plain = make_config(*tiny, subdir="default")
    assert plain.plots is False
    drawn = make_config(*tiny, "plots=true", subdir="plots")
    results = {name: run_sequence(cfg) for name, cfg in (("default", plain), ("plots", drawn))}
    default_out, plots_out = Path(plain.paths.output_dir), Path(drawn.paths.output_dir)
    assert not (default_out / "plots").exists()
    assert (default_out / "results" / "learning_curves.csv").is_file()
    for name in ("acc_matrix.png", "average_accuracy.png", "learning_curves.png"):
        assert (plots_out / "plots" / name).read_bytes().startswith(b"\x89PNG"), name
    torch.testing.assert_close(
        results["plots"].acc_matrix, results["default"].acc_matrix, rtol=0, atol=0, equal_nan=True
    )


def test_hat_mask_plots_follow_the_plots_switch(make_config):
    overrides = ("experiment=hat_pmnist", "benchmark=permuted_digits", "benchmark.num_tasks=2")
    overrides += ("trainer.max_epochs=1", "trainer.limit_train_batches=2")
    for switch, expected in (("plots=false", False), ("plots=true", True)):
        cfg = make_config(*overrides, switch, subdir=switch.replace("=", "_"))
        assert "hat_masks" in cfg.callbacks, "hat_pmnist adds the mask plots"
        cfg.callbacks = {"hat_masks": cfg.callbacks.hat_masks}  # only them: nothing else draws
        run_sequence(cfg)
        assert (Path(cfg.paths.output_dir) / "plots" / "hat_masks" / "capacity.png").is_file() is expected


def test_eval_split_val_measures_the_matrix_on_validation_images_and_trains_the_same(make_config):
    tiny = ("benchmark.num_tasks=2", "trainer.limit_train_batches=3")
    test_cfg = make_config(*tiny, subdir="test")
    val_cfg = make_config(*tiny, "benchmark.eval_split=val", subdir="val")
    on_test, on_val = run_sequence(test_cfg), run_sequence(val_cfg)
    assert not torch.equal(on_val.acc_matrix[1], on_test.acc_matrix[1])
    # the same training: the final weights are bit-identical, only where they are measured differs
    weights = [
        torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "task_2.ckpt", weights_only=True)[
            "state_dict"
        ]
        for cfg in (test_cfg, val_cfg)
    ]
    tensors = [{n: v for n, v in w.items() if isinstance(v, torch.Tensor)} for w in weights]
    assert tensors[0].keys() == tensors[1].keys() and len(tensors[0]) > 2
    assert all(torch.equal(tensors[0][name], tensors[1][name]) for name in tensors[0])


def test_every_plot_names_its_run_and_its_final_numbers(make_config):
    from clcore.callbacks import CLCallback
    from clcore.callbacks.figures import run_caption

    class Caption(CLCallback):
        text = ""

        def on_sequence_end(self, trainer, algorithm, results):
            Caption.text = run_caption(trainer, algorithm, results)

    results = run_sequence(make_config("benchmark.num_tasks=2", "seed=7"), extra_callbacks=[Caption()])
    summary = results.summary()
    assert Caption.text == (
        f"Finetuning · PermutedBenchmark (digits, 2 tasks) · TIL · seed 7 · after task 2: "
        f"AA {100 * summary['average_accuracy']:.1f}%, BWT {100 * summary['bwt']:+.1f} points"
    )
