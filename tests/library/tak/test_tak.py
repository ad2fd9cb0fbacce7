"""TAK (Porrello et al., ICLR 2026): the penalty inside the algorithm, the factor cache, and whole
sequences through ``run_sequence`` with the real configs (a tiny random open_clip ViT on digits
resized for it, and the MLP with every paradigm).

The KFAC-vs-exact-Gauss-Newton and Monte Carlo convergence checks live in tests/library/tak/test_kfac.py.
"""

from __future__ import annotations

import copy
import csv
import functools
import json

import pytest
import torch
import torch.nn.functional as F

from clcore.algorithms.tak import TAK
from clcore.algorithms.tak.factors import combined_curvature
from clcore.algorithms.tak.kfac_penalty import accumulate_factors
from clcore.algorithms.tak.merging import merge_task_vectors, sweep_values
from clcore.algorithms.tak.task_vector_files import mammoth_parameter_name
from clcore.backbones.mlp import MLP
from clcore.benchmarks import SplitBenchmark
from clcore.callbacks.base import CLCallback
from clcore.clrun.checks import ConfigError, preflight
from clcore.clrun.task_loop import run_sequence
from clcore.heads import HeadsTIL
from clcore.task_arithmetic.merging import iso
from clcore.task_arithmetic.task_vectors import TaskVector
from clcore.utils.lr_schedules import lr_multiplier

# ---- helpers -------------------------------------------------------------------------------------


def digits(num_tasks: int) -> SplitBenchmark:
    benchmark = SplitBenchmark(
        "digits", num_tasks=num_tasks, classes_per_task=2, batch_size=32, val_fraction=0.0, seed=0
    )
    benchmark.load()
    return benchmark


def mlp_tak(num_tasks: int, cache, **options) -> TAK:
    torch.manual_seed(0)
    backbone = MLP(input_dim=64, hidden_dims=(16,), output_dim=8)
    options = {"load_fisher": True, "fisher_cache": str(cache), "train_percent": 0.5, **options}
    algorithm = TAK(backbone, HeadsTIL(8), functools.partial(torch.optim.SGD, lr=0.1), num_tasks, **options)
    algorithm._benchmark = None
    return algorithm


def randomize(algorithm: TAK, scale: float = 0.3, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in algorithm.weight_delta.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


def penalty_by_hand(algorithm: TAK, curvature) -> torch.Tensor:
    """lambda * sum_terms w * tr(B [dW, db] A [dW, db]^T), straight from the factors (an MLP: linears only)."""
    delta = algorithm.weight_delta.materialize()
    total = 0.0
    for weight, factors in curvature:
        for layer, (input_factor, output_factor) in factors.kronecker.items():
            update = torch.cat([delta[f"{layer}.weight"], delta[f"{layer}.bias"].unsqueeze(1)], dim=1)
            total = total + weight * torch.trace(output_factor @ update @ input_factor @ update.T)
    return algorithm.reg_lambda * total


class KeepAlgorithm(CLCallback):
    """Keeps the algorithm and its benchmark for checks after ``run_sequence``."""

    def on_sequence_end(self, trainer, algorithm, results):
        self.algorithm, self.benchmark = algorithm, trainer.datamodule


class HeadSnapshots(CLCallback):
    def __init__(self):
        self.taken = []

    def on_task_end(self, trainer, algorithm, task_id, results):
        self.taken.append(copy.deepcopy(algorithm.heads.state_dict()))


# ---- the penalty inside the algorithm ---------------------------------------------------------


@pytest.mark.parametrize("use_lora", [False, True])
def test_penalty_is_zero_with_zero_gradient_at_tau_zero_and_matches_the_factors(tmp_path, use_lora):
    benchmark = digits(3)
    algorithm = mlp_tak(3, tmp_path, use_lora=use_lora, lora_rank=2)
    algorithm.setup_task(0, 2)
    algorithm.curvature = algorithm._prepare_curvature(benchmark, 0)  # tasks 2 and 3 (the other tasks)
    assert algorithm.curvature is not None and algorithm.curvature[0][1].num_samples > 0
    parameters = list(algorithm.weight_delta.parameters())

    at_zero = algorithm.regularization_loss()  # tau = 0 at the start of a task (LoRA: up = 0)
    assert float(at_zero.detach()) == 0.0
    for grad in torch.autograd.grad(at_zero, parameters, allow_unused=True):
        assert grad is None or torch.count_nonzero(grad) == 0

    randomize(algorithm)
    away = algorithm.regularization_loss()
    torch.testing.assert_close(away, penalty_by_hand(algorithm, algorithm.curvature), rtol=1e-5, atol=1e-6)
    assert float(away.detach()) > 0
    assert any(torch.count_nonzero(grad) for grad in torch.autograd.grad(away, parameters))


def test_eq7_and_eq8_agree_with_one_other_task_and_differ_with_two(tmp_path):
    values = {}
    for num_tasks in (2, 3):
        benchmark = digits(num_tasks)
        for ideal in (True, False):
            algorithm = mlp_tak(num_tasks, tmp_path / str(num_tasks), fisher_ideal=ideal)
            algorithm.setup_task(0, 2)
            algorithm.curvature = algorithm._prepare_curvature(benchmark, 0)
            randomize(algorithm)
            assert len(algorithm.curvature) == (num_tasks - 1 if ideal else 1)
            values[num_tasks, ideal] = float(algorithm.regularization_loss().detach())
    assert values[2, True] == pytest.approx(values[2, False], rel=1e-5)
    assert values[3, True] != pytest.approx(values[3, False], rel=1e-3)
    # The one-task-at-a-time Eq. 8 accumulation is the library's Eq. 8.
    store = algorithm.factor_store
    incremental = combined_curvature(lambda s: store.factors(benchmark, s), [1, 2], ideal=False)[0][1]
    library = accumulate_factors([store.factors(benchmark, s) for s in (1, 2)], ideal=False)[0][1]
    for layer, (a, b) in library.kronecker.items():
        torch.testing.assert_close(incremental.kronecker[layer][0], a)
        torch.testing.assert_close(incremental.kronecker[layer][1], b)


def test_store_only_pass_keeps_fisher_task_id_and_trains_without_penalty(tmp_path):
    benchmark = digits(3)
    algorithm = mlp_tak(3, tmp_path, load_fisher=False, fisher_task_id=1)  # 0-based: the second task
    assert algorithm._prepare_curvature(benchmark, 0) is None and not algorithm.factor_store.is_cached(
        benchmark, 0
    )
    assert algorithm._prepare_curvature(benchmark, 1) is None and algorithm.factor_store.is_cached(
        benchmark, 1
    )
    strict = mlp_tak(3, tmp_path, fisher_future_tasks=False)
    assert strict._prepare_curvature(benchmark, 0) is None  # no task before task 1
    assert strict._prepare_curvature(benchmark, 2)[0][1].num_samples == sum(
        strict.factor_store.factors(benchmark, s).num_samples for s in (0, 1)
    )


def test_bad_options_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="remote"):
        mlp_tak(2, "hf://someone/fisher")
    with pytest.raises(ValueError, match="load_path"):
        mlp_tak(2, tmp_path, load_task_vectors=True)
    with pytest.raises(ValueError, match="selects no parameter"):
        mlp_tak(2, tmp_path, ft_linears=False)
    with pytest.raises(ValueError, match="train_percent"):
        mlp_tak(2, tmp_path, train_percent=1.5)


def test_merge_scaling_follows_the_reference():
    generator = torch.Generator().manual_seed(0)
    vectors = [
        {"w": torch.randn(4, 3, generator=generator), "b": torch.randn(4, generator=generator)}
        for _ in range(3)
    ]
    total = {name: sum(v[name] for v in vectors) for name in ("w", "b")}
    one = merge_task_vectors(vectors, "ta", "one", tangent=True)  # coefficient 1 per task vector
    torch.testing.assert_close(one["w"], total["w"])
    numeric = merge_task_vectors(vectors, "ta", 1.5, tangent=False)  # alpha / k * sum
    torch.testing.assert_close(numeric["b"], 0.5 * total["b"])
    swept = merge_task_vectors(vectors, "ta", 0.3 * 3, tangent=True)  # sweep value a = 0.3 -> alpha = a * T
    torch.testing.assert_close(swept["w"], 0.3 * total["w"])
    torch.testing.assert_close(
        merge_task_vectors(vectors, "iso", 2.0, tangent=True)["w"], iso(vectors, alpha=2.0)["w"]
    )
    assert sweep_values(0.1, 1.5, 0.1) == [round(0.1 * i, 6) for i in range(1, 16)]


def test_schedules_warm_up_and_decay_as_the_reference():
    cosine = lr_multiplier("cosine", total_steps=20, warmup_steps=5)
    assert [cosine(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert cosine(5) == pytest.approx(1.0) and cosine(20) == pytest.approx(0.0) and 0 < cosine(12) < 1
    step = lr_multiplier("step", total_steps=100)
    assert [step(s) for s in (0, 9, 10, 69, 70, 89, 90)] == pytest.approx([0.1, 1.0, 1.0, 1.0, 0.5, 0.5, 0.1])
    assert lr_multiplier("none", 10)(7) == 1.0


def test_cosine_plus_and_decay_are_the_reference_cosine_lr():
    """The reference's cosine_lr(opt, lr, warmup, steps, min_lr) sets, at step s,
    lr * (s + 1) / warmup while s < warmup, else min_lr + 0.5 * (1 + cos(pi * e / es)) * lr with
    e = s - warmup, es = steps - warmup; as multipliers of lr (values worked out by hand)."""
    # cosine_plus: warmup = int(0.1 * steps) = 10 of 100 steps, min_lr = 0.1 * lr.
    plus = lr_multiplier("cosine_plus", total_steps=100, warmup_steps=500)  # warmup_steps: cosine's only
    expected = {
        0: 0.1,  # 1 / 10
        4: 0.5,  # 5 / 10
        9: 1.0,  # 10 / 10
        10: 1.1,  # e = 0: 0.1 + 0.5 * (1 + 1)
        40: 0.85,  # e / es = 30 / 90 = 1/3: 0.1 + 0.5 * (1 + 0.5)
        55: 0.6,  # e / es = 1/2: 0.1 + 0.5
        100: 0.1,  # e = es: 0.1 + 0.5 * (1 - 1)
    }
    assert {s: plus(s) for s in expected} == pytest.approx(expected, abs=1e-12)
    small = lr_multiplier("cosine_plus", total_steps=9)  # int(0.9) = 0: no warm-up at all
    assert small(0) == pytest.approx(1.1) and small(9) == pytest.approx(0.1)
    # decay: no warm-up, min_lr = 0, over n_epochs * num_batches BATCHES (not divided by virtual_bs_n).
    decay = lr_multiplier("decay", total_steps=60, warmup_steps=500)
    expected = {0: 1.0, 20: 0.75, 30: 0.5, 40: 0.25, 60: 0.0}  # 0.5 * (1 + cos(pi * s / 60))
    assert {s: decay(s) for s in expected} == pytest.approx(expected, abs=1e-12)
    # virtual_bs_n = 2 over 120 batches: 60 optimiser steps, the horizon stays 120 batches.
    halved = lr_multiplier("decay", total_steps=60, total_batches=120)
    assert halved(40) == pytest.approx(0.75) and halved(60) == pytest.approx(
        0.5
    )  # ends at 0.5 (1 + cos(pi / 2))


# ---- whole sequences -------------------------------------------------------------------------------

MLP_TAK = [
    "algorithm=tak",
    "backbone=mlp",
    "backbone.hidden_dims=[32]",
    "backbone.output_dim=16",
    "benchmark.num_tasks=2",
    "benchmark.val_fraction=0",
    "trainer.limit_train_batches=4",
    "algorithm.load_fisher=true",
    "algorithm.train_percent=64",
    "algorithm.warmup_steps=1",
    "algorithm.alpha_sweep_start=0.5",
    "algorithm.alpha_sweep_end=1.0",
    "algorithm.alpha_sweep_step=0.5",
    "optimizer.lr=0.01",
]


@pytest.mark.slow
def test_factor_cache_is_reused_by_a_second_run(make_config, tmp_path, monkeypatch):
    import clcore.algorithms.tak.factors as tak_factors

    calls = []
    compute = tak_factors.compute_kfac_factors
    monkeypatch.setattr(
        tak_factors, "compute_kfac_factors", lambda *a, **k: calls.append(1) or compute(*a, **k)
    )
    cache = tmp_path / "fisher"
    first = run_sequence(
        make_config(*MLP_TAK, "benchmark=split_digits", f"algorithm.fisher_cache={cache}", subdir="first")
    )
    # task 2's factors are computed before task 1 trains, task 1's before task 2
    assert len(calls) == 2 and len(list(cache.glob("kfac-*.pt"))) == 2
    second = run_sequence(
        make_config(*MLP_TAK, "benchmark=split_digits", f"algorithm.fisher_cache={cache}", subdir="second")
    )
    assert len(calls) == 2  # loaded, not recomputed
    assert min(first.summary()["fisher_seconds"]) > 0 and second.summary()["fisher_seconds"] == [0.0, 0.0]
    torch.testing.assert_close(first.acc_matrix, second.acc_matrix, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("paradigm", "benchmark", "tangent"),
    [("til", "split_digits", True), ("cil", "split_digits", False), ("dil", "permuted_digits", True)],
)
def test_mlp_tak_runs_every_paradigm_and_freezes_finished_heads(
    make_config, tmp_path, paradigm, benchmark, tangent
):
    snapshots, keep = HeadSnapshots(), KeepAlgorithm()
    overrides = [
        *MLP_TAK,
        f"benchmark={benchmark}",
        f"paradigm={paradigm}",
        f"algorithm.tangent={str(tangent).lower()}",
        "trainer.limit_train_batches=8",
        "algorithm.reg_lambda=1",
    ]
    results = run_sequence(
        make_config(*overrides, f"algorithm.fisher_cache={tmp_path / 'f'}"), extra_callbacks=[snapshots, keep]
    )
    chance = {"til": 1 / 2, "cil": 1 / 4, "dil": 1 / 10}[paradigm]  # 2 classes per task; CIL: 4 seen; DIL: 10
    assert not torch.isnan(results.acc_matrix[1]).any() and results.acc_matrix[1].min() > chance
    summary = results.summary()
    assert len(summary["single_task_accuracy"]) == 2 and min(summary["single_task_accuracy"]) > chance + 0.1
    if paradigm != "dil":  # task 1's head is frozen once task 1 ends (DIL's one head keeps training)
        first_head = "heads.0.weight" if paradigm == "til" else "blocks.0.weight"
        torch.testing.assert_close(snapshots.taken[0][first_head], snapshots.taken[1][first_head])
    assert keep.algorithm.task_vectors[1].keys() == keep.algorithm.selection.shapes.keys()


class CountSteps(CLCallback):
    def on_train_end(self, trainer, pl_module):
        self.steps = trainer.global_step


@pytest.mark.slow
def test_virtual_batches_step_once_per_group_with_one_penalty_each(make_config, tmp_path, monkeypatch):
    penalties = []
    regularization_loss = TAK.regularization_loss
    monkeypatch.setattr(
        TAK, "regularization_loss", lambda self: penalties.append(1) or regularization_loss(self)
    )
    counter = CountSteps()
    cfg = make_config(
        *MLP_TAK,
        "benchmark=split_digits",
        "benchmark.num_tasks=2",
        "trainer.limit_train_batches=5",
        "algorithm.virtual_bs_n=2",
        f"algorithm.fisher_cache={tmp_path}",
    )
    run_sequence(cfg, extra_callbacks=[counter])
    assert counter.steps == 3  # batches 1-2, 3-4, and the epoch's last batch alone (last task)
    assert len(penalties) == 6  # one penalty per optimiser step, 3 per task


CLIP_TAK = [
    "experiment=tak_split_cifar100_clip",
    "benchmark=split_digits",
    "backbone=clip_tiny_random",
    "benchmark.num_tasks=2",
    "benchmark.batch_size=32",
    "benchmark.model_input.size=32",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "optimizer.lr=0.01",
    "algorithm.warmup_steps=1",
    "algorithm.train_percent=32",
    "algorithm.frozen_head.templates=['a photo of the number: \"{}\".']",
    "algorithm.alpha_sweep_start=0.5",
    "algorithm.alpha_sweep_end=1.5",
    "algorithm.alpha_sweep_step=0.5",
    "callbacks.tak_outputs.save_task_vectors=true",
]


@pytest.mark.slow
def test_tiny_clip_sequence_merges_sweeps_saves_and_reloads(make_config, tmp_path):
    pytest.importorskip("open_clip")
    keep = KeepAlgorithm()
    cfg = make_config(*CLIP_TAK, f"algorithm.fisher_cache={tmp_path / 'fisher'}", subdir="first")
    results = run_sequence(cfg, extra_callbacks=[keep])
    out = tmp_path / "first"
    algorithm, benchmark = keep.algorithm, keep.benchmark
    assert results.tasks_done == 2 and not torch.isnan(results.acc_matrix[1]).any()

    # The accuracy matrix is the merged model's: theta_0 + tau_1 + tau_2 (ta, alpha "one"), rebuilt
    # independently from the saved vectors with the library's LinearizedModel, on the zero-shot heads.
    # TAK's default tangent (tangent_of: normalised) linearises the normalised features, as the
    # reference; the head sees them normalised again (the reference's ClassificationHead(normalize=True)).
    from clcore.task_arithmetic import LinearizedModel
    from clcore.task_arithmetic.linearize import normalize_features

    vectors = [TaskVector.load(out / "task_vectors" / f"task_{t}.pt") for t in (1, 2)]
    assert all(v.kind == "linear" for v in vectors) and all(float(v.norm()) > 0 for v in vectors)
    merged = sum(vectors)
    for name, tensor in algorithm._merged.items():
        torch.testing.assert_close(tensor.cpu(), merged[name])
    merged_model = merged.apply_to(
        LinearizedModel(copy.deepcopy(algorithm.backbone), output_map=normalize_features)
    )
    for task in (0, 1):
        split = benchmark.task_split("test", task)
        x = benchmark.prepare_batch(split.images, task)
        with torch.no_grad():
            logits = algorithm.heads(F.normalize(merged_model(x), dim=-1), task)
            torch.testing.assert_close(algorithm.eval_logits(x, task), logits, atol=1e-4, rtol=1e-4)
            predictions = logits.argmax(-1)
        expected = float((predictions == algorithm.heads.targets(split.labels, task)).float().mean())
        assert abs(float(results.acc_matrix[1, task]) - expected) <= 1.5 / len(split.labels)
    assert not any(p.requires_grad for p in algorithm.heads.parameters())  # the zero-shot head stays frozen

    # The alpha sweep: one row per alpha; alpha 1 is the merge the accuracy matrix used.
    with open(out / "results" / "alpha_sweep.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["alpha"] for row in rows] == ["0.5", "1", "1.5"]
    assert float(rows[1]["average_accuracy"]) == pytest.approx(
        results.summary()["average_accuracy"], abs=1e-6
    )
    assert (out / "plots" / "alpha_sweep.png").stat().st_size > 0

    # The pipeline's checkpoint carries the task vectors (crash-resume) ...
    checkpoint = torch.load(out / "checkpoints" / "task_2.ckpt", weights_only=True)
    restored = copy.deepcopy(algorithm)
    restored.task_vectors, restored._merged = [], None
    restored.load_cl_state_dict(checkpoint["cl_state"])
    for name, tensor in algorithm._merged.items():
        torch.testing.assert_close(restored._merged[name].cpu(), tensor.cpu())

    # ... and algorithm.load_task_vectors reloads the saved vectors: nothing trains, the same matrix comes out.
    again = KeepAlgorithm()
    reloaded = run_sequence(
        make_config(
            *CLIP_TAK,
            f"algorithm.fisher_cache={tmp_path / 'fisher'}",
            "algorithm.load_task_vectors=true",
            f"algorithm.load_path={out / 'task_vectors'}",
            subdir="second",
        ),
        extra_callbacks=[again],
    )
    torch.testing.assert_close(reloaded.acc_matrix, results.acc_matrix, equal_nan=True)
    assert reloaded.summary()["task_vector_loaded"] == [1.0, 1.0]
    never_stepped = again.algorithm.weight_delta.full.values()
    assert all(torch.count_nonzero(p) == 0 for p in never_stepped)
    summary = json.loads((tmp_path / "second" / "results" / "summary.json").read_text())
    assert summary["single_task_accuracy"] == pytest.approx(results.summary()["single_task_accuracy"])

    # The same vectors written as the reference (Mammoth) saves them, under its parameter names, and
    # loaded from its args file: the same matrix again.
    from tests.library.tak.test_merging_conventions import _reference_names, _write_reference_files

    ours = {name: mammoth_parameter_name(name) for name in _reference_names(8)}  # reference -> clcore
    reference = tmp_path / "reference"
    reference.mkdir()
    for task, vector in enumerate(vectors):
        names = [name for name, clcore_name in ours.items() if clcore_name in vector.vector]
        tensors = [vector.vector[ours[name]] for name in names]
        _write_reference_files(reference, "1_seq-cifar100", task, tensors, names, {"tangent": 1})
    from_reference = run_sequence(
        make_config(
            *CLIP_TAK,
            f"algorithm.fisher_cache={tmp_path / 'fisher'}",
            "algorithm.load_task_vectors=true",
            f"algorithm.load_path={reference / '1_seq-cifar100_args.json'}",
            subdir="third",
        )
    )
    torch.testing.assert_close(from_reference.acc_matrix, results.acc_matrix, equal_nan=True)
    assert from_reference.summary()["task_vector_loaded"] == [1.0, 1.0]


def test_clip_experiment_offline_says_what_is_missing(make_config, tmp_path):
    cfg = make_config("experiment=tak_split_cifar100_clip", f"benchmark.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="cifar-100-python"):
        preflight(cfg)


# ---- benchmark support: class names and the model's input convention ------------------------------


def test_model_input_resizes_expands_and_renormalises_and_class_names_follow_the_tasks():
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    plain = digits(2)
    clip = SplitBenchmark(
        "digits",
        num_tasks=2,
        classes_per_task=2,
        seed=0,
        val_fraction=0.0,
        model_input={"size": 32, "channels": 3, "mean": mean, "std": std},
    )
    assert clip.image_shape == (3, 32, 32) and plain.image_shape == (1, 8, 8)
    images = plain.task_split("test", 1).images[:4]
    x = clip.prepare_batch(images, 1)
    pixels = F.interpolate(images.float() / 255, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    mean_, std_ = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expected = (pixels.expand(-1, 3, -1, -1) - mean_) / std_
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)
    assert clip.class_names_of(1) == ["2", "3"]
