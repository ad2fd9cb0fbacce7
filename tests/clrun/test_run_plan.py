"""The pre-flight check builds what the run needs once and hands it over: nothing is loaded or decided twice."""

from __future__ import annotations

import functools

import pytest

from clcore.benchmarks import SplitBenchmark
from clcore.clrun import ConfigError, RunPlan, preflight, resume, run_sequence

SPLIT_TINY = [
    "benchmark=split_digits",
    "benchmark.source=tiny6",
    "trainer.max_epochs=1",
    "backbone.hidden_dims=[16]",
]


def test_a_registered_source_needs_no_other_edit_and_its_class_count_rules_the_split(
    tiny_source, make_config
):
    with pytest.raises(ConfigError, match="= 8 classes, but tiny6 has 6"):
        preflight(make_config(*SPLIT_TINY, "benchmark.num_tasks=4"))
    plan = preflight(make_config(*SPLIT_TINY, "benchmark.num_tasks=3"))
    assert isinstance(plan, RunPlan) and plan.resume_from is None
    assert plan.benchmark.data.name == "tiny6" and plan.benchmark.classes_of(2) == [4, 5]
    assert tiny_source.load.calls == 1  # read once (to name missing files), kept for the second check


def test_a_run_loads_its_benchmark_once_and_plans_its_resumption_once(tiny_source, make_config, monkeypatch):
    built, plans = [], []
    original_init, original_plan = SplitBenchmark.__init__, resume.resume_plan

    @functools.wraps(original_init)
    def counting_init(self, *args, **kwargs):
        built.append(self)
        original_init(self, *args, **kwargs)

    def counting_plan(cfg, data_fingerprint=None):
        plans.append(cfg)
        return original_plan(cfg, data_fingerprint)

    monkeypatch.setattr(SplitBenchmark, "__init__", counting_init)
    monkeypatch.setattr(resume, "resume_plan", counting_plan)
    cfg = make_config(*SPLIT_TINY, "benchmark.num_tasks=3")
    results = run_sequence(cfg)
    assert results.tasks_done == 3
    # the plan is made by the pre-flight check and made again once the folder's lock is held (a run
    # that held the folder may have finished in between): two cheap reads, never a second data load
    assert len(built) == 1 and tiny_source.load.calls == 1 and len(plans) == 2
    # the hash the plan carried is the one in the checkpoints
    assert resume.config_hash(cfg) == preflight(cfg).config_hash


def test_the_plan_names_the_checkpoint_to_continue_from(make_config):
    cfg = make_config("benchmark.num_tasks=2", "trainer.max_epochs=1")
    run_sequence(cfg)
    plan = preflight(cfg)
    assert plan.resume_from is not None and plan.resume_from.name == "task_2.ckpt"
    assert plan.benchmark.num_tasks == 2 and plan.benchmark.data is not None
