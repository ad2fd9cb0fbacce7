"""TAK's option rules live in ``TAK.config_problems``: the constructor raises exactly what it returns
(the pre-flight check reads the same method), every problem at once, and the packaged configs pass."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from clcore.algorithms.tak import TAK
from clcore.backbones.mlp import MLP
from clcore.config_rules import ConfigError
from tests.library.tak.test_tak import mlp_tak

# (options, words the problem must contain); each case breaks exactly one rule.
BAD_OPTIONS = [
    ({"merging": "average"}, ["algorithm.merging='average' is not a merge method", "ties"]),
    ({"alpha_merging": -0.5}, ["algorithm.alpha_merging=-0.5", "'one'"]),
    ({"alpha_merging": "two"}, ["algorithm.alpha_merging='two'", "'one'"]),
    ({"alpha_merging": math.inf}, ["algorithm.alpha_merging=inf"]),
    ({"fisher_cache": "hf://someone/fisher"}, ["algorithm.fisher_cache='hf://someone/fisher'", "remote"]),
    ({"fisher_cache": "https://example.org/kfac"}, ["algorithm.fisher_cache", "remote", "local folder"]),
    ({"fisher_task_id": 2}, ["algorithm.fisher_task_id=2", "0..1", "0-based"]),  # task indices 0, 1
    ({"fisher_task_id": -1}, ["algorithm.fisher_task_id=-1", "0..1"]),
    ({"train_percent": 1.5}, ["algorithm.train_percent=1.5", "(0, 1]"]),
    ({"train_percent": 0}, ["algorithm.train_percent=0", ">= 1"]),
    ({"train_percent": "all"}, ["algorithm.train_percent='all'"]),
    ({"fisher_num_samples_expectation": -1}, ["algorithm.fisher_num_samples_expectation=-1", ">= 0"]),
    ({"fp_precision": "fp16"}, ["algorithm.fp_precision='fp16'", "fp32, fp64"]),
    ({"virtual_bs_n": 0}, ["algorithm.virtual_bs_n=0", ">= 1"]),
    ({"virtual_bs_n": 1.5}, ["algorithm.virtual_bs_n=1.5"]),
    ({"scheduler": "linear"}, ["algorithm.scheduler='linear'", "cosine, cosine_plus, decay, step, none"]),
    ({"tangent_of": "normalized"}, ["algorithm.tangent_of='normalized'", "normalised, raw"]),
    ({"tangent_of": None}, ["algorithm.tangent_of=None", "normalised, raw"]),
    ({"kfac_token_mode": "mean"}, ["algorithm.kfac_token_mode='mean'", "expand, reduce"]),
    ({"merge_convention": "ilharco"}, ["algorithm.merge_convention='ilharco'", "mammoth, paper"]),
    (
        {"merging": "iso_cts", "iso_cts_common_fraction": 1.5},
        ["algorithm.iso_cts_common_fraction=1.5", "[0, 1]"],
    ),
    ({"seed": -3}, ["algorithm.seed=-3", "integer >= 0"]),
    (
        {"load_task_vectors": True, "load_path": "runs/1_seq-cifar100_args.json"},
        ["is a reference (Mammoth) run", "algorithm.frozen_head"],
    ),
    ({"reg_lambda": -1.0}, ["algorithm.reg_lambda=-1.0", ">= 0"]),
    ({"reg_lambda": math.nan}, ["algorithm.reg_lambda=nan"]),
    ({"merging": "dare", "dare_p": 1.0}, ["algorithm.dare_p=1.0", "[0, 1)"]),
    ({"merging": "ties", "ties_k": 0.0}, ["algorithm.ties_k=0.0", "(0, 1]"]),
    ({"alpha_sweep_step": 0.0}, ["algorithm.alpha_sweep_step=0.0", "step > 0"]),
    ({"alpha_sweep_start": 1.0, "alpha_sweep_end": 0.5}, ["algorithm.alpha_sweep_end=0.5", "end >= start"]),
    ({"load_task_vectors": True}, ["algorithm.load_task_vectors=true needs algorithm.load_path"]),
    (
        {"lr_scheduler": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)},
        ["lr_scheduler=null"],
    ),
]


@pytest.mark.parametrize(
    ("options", "words"),
    BAD_OPTIONS,
    ids=[",".join(options) + f"-{i}" for i, (options, _) in enumerate(BAD_OPTIONS)],
)
def test_each_rule_is_refused_identically_by_config_problems_and_the_constructor(tmp_path, options, words):
    # mlp_tak's own options (a local cache, load_fisher, train_percent) are valid; the case overrides them.
    given = {"load_fisher": True, "fisher_cache": str(tmp_path), "train_percent": 0.5, **options}
    problems = TAK.config_problems({"num_tasks": 2, **given}, paradigm="til", backbone_type=MLP)
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], f"{word!r} not in {problems[0]!r}"
    with pytest.raises(ConfigError) as refused:
        mlp_tak(2, tmp_path, **options)
    assert refused.value.problems == problems


def test_the_constructor_reports_every_problem_at_once(tmp_path):
    bad = {"merging": "average", "alpha_merging": 0, "virtual_bs_n": 0, "load_task_vectors": True}
    with pytest.raises(ConfigError) as refused:
        mlp_tak(2, "hf://someone/fisher", **bad)
    message = str(refused.value)
    assert message.startswith("5 problem(s) with the configuration; nothing was trained:")
    for key in ("merging", "alpha_merging", "virtual_bs_n", "load_task_vectors", "fisher_cache"):
        assert f"algorithm.{key}" in message


def test_the_new_choice_options_are_refused_all_at_once_and_their_values_pass(tmp_path):
    bad = {"tangent_of": "linear", "kfac_token_mode": "sum", "merge_convention": "ties", "scheduler": "warm"}
    problems = TAK.config_problems({"num_tasks": 2, "fisher_task_id": 2, **bad})
    assert len(problems) == 5, problems
    for key in (*bad, "fisher_task_id"):
        assert sum(f"algorithm.{key}=" in problem for problem in problems) == 1, key
    with pytest.raises(ConfigError) as refused:
        mlp_tak(2, tmp_path, fisher_task_id=2, **bad)
    assert refused.value.problems == TAK.config_problems(
        {
            "num_tasks": 2,
            "load_fisher": True,
            "fisher_cache": str(tmp_path),
            "train_percent": 0.5,
            "fisher_task_id": 2,
            **bad,
        }
    )
    good = (
        [{"tangent_of": value} for value in ("normalised", "raw")]
        + [{"kfac_token_mode": value} for value in ("expand", "reduce")]
        + [{"merge_convention": value} for value in ("mammoth", "paper")]
        + [{"scheduler": value} for value in ("cosine", "cosine_plus", "decay", "step", "none")]
    )
    for options in good:
        assert TAK.config_problems({"num_tasks": 2, **options}) == [], options
    algorithm = mlp_tak(2, tmp_path, tangent_of="raw", kfac_token_mode="reduce", merge_convention="paper")
    assert (algorithm.tangent_of, algorithm.kfac_token_mode, algorithm.merge_convention) == (
        "raw",
        "reduce",
        "paper",
    )
    defaults = mlp_tak(2, tmp_path)  # the reference's computation by default
    assert (defaults.tangent_of, defaults.kfac_token_mode, defaults.merge_convention) == (
        "normalised",
        "expand",
        "mammoth",
    )


def test_absent_options_take_the_constructor_defaults_and_those_pass():
    assert TAK.config_problems({}) == []
    assert TAK.config_problems({"fisher_task_id": 7}) == []  # without num_tasks only >= 0 is checked
    assert TAK.config_problems({"num_tasks": 3, "fisher_task_id": 0}) == []  # 0 is the first task
    assert TAK.config_problems({"num_tasks": 3, "fisher_task_id": 2}) == []  # and 2 the last
    assert TAK.config_problems({"load_task_vectors": True, "load_path": "runs/a/task_vectors"}) == []


@pytest.mark.parametrize(
    "overrides",
    [["algorithm=tak"], ["experiment=tak_small_mnist"], ["experiment=tak_split_cifar100_clip"]],
)
def test_the_packaged_configs_follow_the_rules(make_config, overrides):
    cfg = make_config(*overrides)
    options = OmegaConf.to_container(cfg.algorithm, resolve=True)
    paradigm, backbone = get_class(cfg.paradigm._target_).paradigm, get_class(cfg.backbone._target_)
    assert TAK.config_problems(options, paradigm=paradigm, backbone_type=backbone) == []
    assert TAK.config_problems({**options, "merging": "median"}) != []  # the options do reach the rules


def test_preflight_reads_the_rules_that_depend_on_the_run(make_config):
    """The task count and the lr_scheduler group reach TAK's rules before anything is built."""
    from clcore.clrun import preflight

    cfg = make_config(
        "algorithm=tak",
        "benchmark=split_digits",
        "benchmark.num_tasks=2",
        "algorithm.fisher_task_id=3",
        "lr_scheduler=plateau",
    )
    with pytest.raises(ConfigError) as refused:
        preflight(cfg)
    problems = "\n".join(refused.value.problems)
    assert "algorithm.fisher_task_id=3: must be a task index in 0..1" in problems
    assert "set lr_scheduler=null" in problems
    assert not Path(cfg.paths.output_dir, "config.yaml").exists()  # refused before anything was written


def test_the_options_reach_the_factors_and_the_merge(tmp_path):
    """kfac_token_mode reaches the factor store (and its cache key); the merge convention, the run
    seed (DARE's masks) and Iso-CTS's share reach every merge TAK makes."""
    algorithm = mlp_tak(
        2,
        tmp_path,
        kfac_token_mode="reduce",
        merge_convention="paper",
        seed=7,
        merging="dare",
        iso_cts_common_fraction=0.6,
    )
    assert algorithm.factor_store.token_mode == "reduce"
    assert algorithm._merge_conventions == {"convention": "paper", "seed": 7, "common_space_fraction": 0.6}
