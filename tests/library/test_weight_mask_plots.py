"""PackNet's and WSN's mask plot: drawn from the stored masks, its capacity curve is the run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from clcore.callbacks import WeightMaskPlots
from clcore.clrun.task_loop import run_sequence


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["packnet", "wsn"])
def test_the_plot_shows_each_tasks_share_and_the_capacity_the_run_reports(make_config, algorithm):
    cfg = make_config(f"algorithm={algorithm}", "benchmark.num_tasks=3", "trainer.max_epochs=1")
    captured = {}

    class Keep(WeightMaskPlots):  # the callback's own numbers, from the algorithm it saw
        def on_sequence_end(self, trainer, algorithm, results=None) -> None:
            captured["shares"] = self.shares(algorithm, results.tasks_done)
            super().on_sequence_end(trainer, algorithm, results)

    results = run_sequence(cfg, extra_callbacks=[Keep()])
    used, capacity = captured["shares"]
    assert capacity == pytest.approx(results.extra["capacity"])  # the summary's capacity, task by task
    assert len(used) == 3 and all(0 < share <= 1 for row in used for share in row)
    if algorithm == "wsn":  # every subnetwork is the top-c of each layer
        assert all(share == pytest.approx(0.5, abs=0.01) for row in used for share in row)
    else:  # PackNet's task t uses the weights of tasks 1..t: more with every task
        assert all(later >= earlier for a, b in zip(used, used[1:]) for earlier, later in zip(a, b))
    assert (Path(cfg.paths.output_dir) / "plots" / "weight_masks.png").is_file()
