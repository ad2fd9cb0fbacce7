"""The ``clta`` protocol end to end on tiny settings, composed from the real ``ta`` configs.

Fine-tuning (standard / linear), single-task accuracy, task addition with every merging method,
aTLAS and task negation on rotated scikit-learn digits with a tiny MLP; the CLIP path on a tiny
random open_clip ViT with data sets written to a temporary folder; and the errors a user sees
when the 8-task data are missing.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from clcore.benchmarks.errors import DataNotFoundError
from clcore.clta import RESULTS_JSON, RESULTS_TABLE, run_protocol
from clcore.clta.evaluation import EncoderEditor
from clcore.clta.protocol import Evaluator, task_negation
from clcore.clta.selection import select_addition_alpha, select_negation_alpha
from clcore.clta.task_data import TaskData, few_shot_indices, split_off
from clcore.clta.vision_datasets import Preprocess
from clcore.task_arithmetic import LinearizedModel, TaskVector, merge

MODES = ("standard", "linear", "posthoc")
METHODS = ("ta", "ties", "dare", "iso", "tsv")

# Tiny but real: two rotated-digit tasks, a 64-32-16 MLP pre-trained for 200 steps, short grids.
TINY_SMALL = [
    "experiment=small_digits",
    "cpu_threads=null",
    "dataset.rotated.angles=[90,180]",
    "model.hidden_dims=[32]",
    "model.output_dim=16",
    "model.pretrain.steps=200",
    "finetune.steps=40",
    "finetune.lr=3e-3",
    "finetune.warmup_steps=2",
    # the last grid point is far too large: the validation argmax lies inside the grid
    "addition.methods.ta.alpha_grid=[0.2,1.0,4.0]",
    "addition.methods.ties.alpha_grid=[0.5,1.0,4.0]",
    "addition.methods.dare.alpha_grid=[0.5,1.0,4.0]",
    "addition.methods.iso.alpha_grid=[1.0,4.0,16.0]",
    "addition.methods.tsv.alpha_grid=[0.5,1.0,4.0]",
    "negation.alpha_grid=[0.0,0.5,1.0]",
    "atlas.epochs=2",
    "atlas.shots_per_class=4",
]


def compose_ta(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed ``clta`` config, as Hydra builds it, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clcore.configs.ta", version_base="1.3"):
        return compose(
            config_name="task_arithmetic", overrides=[*overrides, f"paths.output_dir={output_dir}"]
        )


def _quiet(*_args) -> None:
    pass


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    torch.set_num_threads(1)
    output_dir = tmp_path_factory.mktemp("small_protocol")
    run_protocol(compose_ta(TINY_SMALL, output_dir), log=_quiet)
    return output_dir, json.loads((output_dir / RESULTS_JSON).read_text())


def _accuracies(results: dict):
    """Every accuracy the JSON reports, with where it came from."""
    yield from (
        ("zero_shot", t, v) for split in ("val", "test") for t, v in results["zero_shot"][split].items()
    )
    for mode, outcome in results["modes"].items():
        for split in ("val", "test"):
            yield from ((f"{mode}/single", t, v) for t, v in outcome["single_task"][split].items())
        for method, merged in outcome["addition"].items():
            yield from ((f"{mode}/{method}", t, v) for t, v in merged["test"].items())
            for alpha, scores in merged["val_curve"].items():
                yield f"{mode}/{method}/val@{alpha}", "mean", scores["absolute"]
        if "atlas" in outcome:
            yield from ((f"{mode}/atlas", t, v) for t, v in outcome["atlas"]["test"].items())
        for task, entry in outcome.get("negation", {}).get("per_task", {}).items():
            yield f"{mode}/negation", task, entry["target_test"]
            yield f"{mode}/negation/control", task, entry["control_test"]


# -- the small protocol, end to end ---------------------------------------------------------
def test_results_have_every_mode_and_method_with_accuracies_in_0_1(small_run):
    output_dir, results = small_run
    assert list(results["tasks"]) == ["rot90", "rot180"]
    assert set(results["modes"]) == set(MODES)
    # what ran, beside its results, as clrun writes it
    assert OmegaConf.load(output_dir / "config.yaml").modes == results["config"]["modes"]
    for mode, outcome in results["modes"].items():
        assert set(outcome["addition"]) == set(METHODS), mode
        assert {"atlas", "negation", "single_task"} <= set(outcome)
        assert outcome["trained_as"] == ("linear" if mode == "linear" else "standard")
    checked = 0
    for where, task, value in _accuracies(results):
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, (where, task, value)
        checked += 1
    # zero-shot val+test; per mode: single-task val+test, 5 methods' test, 11 grid points, aTLAS, negation target+control
    assert checked == 2 * 2 + 3 * (2 * 2 + 5 * 2 + 5 * 3 + 2 + 2 * 2)
    table = (output_dir / RESULTS_TABLE).read_text()
    for mode in MODES:
        for method in (*METHODS, "atlas"):
            assert f"| {mode} | {method} |" in table


def test_normalized_accuracy_is_merged_over_single_task_averaged(small_run):
    _, results = small_run
    for mode, outcome in results["modes"].items():
        single = outcome["single_task"]["test"]
        assert all(value > 0 for value in single.values())
        for method, merged in [*outcome["addition"].items(), ("atlas", outcome["atlas"])]:
            for task, accuracy in merged["test"].items():
                assert merged["normalized_test"][task] == pytest.approx(accuracy / single[task], abs=1e-12), (
                    mode,
                    method,
                )
            assert merged["normalized"] == pytest.approx(
                np.mean(list(merged["normalized_test"].values())), abs=1e-12
            )
            assert merged["absolute"] == pytest.approx(np.mean(list(merged["test"].values())), abs=1e-12)


def test_alpha_is_the_argmax_of_the_validation_curve(small_run):
    _, results = small_run
    interior = 0
    for mode, outcome in results["modes"].items():
        for method, merged in outcome["addition"].items():
            curve = {float(alpha): scores["normalized"] for alpha, scores in merged["val_curve"].items()}
            best = max(curve.values())
            first_best = next(alpha for alpha, score in curve.items() if score == best)
            assert merged["alpha"] == first_best, (mode, method, curve)
            assert merged["selected_by"] == "validation normalized accuracy"
            interior += merged["alpha"] not in (min(curve), max(curve))
    assert interior >= 5  # the choice is not simply an end of the grid


def test_finetuning_beats_zero_shot_and_negation_respects_the_control(small_run):
    _, results = small_run
    zero_shot = results["zero_shot"]
    for mode in ("standard", "linear"):
        assert results["modes"][mode]["single_task"]["average_test"] > zero_shot["average_test"] + 0.1, mode
    for mode, outcome in results["modes"].items():
        negation = outcome["negation"]
        assert negation["control_floor_val"] == pytest.approx(0.95 * zero_shot["control"]["val"])
        for task, entry in negation["per_task"].items():
            chosen = entry["val_curve"][f"{entry['alpha']:g}"]
            assert chosen["control"] >= negation["control_floor_val"], (mode, task)


def test_task_vectors_are_reused_by_a_rerun_of_the_same_config(tmp_path):
    quick = [*TINY_SMALL, "modes=[standard]", "atlas.enabled=false", "negation.enabled=false"]
    for method in METHODS[1:]:
        quick.append(f"~addition.methods.{method}")
    first = run_protocol(compose_ta(quick, tmp_path), log=_quiet)
    second = run_protocol(compose_ta(quick, tmp_path), log=_quiet)
    for name, task in second["tasks"].items():
        assert task["finetuning"]["standard"]["reused"] is True
        assert first["tasks"][name]["finetuning"]["standard"]["reused"] is False
    assert second["modes"]["standard"]["single_task"] == first["modes"]["standard"]["single_task"]
    changed = run_protocol(compose_ta([*quick, "finetune.steps=3"], tmp_path), log=_quiet)
    assert all(task["finetuning"]["standard"]["reused"] is False for task in changed["tasks"].values())


# -- pieces the protocol relies on -----------------------------------------------------------
def test_every_merging_method_scales_linearly_in_alpha():
    # The protocol merges once with alpha=1 and scales by each grid alpha: that is exact only if
    # merge(..., alpha=a) == a * merge(..., alpha=1) for every method.
    generator = torch.Generator().manual_seed(0)
    vectors = [
        TaskVector({"w": torch.randn(6, 5, generator=generator), "b": torch.randn(6, generator=generator)})
        for _ in range(3)
    ]
    for method in METHODS:
        unit = merge(vectors, method, alpha=1.0)
        scaled = merge(vectors, method, alpha=0.37)
        for name in unit.keys():
            torch.testing.assert_close(scaled[name], 0.37 * unit[name])


def test_encoder_editor_applies_each_mode_without_accumulating():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    tau = TaskVector({name: 0.3 * torch.randn_like(p) for name, p in encoder.named_parameters()})
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        standard = EncoderEditor(encoder, "standard")
        torch.testing.assert_close(standard.at(tau, 0.7)(x), tau.apply_to(encoder, 0.7)(x))
        torch.testing.assert_close(
            standard.at(tau, 0.7)(x), tau.apply_to(encoder, 0.7)(x)
        )  # same again: no accumulation
        torch.testing.assert_close(standard.at(None)(x), encoder(x))

        posthoc = EncoderEditor(encoder, "posthoc")
        params = dict(encoder.named_parameters())
        delta = {name: 0.7 * tau[name] for name in params}
        _, directional = torch.func.jvp(
            lambda p: torch.func.functional_call(encoder, p, (x,)), (params,), (delta,)
        )
        torch.testing.assert_close(posthoc.at(tau, 0.7)(x), encoder(x) + directional)
        assert isinstance(posthoc.working, LinearizedModel)
        assert not torch.allclose(posthoc.at(tau, 0.7)(x), standard.at(tau, 0.7)(x))
        torch.testing.assert_close(posthoc.at(None)(x), encoder(x))


def test_addition_selection_is_first_argmax():
    assert select_addition_alpha({0.1: 0.5, 0.2: 0.7, 0.3: 0.7, 0.4: 0.6}) == 0.2
    assert select_addition_alpha({1.0: 0.2, 0.5: 0.9}) == 0.5
    with pytest.raises(ValueError, match="finite"):
        select_addition_alpha({0.1: float("nan")})


def test_negation_selection_keeps_the_control_above_the_floor():
    target = {0.0: 0.9, 0.5: 0.4, 1.0: 0.1}
    assert select_negation_alpha(target, {0.0: 1.0, 0.5: 0.99, 1.0: 0.98}, control_floor=0.95) == 1.0
    assert select_negation_alpha(target, {0.0: 1.0, 0.5: 0.96, 1.0: 0.5}, control_floor=0.95) == 0.5
    assert select_negation_alpha(target, {0.0: 0.5, 0.5: 0.5, 1.0: 0.5}, control_floor=0.95) is None


def _linear_task(name: str, inputs: torch.Tensor, labels: torch.Tensor) -> TaskData:
    data = TensorDataset(inputs, labels)
    return TaskData(name, ["a", "b"], ["{}"], data, data, data, labels)


def test_negation_lowers_the_target_and_keeps_the_control_on_a_constructed_case():
    # logits = W x with W = [[1,0,1,0],[0,1,0,1]]: the target task lives in inputs 0-1, the control
    # in inputs 2-3, and theta_0 gets both right. tau_target adds +I on the target block only, so
    # theta_0 - alpha tau flips the target's logits for alpha > 1 while the control is untouched;
    # tau_both also flips the control, and then the control floor must stop the negation.
    encoder = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=generator)
    signal = torch.nn.functional.one_hot(labels, 2).float() + 0.1 * torch.rand(64, 2, generator=generator)
    zeros = torch.zeros(64, 2)
    target = _linear_task("target", torch.cat([signal, zeros], dim=1), labels)
    control = _linear_task("control", torch.cat([zeros, signal], dim=1), labels)
    tau_target = TaskVector({"weight": torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]])})
    tau_both = TaskVector({"weight": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])})
    evaluate = Evaluator({"target": nn.Identity(), "control": nn.Identity()}, torch.device("cpu"))
    zero_shot = {"test": {"target": 1.0}, "average_test": 1.0, "control": {"val": 1.0, "test": 1.0}}
    editor = EncoderEditor(encoder, "standard")
    grid = [0.0, 0.5, 1.5, 2.5]

    negated = task_negation(
        editor, {"target": tau_target}, [target], control, evaluate, zero_shot, grid, 0.95
    )
    entry = negated["per_task"]["target"]
    assert entry["alpha"] == 1.5  # the first alpha that flips the target
    assert entry["target_test"] == 0.0 and entry["control_test"] == 1.0
    assert negated["average_target_test"] < zero_shot["average_test"]

    blocked = task_negation(editor, {"target": tau_both}, [target], control, evaluate, zero_shot, grid, 0.95)
    entry = blocked["per_task"]["target"]
    assert entry["val_curve"]["1.5"]["target"] == 0.0 and entry["val_curve"]["1.5"]["control"] == 0.0
    assert entry["alpha"] in (0.0, 0.5) and entry["control_test"] == 1.0 and entry["target_test"] == 1.0


def test_splits_are_disjoint_seeded_and_few_shot_is_class_balanced():
    kept, held_out = split_off(100, 0.1, None, seed=3)
    assert len(held_out) == 10 and len(kept) == 90
    assert sorted(torch.cat([kept, held_out]).tolist()) == list(range(100))
    assert torch.equal(split_off(100, 0.1, None, seed=3)[1], held_out)
    assert len(split_off(100, 0.5, 7, seed=0)[1]) == 7
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 8)
    chosen = few_shot_indices(labels, 4, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [4, 3, 4]


# -- data sets on disk -----------------------------------------------------------------------
EIGHT_TASK_FILES = [
    "stanford_cars/devkit/cars_meta.mat",
    "stanford_cars/cars_test_annos_withlabels.mat",
    "dtd/dtd/images",
    "eurosat/2750",
    "gtsrb/GTSRB/Training",
    "gtsrb/GT-final_test.csv",
    "MNIST/raw/train-images-idx3-ubyte",
    "resisc45",
    "SUN397/ClassName.txt",
    "svhn/train_32x32.mat",
    "imagenet/val",
]


def test_eight_task_configs_name_every_missing_folder_before_training(tmp_path):
    data_root = tmp_path / "data"
    cfg = compose_ta(["experiment=vit_b32_8tasks", f"data_root={data_root}"], tmp_path / "run")
    assert [entry.name for entry in cfg.dataset.values()] == [
        "Cars",
        "DTD",
        "EuroSAT",
        "GTSRB",
        "MNIST",
        "RESISC45",
        "SUN397",
        "SVHN",
    ]
    with pytest.raises(DataNotFoundError) as error:
        run_protocol(cfg, log=_quiet)
    message = str(error.value)
    for relative in EIGHT_TASK_FILES:
        assert str((data_root / relative).resolve()) in message, relative
    assert "nothing was trained" in message and "'ViT-B-32'" in message and "'openai'" in message
    assert not (tmp_path / "run" / "results").exists()

    _write_tiny_mnist(data_root, num_train=10, num_test=5)
    with pytest.raises(DataNotFoundError) as error:
        run_protocol(cfg, log=_quiet)
    assert "MNIST" not in str(error.value) and str((data_root / "eurosat/2750").resolve()) in str(error.value)


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(
        struct.pack(">HBB", 0, 8, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def _write_tiny_mnist(root: Path, num_train: int, num_test: int) -> None:
    """MNIST/raw/ in torchvision's layout: class-dependent bright blocks, so the digit is visible."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 * label : 2 * label + 8, 4:24] = 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


EUROSAT_FOLDERS = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def _write_tiny_eurosat(root: Path, folders: list[str], per_class: int) -> None:
    from PIL import Image

    for label, folder in enumerate(folders):
        (root / "eurosat" / "2750" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.full((16, 16, 3), 20 * label, dtype=np.uint8)
            Image.fromarray(pixels).save(root / "eurosat" / "2750" / folder / f"{folder}_{index}.png")


def test_vision_dataset_checks_its_class_names_against_the_folders(tmp_path):
    _write_tiny_eurosat(tmp_path, EUROSAT_FOLDERS[:9], per_class=2)
    cfg = compose_ta(["experiment=vit_b32_8tasks", f"data_root={tmp_path}"], tmp_path / "run")
    source = instantiate(cfg.dataset.eurosat)
    assert source.missing() == []
    with pytest.raises(ValueError, match="10 class names configured but the data set has 9 classes"):
        source.build(Preprocess(train=np.asarray, eval=np.asarray))


TINY_CLIP_NAME = "clcore-ta-protocol-tiny-vit"
TINY_CLIP_CFG = (
    "{embed_dim:32,vision_cfg:{image_size:32,layers:1,width:32,head_width:16,patch_size:8},"
    "text_cfg:{context_length:16,vocab_size:49408,width:32,heads:2,layers:1}}"
)


def test_tiny_random_clip_runs_the_protocol_through_the_clip_model_config(tmp_path):
    pytest.importorskip("open_clip")
    data_root = tmp_path / "data"
    _write_tiny_mnist(data_root, num_train=60, num_test=20)
    _write_tiny_eurosat(data_root, EUROSAT_FOLDERS, per_class=6)
    overrides = [
        "experiment=vit_b32_8tasks",
        "dataset=[mnist,eurosat]",
        "~dataset@control",
        f"data_root={data_root}",
        "cpu_threads=null",
        f"model.model_name={TINY_CLIP_NAME}",
        "model.pretrained=null",
        f"model.model_cfg={TINY_CLIP_CFG}",
        "finetune.steps=2",
        "finetune.batch_size=8",
        "finetune.lr=1e-3",
        "finetune.warmup_steps=1",
        "loader.num_workers=0",
        "eval.batch_size=64",
        "atlas.epochs=1",
        "atlas.shots_per_class=2",
        "dataset.eurosat.val_fraction=0.3",
        "dataset.mnist.val_fraction=0.3",
    ]
    for method in ("ties", "dare", "iso"):
        overrides.append(f"~addition.methods.{method}")
    overrides += ["addition.methods.ta.alpha_grid=[0.5,1.0]", "addition.methods.tsv.alpha_grid=[1.0]"]
    torch.manual_seed(0)
    results = run_protocol(compose_ta(overrides, tmp_path / "run"), log=_quiet)

    assert results["model"]["kind"] == "clip_zero_shot" and results["model"]["model_name"] == TINY_CLIP_NAME
    assert list(results["tasks"]) == ["MNIST", "EuroSAT"]
    assert results["tasks"]["EuroSAT"]["sizes"] == {"train": 38, "val": 16, "test": 6}
    assert results["control"] is None
    for mode in MODES:
        outcome = results["modes"][mode]
        assert set(outcome["addition"]) == {"ta", "tsv"} and "atlas" in outcome and "negation" not in outcome
    for where, task, value in _accuracies(results):
        assert isinstance(value, float) and 0.0 <= value <= 1.0, (where, task, value)
    for mode in ("standard", "linear"):
        for task in results["tasks"].values():
            record = task["finetuning"][mode]
            assert record["steps"] == 2 and math.isfinite(record["final_loss"])
    saved = TaskVector.load(tmp_path / "run" / "task_vectors" / "linear" / "MNIST.pt")
    assert saved.kind == "linear" and all(name.startswith("visual.") for name in saved.keys())
    assert saved.norm() > 0
    assert (tmp_path / "run" / RESULTS_TABLE).is_file()


def test_clta_help_lists_the_config_groups():
    clta = Path(sys.executable).parent / "clta"
    if not clta.is_file():
        pytest.skip("the clta console script is not installed in this environment")
    shown = subprocess.run(
        [str(clta), "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "clta" in shown
    assert "model: clip_vit_b16, clip_vit_b32, clip_vit_l14, small_mlp" in shown
    assert "experiment: small_digits, small_mnist, vit_b32_8tasks" in shown
    for dataset in ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn"):
        assert dataset in shown.split("dataset:")[1].split("\n")[0]
