"""Every documented config key's type and range is checked before anything runs.

Types come from the constructors' annotations (``clcore.config_types``), ranges from each class's
``config_problems``; the pre-flight check reports both, every problem at once, each naming its key.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from clcore.algorithms import HAT
from clcore.algorithms.ewc import EWC
from clcore.algorithms.joint import Joint
from clcore.algorithms.lwf import LwF
from clcore.algorithms.mas import MAS
from clcore.algorithms.online_ewc import OnlineEWC
from clcore.algorithms.si import SI
from clcore.algorithms.tak import TAK
from clcore.backbones import MLP, HATMaskMLP, HATMaskResNet18, ResNet18
from clcore.backbones.clip import CLIPVisualBackbone
from clcore.benchmarks import PermutedBenchmark, RotatedBenchmark, SplitBenchmark
from clcore.clrun.checks import preflight
from clcore.clrun.cli import compose
from clcore.config_rules import ConfigError
from clcore.config_types import option_type_problems, problems_with_types_first, run_option_problems
from clcore.heads import HeadsTIL

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "clcore" / "configs"

# ---- types: (class, group, key, bad value, words the one problem must contain) -------------------
BAD_TYPES = [
    # a string where a boolean belongs (truthy, so it would have switched the option on)
    (LwF, "algorithm", "t_squared", "false", ["algorithm.t_squared='false': must be true or false"]),
    (MLP, "backbone", "batch_norm", "ture", ["backbone.batch_norm='ture'", "did you mean true"]),
    (PermutedBenchmark, "benchmark", "download", "no", ["benchmark.download='no'", "true or false"]),
    (Joint, "algorithm", "all_at_once", 1, ["algorithm.all_at_once=1: must be true or false"]),
    (TAK, "algorithm", "tangent", "yes", ["algorithm.tangent='yes'"]),
    # an integer option given a float, a number given as a quoted string, a bool as a number
    (
        PermutedBenchmark,
        "benchmark",
        "num_tasks",
        3.0,
        ["benchmark.num_tasks=3.0: must be an integer", "write 3"],
    ),
    (TAK, "algorithm", "virtual_bs_n", 2.5, ["algorithm.virtual_bs_n=2.5: must be an integer"]),
    (HATMaskResNet18, "backbone", "base_width", 8.0, ["backbone.base_width=8.0"]),
    (HAT, "algorithm", "s_max", "400", ["algorithm.s_max='400': must be a number", "without quotes"]),
    (HAT, "algorithm", "mask_sparsity_reg_factor", True, ["algorithm.mask_sparsity_reg_factor=True"]),
    (torch.optim.Adam, "optimizer", "weight_decay", "0", ["optimizer.weight_decay='0': must be a number"]),
    (
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        "lr_scheduler",
        "patience",
        2.5,
        ["lr_scheduler.patience=2.5"],
    ),
    # lists: the wrong container, or a wrong item (named)
    (MLP, "backbone", "hidden_dims", 256, ["backbone.hidden_dims=256: must be a list"]),
    (MLP, "backbone", "hidden_dims", [256, "100"], ["backbone.hidden_dims=[256, '100']", "item 1 is '100'"]),
    (HATMaskMLP, "backbone", "hidden_dims", [1.5], ["backbone.hidden_dims=[1.5]", "each item an integer"]),
    (SplitBenchmark, "benchmark", "class_order", [0, "1"], ["benchmark.class_order=[0, '1']", "item 1"]),
    (RotatedBenchmark, "benchmark", "angles", "90", ["benchmark.angles='90': must be a list"]),
    # a choice (Literal) misspelt: the choices listed, the closest one named
    (
        HAT,
        "algorithm",
        "adjustment_mode",
        "hat_randon",
        ["algorithm.adjustment_mode='hat_randon': must be one of 'hat', 'hat_random'", "did you mean"],
    ),
    (HAT, "algorithm", "embedding_init", "N(0,1)", ["algorithm.embedding_init='N(0,1)'", "'U-11'"]),
    (
        ResNet18,
        "backbone",
        "norm",
        "batchnorm",
        ["backbone.norm='batchnorm'", "did you mean backbone.norm=batch"],
    ),
    (
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        "lr_scheduler",
        "mode",
        "minimum",
        ["lr_scheduler.mode='minimum': must be one of 'min', 'max'"],
    ),
    # null where the option is not optional
    (HAT, "algorithm", "s_max", None, ["algorithm.s_max=None: must be a number"]),
    (LwF, "algorithm", "temperature", None, ["algorithm.temperature=None"]),
    (TAK, "algorithm", "lora_rank", None, ["algorithm.lora_rank=None: must be an integer"]),
    (CLIPVisualBackbone, "backbone", "model_name", None, ["backbone.model_name=None: must be a string"]),
    # mappings and unions
    (
        CLIPVisualBackbone,
        "backbone",
        "model_cfg",
        "ViT",
        ["backbone.model_cfg='ViT': must be a mapping, or null"],
    ),
    (TAK, "algorithm", "alpha_merging", [1], ["algorithm.alpha_merging=[1]: must be a number, or a string"]),
    (EWC, "algorithm", "fisher", 3, ["algorithm.fisher=3: must be a string, or true or false"]),
    (TAK, "algorithm", "fisher_task_id", "2", ["algorithm.fisher_task_id='2': must be an integer, or null"]),
]


@pytest.mark.parametrize(
    ("cls", "group", "key", "value", "words"),
    BAD_TYPES,
    ids=[f"{cls.__name__}.{key}={value!r}" for cls, _, key, value, _ in BAD_TYPES],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(cls, group, key, value, words):
    problems = option_type_problems(group, cls, {key: value})
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], f"{word!r} not in {problems[0]!r}"


GOOD_VALUES = [
    (
        HAT,
        {"s_max": 400, "adjustment_alpha": None, "adjustment_mode": "hat_const_1", "embedding_init": "last"},
    ),
    (MLP, {"hidden_dims": [], "dropout": 0, "input_dim": 64, "batch_norm": True}),
    (EWC, {"fisher": True, "importance_samples": None}),  # an unquoted YAML true is the "true" Fisher
    (TAK, {"alpha_merging": "one", "train_percent": 64, "frozen_head": {"_target_": "my_lab.Weights"}}),
    (TAK, {"alpha_merging": 0.5, "train_percent": 0.25, "clip_grad_norm": 1}),
    (RotatedBenchmark, {"angles": [0, 45.0], "model_input": {"size": 224}, "root": None}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0, "nesterov": False}),
    (HAT, {"no_such_option": "x"}),  # unknown options are the unknown-option check's to name
]


@pytest.mark.parametrize(("cls", "options"), GOOD_VALUES, ids=[cls.__name__ for cls, _ in GOOD_VALUES])
def test_values_of_the_right_type_pass(cls, options):
    assert option_type_problems("group", cls, options) == []


def test_a_wrong_type_is_reported_once_and_never_reaches_a_range_rule():
    # "abc" >= 1 would raise a TypeError inside the rule; the rule sees the default instead
    problems = problems_with_types_first(
        "algorithm", HAT, {"s_max": "abc", "embedding_clamp": 0}, HAT.config_problems
    )
    assert problems == [
        "algorithm.s_max='abc': must be a number",
        "algorithm.embedding_clamp=0: must be a finite number > 0 (embeddings are clamped to [-value, value])",
    ]
    # a required option with the wrong type: not reported again as missing by the rule
    problems = problems_with_types_first(
        "benchmark",
        PermutedBenchmark,
        {"source": "digits", "num_tasks": "two"},
        PermutedBenchmark.config_problems,
    )
    assert problems == ["benchmark.num_tasks='two': must be an integer"]


# ---- ranges: each class's config_problems, and its constructor refuses alike -------------------------
RANGES = [
    (HAT, {"s_max": 0}, "algorithm.s_max=0"),
    (HAT, {"s_max": math.inf}, "algorithm.s_max=inf"),
    (HAT, {"mask_sparsity_reg_factor": -1}, "algorithm.mask_sparsity_reg_factor=-1"),
    (HAT, {"adjustment_alpha": 1.5}, "algorithm.adjustment_alpha=1.5"),
    (HAT, {"compensation_threshold": 0.0}, "algorithm.compensation_threshold=0.0"),
    (HAT, {"embedding_clamp": -6.0}, "algorithm.embedding_clamp=-6.0"),
    (HAT, {"adjustment_mode": "sometimes"}, "algorithm.adjustment_mode='sometimes'"),
    (HAT, {"mask_sparsity_reg_mode": "both"}, "algorithm.mask_sparsity_reg_mode='both'"),
    (LwF, {"temperature": 0}, "algorithm.temperature=0"),
    (LwF, {"distillation_lambda": -1}, "algorithm.distillation_lambda=-1"),
    (EWC, {"reg_lambda": -1}, "algorithm.reg_lambda=-1"),
    (EWC, {"fisher": "sampled"}, "algorithm.fisher='sampled'"),
    (OnlineEWC, {"gamma": 1.5}, "algorithm.gamma=1.5"),
    (SI, {"xi": 0}, "algorithm.xi=0"),
    (MAS, {"importance_samples": 0}, "algorithm.importance_samples=0"),
    (TAK, {"lora_rank": 0}, "algorithm.lora_rank=0"),
    (TAK, {"lora_rank_attention": -48}, "algorithm.lora_rank_attention=-48"),
    (TAK, {"fisher_norm_scaler": -1.0}, "algorithm.fisher_norm_scaler=-1.0"),
    (TAK, {"fisher_ft_proj_scaler": math.nan}, "algorithm.fisher_ft_proj_scaler=nan"),
    (TAK, {"warmup_steps": -1}, "algorithm.warmup_steps=-1"),
    (TAK, {"clip_grad_norm": -1.0}, "algorithm.clip_grad_norm=-1.0"),
    (TAK, {"fisher_seed": -1}, "algorithm.fisher_seed=-1"),
    (MLP, {"hidden_dims": [-5]}, "backbone.hidden_dims=[-5]"),
    (MLP, {"hidden_dims": [0]}, "backbone.hidden_dims=[0]"),
    (MLP, {"output_dim": 0}, "backbone.output_dim=0"),
    (MLP, {"input_dim": -1}, "backbone.input_dim=-1"),
    (MLP, {"dropout": 1.0}, "backbone.dropout=1.0"),
    (HATMaskMLP, {"hidden_dims": [100, 0]}, "backbone.hidden_dims=[100, 0]"),
    (HATMaskMLP, {"num_tasks": 0}, "backbone.num_tasks=0"),
    (ResNet18, {"in_channels": 0}, "backbone.in_channels=0"),
    (ResNet18, {"norm": "layer"}, "backbone.norm='layer'"),
    (HATMaskResNet18, {"base_width": 0}, "backbone.base_width=0"),
]


@pytest.mark.parametrize(
    ("cls", "options", "words"),
    RANGES,
    ids=[f"{c.__name__}-{','.join(o)}-{i}" for i, (c, o, _) in enumerate(RANGES)],
)
def test_each_range_rule_refuses_its_option(cls, options, words):
    problems = cls.config_problems(options)
    assert len(problems) == 1, problems
    assert problems[0].startswith(words), problems[0]
    assert cls.config_problems({}) == []  # the defaults pass


BACKBONES = [
    (MLP, dict(input_dim=16)),
    (HATMaskMLP, dict(input_dim=16, num_tasks=2)),
    (ResNet18, dict(in_channels=1)),
    (HATMaskResNet18, dict(in_channels=1, num_tasks=2, base_width=2)),
]
BAD_BACKBONE_OPTIONS = {
    MLP: dict(hidden_dims=[0], dropout=1.5),
    HATMaskMLP: dict(hidden_dims=[-5], output_dim=0),
    ResNet18: dict(norm="layer"),
    HATMaskResNet18: dict(base_width=0),
}


@pytest.mark.parametrize(("cls", "valid"), BACKBONES, ids=[cls.__name__ for cls, _ in BACKBONES])
def test_a_backbone_constructor_raises_what_its_rules_say(cls, valid):
    bad = BAD_BACKBONE_OPTIONS[cls]
    with pytest.raises(ConfigError) as refused:
        cls(**{**valid, **bad})
    assert refused.value.problems == cls.config_problems({**valid, **bad})
    assert len(refused.value.problems) == len(bad)


def test_hat_constructor_raises_what_its_rules_say():
    backbone = HATMaskMLP(16, num_tasks=2)
    bad = dict(mask_sparsity_reg_factor=-1.0, embedding_clamp=0.0, adjustment_alpha=2.0)
    with pytest.raises(ConfigError) as refused:
        HAT(backbone, HeadsTIL(backbone.output_dim), torch.optim.SGD, num_tasks=2, **bad)
    assert refused.value.problems == HAT.config_problems(bad, paradigm="til", backbone_type=HATMaskMLP)
    assert len(refused.value.problems) == 3


# ---- the top-level keys (RunOptions) ------------------------------------------------------------------
def test_top_level_keys_are_typed_and_near_misses_named():
    plain = {
        "seed": 2**32,
        "name": "default",
        "plots": "false",
        "save_checkpoints": True,
        "eval": {"zero_shot": "ture"},
        "paths": {"output_dir": "/tmp/run"},
        "plot": True,  # meant plots
        "my_note": "kept",  # a key of one's own is allowed
    }
    problems = run_option_problems(plain)
    assert problems == [
        "plots='false': must be true or false (did you mean false, unquoted?)",
        "eval.zero_shot='ture': must be true or false (did you mean true, unquoted?)",
        "plot is not a key of the config: did you mean plots? (a key of your own needs a name unlike the known ones)",
        "seed=4294967296: must be an integer in [0, 2**32) (outside it Lightning silently draws a random seed)",
    ]
    assert run_option_problems({"seed": 1, "eval": {"zero_shot": False}, "name": 2024}) == []
    assert run_option_problems({}) == ["seed is not set: it must be an integer"]
    assert run_option_problems({"seed": 1, "eval": None}) == ["eval=None: must be a mapping"]


# ---- no false alarm: every shipped config passes the type check ---------------------------------------
RUN_FILLED = ("input_dim", "in_channels", "num_tasks")  # null: the task loop takes them from the benchmark


def _names(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def _type_problems(cfg) -> list[str]:
    plain = OmegaConf.to_container(cfg, resolve=True)
    problems = run_option_problems(plain)
    for group in ("benchmark", "backbone", "paradigm", "algorithm", "optimizer", "lr_scheduler"):
        node = plain.get(group) or {}
        options = {
            key: value
            for key, value in node.items()
            if not key.startswith("_") and not (value is None and key in RUN_FILLED)
        }
        problems += option_type_problems(group, get_class(node["_target_"]), options) if node else []
    return problems


def _shipped_compositions() -> list[list[str]]:
    algorithms, backbones = _names("algorithm"), _names("backbone")
    # one composition per algorithm, each with a backbone too, so that every file is composed once
    paired = [
        [f"algorithm={algorithm}", f"backbone={backbones[i % len(backbones)]}"]
        for i, algorithm in enumerate(algorithms)
    ]
    return [
        *paired,
        ["lr_scheduler=plateau", "optimizer=sgd"],
        *[[f"experiment={e}"] for e in _names("experiment")],
    ]


def test_every_shipped_config_passes_the_type_check():
    compositions = _shipped_compositions()
    assert len(compositions) >= 13 + 1 + 12  # every algorithm and experiment file (and all backbones)
    found = {" ".join(overrides): _type_problems(compose(overrides)) for overrides in compositions}
    assert {name: problems for name, problems in found.items() if problems} == {}


# ---- through the pre-flight check: every problem in one ConfigError -------------------------------------
def test_the_preflight_reports_type_and_range_problems_together(tmp_path):
    cfg = compose(
        [
            "callbacks=none",
            "logger=[]",
            "algorithm=hat",
            "backbone=hat_mlp",
            "save_checkpoints=flase",
            "eval.zero_shot=ture",
            "algorithm.s_max=abc",
            "algorithm.adjustment_mode=hat_randm",
            "backbone.hidden_dims=[0]",
        ],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(ConfigError) as refused:
        preflight(cfg)
    problems = refused.value.problems
    assert len(problems) == 5, problems
    for key in (
        "save_checkpoints='flase'",
        "eval.zero_shot='ture'",
        "algorithm.s_max='abc'",
        "algorithm.adjustment_mode='hat_randm'",
        "backbone.hidden_dims=[0]",
    ):
        assert sum(key in problem for problem in problems) == 1, (key, problems)
    assert "did you mean algorithm.adjustment_mode=hat_random?" in str(refused.value)
