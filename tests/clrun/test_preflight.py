"""Bad input is refused before anything trains: every problem named, with what to change.

Each case is a real composed config (plus, for some, files placed in the output folder). The run
must raise ``ConfigError`` whose message names the problem, must not reach ``Trainer.fit``, and
must leave the output folder exactly as it was (no config.yaml, checkpoint or result written).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning
import pytest
import torch
from omegaconf import OmegaConf

from clcore.algorithms import HAT
from clcore.backbones import HATMaskMLP
from clcore.benchmarks import PermutedBenchmark, RotatedBenchmark, SplitBenchmark
from clcore.clrun import resume
from clcore.clrun.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from clcore.clrun.checks import ConfigError, preflight
from clcore.clrun.construction import build
from clcore.clrun.task_loop import run_sequence
from clcore.heads import HeadsCIL, HeadsTIL
from tests.helpers import RunsCode

# torch notes that the malicious pickles use a newer pickle protocol than its own files.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


# ---- files a case places in the output folder before the run -----------------------------------
def _same_config_yaml(out: Path, cfg) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _checkpoint_file(out: Path, cfg, content: bytes) -> None:
    _same_config_yaml(out, cfg)
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "task_1.ckpt").write_bytes(content)


def _real_checkpoint_bytes(cfg, tmp_path: Path, config_digest: str | None = None) -> bytes:
    from clcore.metrics.results import ContinualResults

    benchmark, algorithm = build(cfg)
    algorithm.setup_task(0, benchmark.num_classes_of(0))
    results = ContinualResults(benchmark.num_tasks)
    digest = config_digest if config_digest is not None else resume.config_hash(cfg)
    path = save_checkpoint(tmp_path / "made", 0, algorithm, results, digest)
    return path.read_bytes()


def different_experiment(out, cfg, tmp_path):
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["benchmark"]["num_tasks"] = 4
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(saved))


def unreadable_config_yaml(out, cfg, tmp_path):
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("benchmark: [unclosed\n  : :\n")


def garbage_checkpoint(out, cfg, tmp_path):
    _checkpoint_file(out, cfg, b"this is not a checkpoint at all")


def empty_checkpoint(out, cfg, tmp_path):
    _checkpoint_file(out, cfg, b"")


def truncated_checkpoint(out, cfg, tmp_path):
    complete = _real_checkpoint_bytes(cfg, tmp_path)
    _checkpoint_file(out, cfg, complete[: len(complete) // 2])


def old_format_checkpoint(out, cfg, tmp_path):
    _same_config_yaml(out, cfg)
    (out / "checkpoints").mkdir()
    torch.save({"task_id": 0, "state_dict": {}, "results": {}}, out / "checkpoints" / "task_1.ckpt")


def renamed_checkpoint(out, cfg, tmp_path):
    _same_config_yaml(out, cfg)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "task_2.ckpt").write_bytes(_real_checkpoint_bytes(cfg, tmp_path))  # holds task 1


def other_config_checkpoint(out, cfg, tmp_path):
    _checkpoint_file(out, cfg, _real_checkpoint_bytes(cfg, tmp_path, config_digest="0" * 64))


def malicious_pickle_checkpoint(out, cfg, tmp_path):
    _checkpoint_file(out, cfg, pickle.dumps(RunsCode(tmp_path / "payload_ran")))


def malicious_torch_checkpoint(out, cfg, tmp_path):
    _same_config_yaml(out, cfg)
    (out / "checkpoints").mkdir()
    torch.save(
        {"format": CHECKPOINT_FORMAT, "task_id": RunsCode(tmp_path / "payload_ran")},
        out / "checkpoints" / "task_1.ckpt",
    )


# ---- the table ----------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    overrides: list[str]
    expected: list[str]  # substrings the error message must contain
    prepare: Callable | None = None


NO_DATA = "{tmp}/no_data_here"

CASES = [
    # task counts and class splits
    Case("zero_tasks", ["benchmark.num_tasks=0"], ["benchmark.num_tasks=0", "integer >= 1"]),
    Case("task_count_not_a_number", ["benchmark.num_tasks=two"], ["benchmark.num_tasks='two'"]),
    Case(
        "split_needs_more_classes",
        ["benchmark=split_digits", "benchmark.num_tasks=6"],
        ["12 classes, but digits has 10"],
    ),
    Case(
        "cifar100_split_needs_more_classes",
        [
            "benchmark=split_cifar100",
            "benchmark.num_tasks=10",
            "benchmark.classes_per_task=20",
            f"benchmark.root={NO_DATA}",
        ],
        ["200 classes, but cifar100 has 100", "CIFAR100 not found"],  # both problems at once
    ),
    Case(
        "zero_classes_per_task",
        ["benchmark=split_digits", "benchmark.classes_per_task=0"],
        ["benchmark.classes_per_task=0"],
    ),
    Case(
        "unknown_source",
        ["benchmark.source=imagenet"],
        ["benchmark.source='imagenet' is unknown", "cifar100"],
    ),
    Case(
        "source_without_root",
        ["benchmark=permuted_mnist", "benchmark.root=null"],
        ["benchmark.root is not set"],
    ),
    Case("zero_batch_size", ["benchmark.batch_size=0"], ["benchmark.batch_size=0"]),
    Case("negative_eval_batch_size", ["benchmark.eval_batch_size=-5"], ["benchmark.eval_batch_size=-5"]),
    Case(
        "validation_fraction_above_one",
        ["benchmark.val_fraction=1.5"],
        ["benchmark.val_fraction=1.5", "[0, 1)"],
    ),
    # optimisation
    Case("zero_learning_rate", ["optimizer.lr=0"], ["optimizer.lr=0", "positive finite"]),
    Case("negative_learning_rate", ["optimizer=sgd", "optimizer.lr=-0.1"], ["optimizer.lr=-0.1"]),
    Case("nan_learning_rate", ["optimizer.lr=nan"], ["optimizer.lr=nan"]),
    Case("negative_weight_decay", ["optimizer.weight_decay=-0.01"], ["optimizer.weight_decay=-0.01"]),
    Case("zero_epochs", ["trainer.max_epochs=0"], ["trainer.max_epochs=0", "bounded"]),
    Case("unbounded_epochs", ["trainer.max_epochs=-1"], ["trainer.max_epochs=-1"]),
    Case(
        "no_training_batches", ["trainer.limit_train_batches=0"], ["trainer.limit_train_batches=0", "nothing"]
    ),
    Case("negative_seed", ["seed=-1"], ["seed=-1"]),
    # a replay memory larger than the sequence's training set (permuted digits: 3 x 1293 samples)
    Case(
        "replay_memory_above_the_data",
        ["algorithm=er", "algorithm.memory_size=5120"],
        ["algorithm.memory_size=5120 exceeds the 3879 training samples"],
    ),
    Case("replay_memory_zero", ["algorithm=derpp", "algorithm.memory_size=0"], ["algorithm.memory_size=0"]),
    Case(
        "eval_split_unknown",
        ["benchmark.eval_split=train"],
        ["benchmark.eval_split='train': choose test, or val"],
    ),
    Case(
        "plots_not_a_switch",
        ["plots=maybe", "save_checkpoints=2"],
        ["plots='maybe': must be true or false", "save_checkpoints=2"],
    ),
    # what cannot be imported, or is not what its group needs
    Case(
        "unknown_algorithm",
        ["algorithm._target_=clcore.algorithms.Nope"],
        ["algorithm._target_='clcore.algorithms.Nope' cannot be imported"],
    ),
    Case(
        "unknown_backbone_package",
        ["backbone._target_=nosuchpkg.Net"],
        ["backbone._target_='nosuchpkg.Net' cannot be imported"],
    ),
    Case(
        "unknown_callback",
        ["+callbacks.mine._target_=my_lab.MyCallback"],
        ["callbacks.mine._target_='my_lab.MyCallback'"],
    ),
    Case(
        "paradigm_is_not_heads",
        ["paradigm._target_=torch.nn.Linear"],
        ["paradigm._target_='torch.nn.Linear' is a Linear, not a CLHeads"],
    ),
    # algorithm x paradigm x backbone
    Case(
        "hat_with_cil",
        ["algorithm._target_=clcore.algorithms.HAT", "paradigm=cil"],
        ["HAT does not support paradigm=cil", "paradigm=til"],
    ),
    Case(
        "til_only_algorithm_with_dil",
        ["algorithm._target_=tests.helpers.TILOnly", "paradigm=dil"],
        ["TILOnly does not support paradigm=dil"],
    ),
    Case(
        "algorithm_needs_another_backbone",
        ["algorithm._target_=tests.helpers.NeedsSpecialBackbone"],
        ["needs a backbone that is a SpecialMLP", "the backbone is a MLP"],
    ),
    Case(
        "mask_backbone_too_small",
        ["algorithm=hat", "backbone=hat_mlp", "backbone.num_tasks=2"],
        ["backbone.num_tasks=2 has room for fewer tasks than benchmark.num_tasks=3"],
    ),
    # options a constructor does not take (Hydra would fail on them when building the run)
    Case(
        "option_of_another_algorithm",
        ["+algorithm.merging=ties"],
        ["algorithm.merging is not an option of Finetuning", "remove it"],
    ),
    Case(
        "misspelt_option",
        ["algorithm=hat", "backbone=hat_mlp", "+algorithm.smax=400"],
        ["did you mean algorithm.s_max?"],
    ),
    Case(
        "unknown_benchmark_option",
        ["+benchmark.num_task=3"],
        ["benchmark.num_task is not an option of PermutedBenchmark"],
    ),
    # task-arithmetic knobs: TAK's own rules (TAK.config_problems)
    Case(
        "unknown_merge_method",
        ["algorithm=tak", "algorithm.merging=average"],
        ["algorithm.merging='average' is not a merge method", "ties"],
    ),
    Case(
        "negative_merge_alpha",
        ["algorithm=tak", "algorithm.alpha_merging=-0.5"],
        ["algorithm.alpha_merging=-0.5"],
    ),
    Case(
        "merge_alpha_word",
        ["algorithm=tak", "algorithm.alpha_merging=two"],
        ["algorithm.alpha_merging='two'", "'one'"],
    ),
    Case(
        "infinite_merge_alpha",
        ["algorithm=tak", "algorithm.alpha_merging=inf"],
        ["algorithm.alpha_merging=inf"],
    ),
    Case(
        "remote_curvature_cache",
        ["algorithm=tak", "algorithm.fisher_cache=https://example.org/kfac"],
        ["algorithm.fisher_cache", "remote"],
    ),
    # missing data, and checks that need the data
    Case(
        "mnist_missing",
        ["benchmark=permuted_mnist", f"benchmark.root={NO_DATA}"],
        ["MNIST not found", "train-images-idx3-ubyte", "benchmark.root"],
    ),
    Case(
        "cifar10_missing",
        ["benchmark=split_cifar10", f"benchmark.root={NO_DATA}"],
        ["CIFAR10 not found", "cifar-10-batches-py"],
    ),
    Case(
        "rotation_angles_do_not_match_tasks",
        [
            "benchmark=rotated_mnist",
            "benchmark.source=digits",
            "benchmark.num_tasks=3",
            "+benchmark.angles=[0,90]",
        ],
        ["benchmark.angles has 2 entries but benchmark.num_tasks=3"],
    ),
    Case(
        "repeated_class_order",
        ["benchmark=split_digits", "+benchmark.class_order=[0,0,1,2,3,4,5,6,7,8]"],
        ["benchmark.class_order must list"],
    ),
    # resume settings and the output folder
    Case("unknown_resume_mode", ["resume=maybe"], ["resume='maybe' is not one of auto, true, false"]),
    Case("resume_without_checkpoint", ["resume=true"], ["resume=true but", "holds no task_<t>.ckpt"]),
    Case(
        "resume_without_saving",
        ["resume=true", "save_checkpoints=false"],
        ["save_checkpoints=false", "holds no task_<t>.ckpt"],
    ),
    Case(
        "folder_holds_other_experiment",
        [],
        ["holds a different experiment", "benchmark.num_tasks: 4 in the folder, 3 now", "resume=false"],
        different_experiment,
    ),
    Case(
        "folder_config_unreadable",
        [],
        ["holds a different experiment", "config.yaml cannot be read"],
        unreadable_config_yaml,
    ),
    # checkpoints that cannot be resumed from
    Case("garbage_checkpoint", [], ["task_1.ckpt cannot be read", "Delete it"], garbage_checkpoint),
    Case("empty_checkpoint", [], ["task_1.ckpt cannot be read"], empty_checkpoint),
    Case("truncated_checkpoint", [], ["task_1.ckpt cannot be read"], truncated_checkpoint),
    Case("checkpoint_of_old_format", [], ["lacks format, config_hash, cl_state, rng"], old_format_checkpoint),
    Case("checkpoint_under_wrong_name", [], ["task_2.ckpt holds task 1"], renamed_checkpoint),
    Case("checkpoint_of_other_config", [], ["written by a different configuration"], other_config_checkpoint),
    Case("malicious_pickle_checkpoint", [], ["would execute code", "refused"], malicious_pickle_checkpoint),
    Case("malicious_torch_checkpoint", [], ["would execute code", "refused"], malicious_torch_checkpoint),
]


def _files(folder: Path) -> dict[str, bytes]:
    return (
        {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        if folder.exists()
        else {}
    )


@pytest.fixture
def no_training(monkeypatch):
    def fit(*args, **kwargs):
        pytest.fail("Trainer.fit ran although the configuration was invalid")

    monkeypatch.setattr(lightning.Trainer, "fit", fit)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_before_training(case, make_config, tmp_path, no_training):
    cfg = make_config("benchmark.num_tasks=3", *[o.replace("{tmp}", str(tmp_path)) for o in case.overrides])
    out = Path(cfg.paths.output_dir)
    if case.prepare is not None:
        case.prepare(out, cfg, tmp_path)
    before = _files(out)
    with pytest.raises(ConfigError) as refused:
        run_sequence(cfg)
    message = str(refused.value)
    for expected in case.expected:
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert _files(out) == before, "the refused run changed its output folder"
    assert not (tmp_path / "payload_ran").exists(), "a checkpoint's pickled code was executed"


def test_every_problem_is_reported_at_once(make_config, no_training):
    cfg = make_config(
        "benchmark.num_tasks=0",
        "optimizer.lr=-1",
        "trainer.max_epochs=0",
        "algorithm._target_=tests.helpers.TILOnly",
        "paradigm=cil",
        "+algorithm.merging=average",  # TILOnly (a Finetuning) takes no merging option
    )
    with pytest.raises(ConfigError) as refused:
        preflight(cfg)
    problems = refused.value.problems
    assert len(problems) == 5, problems
    message = str(refused.value)
    assert message.startswith("5 problem(s) with the configuration; nothing was trained:")
    for name in (
        "benchmark.num_tasks=0",
        "optimizer.lr=-1",
        "trainer.max_epochs=0",
        "paradigm=cil",
        "algorithm.merging",
    ):
        assert name in message


def test_valid_configs_pass(make_config):
    for overrides in (
        [],
        ["benchmark=split_digits", "paradigm=cil"],
        ["experiment=finetuning_rotated_mnist", "benchmark.source=digits", "benchmark.root=null"],
        ["trainer.max_epochs=null", "+trainer.max_steps=10"],
        ["algorithm=tak", "algorithm.merging=ties", "algorithm.alpha_merging=one"],
    ):
        preflight(make_config(*overrides))


def test_algorithm_refuses_the_wrong_backbone_when_built_directly(make_config):
    from tests.helpers import NeedsSpecialBackbone

    _, algorithm = build(make_config())
    with pytest.raises(ValueError, match="needs a backbone that is a SpecialMLP, but the backbone is a MLP"):
        NeedsSpecialBackbone(algorithm.backbone, algorithm.heads, algorithm.optimizer_factory, num_tasks=2)


# ---- one rule, one place: the constructor and the pre-flight check refuse alike -------------------
def _hat(backbone_tasks: int = 5, heads=None, **options) -> HAT:
    """HAT on a ``HATMaskMLP`` for the default 5-task run, built directly."""
    backbone = HATMaskMLP(64, num_tasks=backbone_tasks)
    heads = heads if heads is not None else HeadsTIL(backbone.output_dim)
    return HAT(backbone, heads, torch.optim.SGD, num_tasks=5, **options)


HAT_SETTING = ["algorithm=hat", "backbone=hat_mlp"]
PARITY = [
    # (clrun overrides on the 5-task Permuted Digits default, the same thing built directly)
    (["benchmark.source=imagenet"], lambda: PermutedBenchmark("imagenet", 5)),
    (["benchmark.batch_size=0"], lambda: PermutedBenchmark("digits", 5, batch_size=0)),
    (
        ["benchmark=split_digits", "benchmark.num_tasks=6"],
        lambda: SplitBenchmark("digits", 6, classes_per_task=2),
    ),
    (
        ["benchmark=split_digits", "+benchmark.class_order=[0,0,1,2,3,4,5,6,7,8]"],
        lambda: SplitBenchmark("digits", 5, class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
    ),
    (
        [
            "benchmark=rotated_mnist",
            "benchmark.source=digits",
            "benchmark.num_tasks=3",
            "+benchmark.angles=[0,90]",
        ],
        lambda: RotatedBenchmark("digits", 3, angles=[0, 90]),
    ),
    ([*HAT_SETTING, "backbone.num_tasks=0"], lambda: HATMaskMLP(64, num_tasks=0)),
    ([*HAT_SETTING, "backbone.num_tasks=2"], lambda: _hat(backbone_tasks=2)),
    ([*HAT_SETTING, "algorithm.s_max=0.5"], lambda: _hat(s_max=0.5)),
    ([*HAT_SETTING, "algorithm.adjustment_mode=sometimes"], lambda: _hat(adjustment_mode="sometimes")),
    ([*HAT_SETTING, "paradigm=cil"], lambda: _hat(heads=HeadsCIL(64))),
]


@pytest.mark.parametrize(("overrides", "construct"), PARITY, ids=[" ".join(o) for o, _ in PARITY])
def test_the_constructor_and_the_preflight_check_refuse_with_the_same_words(
    overrides, construct, make_config
):
    with pytest.raises(ConfigError) as built:
        construct()
    with pytest.raises(ConfigError) as checked:
        preflight(make_config(*overrides))
    assert built.value.problems, "the constructor gave no reason"
    missing = [problem for problem in built.value.problems if problem not in checked.value.problems]
    assert not missing, f"the pre-flight check did not say {missing}; it said {checked.value.problems}"
