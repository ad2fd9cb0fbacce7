"""An algorithm that needs a kind of backbone gets the matching version of the configured one:
``clrun algorithm=hat`` runs HAT on the mask version of the default MLP, same sizes."""

from __future__ import annotations

import pytest

from clcore.clrun.checks import preflight
from clcore.clrun.construction import use_backbone_the_algorithm_needs
from clcore.clrun.task_loop import run_sequence
from clcore.config_rules import ConfigError


def test_hat_with_the_default_mlp_gets_the_mask_mlp_of_the_same_sizes(make_config):
    cfg = make_config("algorithm=hat", "backbone.hidden_dims=[32,16]", "backbone.dropout=0.1")
    said = use_backbone_the_algorithm_needs(cfg)
    assert said and "HAT" in said and "MLP" in said and "HATMaskMLP" in said
    assert cfg.backbone._target_ == "clcore.backbones.hat_mlp.HATMaskMLP"
    assert list(cfg.backbone.hidden_dims) == [32, 16] and cfg.backbone.dropout == 0.1
    assert cfg.backbone.output_dim == 64 and "batch_norm" not in cfg.backbone
    assert use_backbone_the_algorithm_needs(cfg) is None  # once is enough: it fits now


def test_the_resnet_becomes_the_mask_resnet(make_config):
    cfg = make_config("algorithm=hat", "backbone=resnet18")
    assert use_backbone_the_algorithm_needs(cfg)
    assert cfg.backbone._target_ == "clcore.backbones.hat_resnet.HATMaskResNet18"


@pytest.mark.parametrize(
    "overrides",
    [["backbone.batch_norm=true"], ["backbone=resnet18", "backbone.norm=group"], ["algorithm=finetuning"]],
    ids=["mlp-with-batch-norm", "resnet-with-group-norm", "no-requirement"],
)
def test_nothing_changes_where_there_is_no_matching_version_or_no_need(make_config, overrides):
    cfg = make_config("algorithm=hat", *overrides)
    before = dict(cfg.backbone)
    assert use_backbone_the_algorithm_needs(cfg) is None
    assert dict(cfg.backbone) == before


def test_a_backbone_without_a_mask_version_is_still_refused_by_the_preflight_check(make_config):
    cfg = make_config("algorithm=hat", "backbone.batch_norm=true")
    assert use_backbone_the_algorithm_needs(cfg) is None
    with pytest.raises(ConfigError, match="needs a backbone that is a HATMaskBackbone"):
        preflight(cfg)


@pytest.mark.slow
def test_clrun_algorithm_hat_runs_with_no_other_override(make_config):
    cfg = make_config("algorithm=hat", "benchmark.num_tasks=2", "trainer.max_epochs=1")
    results = run_sequence(cfg)
    assert results.tasks_done == 2 and results.summary()["bwt"] == 0.0
