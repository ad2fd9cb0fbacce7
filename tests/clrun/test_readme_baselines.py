"""The README's baseline commands, run as written (with tiny overrides appended)."""

import re
import shlex
from pathlib import Path

import pytest

from clcore.clrun import run_sequence

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = ["benchmark.num_tasks=2", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]


def _baseline_commands() -> list[list[str]]:
    section = README.read_text().split("## Baselines and reference rows", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"^clrun (.+?)(?:\s+#.*)?$", section, flags=re.MULTILINE)
    return [shlex.split(line) for line in lines]


def test_the_section_lists_every_baseline():
    algorithms = {
        arg.split("=", 1)[1] for args in _baseline_commands() for arg in args if arg.startswith("algorithm=")
    }
    assert algorithms == {"ewc", "online_ewc", "si", "mas", "l2", "lwf", "joint", "independent", "random"}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", _baseline_commands(), ids=lambda args: " ".join(args))
def test_readme_baseline_command_runs(make_config, overrides):
    results = run_sequence(make_config(*overrides, *TINY))
    assert results.tasks_done == 2
    assert 0.0 <= results.summary()["average_accuracy"] <= 1.0
