"""The how-to pages' claims, run as written: a new algorithm is one Python file plus one YAML file."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CLRUN = str(Path(sys.executable).with_name("clrun"))
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
TINY = ["benchmark.num_tasks=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def _clrun(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The documented command, ``PYTHONPATH=. clrun hydra.searchpath=[file://my_configs] ...``, in ``folder``."""
    env = {**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1"}
    command = [CLRUN, "hydra.searchpath=[file://my_configs]", *overrides]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def user_folder(tmp_path):
    """A researcher's own folder: the example's two files and nothing of clcore edited."""
    shutil.copy(EXAMPLES / "my_algorithms.py", tmp_path)
    shutil.copytree(EXAMPLES / "my_configs", tmp_path / "my_configs")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["my_algorithms.py", "my_configs/algorithm/l2_anchor.yaml"]
    return tmp_path


def test_documented_algorithm_runs_and_resumes(user_folder):
    done = _clrun(user_folder, "algorithm=l2_anchor", *TINY, "hydra.run.dir=out")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((user_folder / "out" / "results" / "summary.json").read_text())
    assert summary["tasks_done"] == 2 and 0.0 < summary["average_accuracy"] <= 1.0
    # the anchor is in the checkpoint: a rerun in the same folder resumes with nothing left to train
    again = _clrun(user_folder, "algorithm=l2_anchor", *TINY, "hydra.run.dir=out", "resume=true")
    assert again.returncode == 0, again.stderr[-3000:]


def test_documented_rule_is_refused_before_anything_trains(user_folder):
    done = _clrun(user_folder, "algorithm=l2_anchor", "algorithm.strength=-1", *TINY, "hydra.run.dir=bad")
    assert done.returncode != 0
    assert "algorithm.strength=-1: must be >= 0" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (user_folder / "bad" / "results").exists()


def test_documented_inline_target_runs_without_a_config_file(user_folder):
    env = {**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1"}
    command = [CLRUN, "algorithm._target_=my_algorithms.L2Anchor", "+algorithm.strength=0.1"]
    done = subprocess.run(
        [*command, *TINY, "hydra.run.dir=inline"], cwd=user_folder, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = (user_folder / "inline" / "config.yaml").read_text()
    assert "my_algorithms.L2Anchor" in config and "strength: 0.1" in config
