"""The `clrun` entry point as a user meets it: help, any working directory, a non-editable install."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CLRUN = str(Path(sys.executable).with_name("clrun"))
REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_config_groups():
    out = subprocess.run([CLRUN, "--help"], capture_output=True, text=True, check=True).stdout
    for group in (
        "algorithm:",
        "benchmark:",
        "backbone:",
        "paradigm:",
        "experiment:",
        "optimizer:",
        "trainer:",
    ):
        assert group in out, group
    assert "hat_pmnist" in out or "finetuning_pmnist" in out


def test_clrun_runs_from_any_directory(tmp_path):
    out = tmp_path / "out"
    subprocess.run(
        [
            CLRUN,
            "benchmark.num_tasks=2",
            f"hydra.run.dir={out}",
            "trainer.enable_progress_bar=false",
            "plots=true",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["tasks_done"] == 2
    assert (out / "plots" / "acc_matrix.png").is_file()
    # the fast exit (no interpreter teardown) still ran the exit handlers: Hydra's log is flushed
    assert "task 2/2 done" in (out / "cli.log").read_text()


def test_the_fast_exit_runs_the_exit_handlers_and_a_failure_keeps_its_status(tmp_path):
    probe = (
        "import atexit; atexit.register(lambda: print('handler ran'));"
        "from clcore.utils.fast_exit import exit_without_teardown;"
        "print('done', end=' '); exit_without_teardown(); print('never reached')"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (ran.returncode, ran.stdout) == (0, "done handler ran\n")
    # CLCORE_FULL_EXIT=1 (docs/speed.md): the normal exit, the rest of the program runs
    full = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "CLCORE_FULL_EXIT": "1"},
    )
    assert (full.returncode, full.stdout) == (0, "done never reached\nhandler ran\n")
    # a refused config never reaches the fast exit: non-zero, as before
    refused = subprocess.run(
        [CLRUN, "seed=-1", f"hydra.run.dir={tmp_path / 'refused'}"], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "seed=-1" in refused.stderr + refused.stdout


def test_the_fast_exit_shuts_idle_worker_processes_down_at_once():
    """hydra/launcher=parallel leaves joblib's loky workers idle (they wait 300 s for more work);
    the fast exit stops them as a normal exit does, instead of waiting them out."""
    probe = (
        "from joblib import Parallel, delayed;"
        "print(sum(Parallel(n_jobs=2, backend='loky')(delayed(abs)(-i) for i in range(4))), end=' ');"
        "from clcore.utils.fast_exit import exit_without_teardown; exit_without_teardown()"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "6 ")


def test_wheel_ships_the_configs(tmp_path):
    """A non-editable install finds its configs: they are package data inside the wheel."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("clcore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "clcore/configs/config.yaml" in names
    assert "clcore/configs/experiment/finetuning_pmnist.yaml" in names
    # installed into a bare folder (no editable link to this checkout) it composes its configs
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import clcore, hydra; from hydra import compose, initialize_config_module;"
        f"assert clcore.__file__.startswith({str(target)!r}), clcore.__file__;"
        "initialize_config_module('clcore.configs', version_base='1.3').__enter__();"
        "print(compose('config', overrides=['experiment=finetuning_split_mnist']).paradigm._target_)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clcore.heads.HeadsCIL"


def test_the_validation_grid_of_docs_sweeps_runs_as_written(tmp_path):
    """docs/sweeps.md: ``clrun -m benchmark.eval_split=val optimizer.lr=1e-3,1e-2`` (tiny overrides appended)."""
    command = [CLRUN, "-m", "benchmark.eval_split=val", "optimizer.lr=1e-3,1e-2"]
    command += [
        "benchmark.num_tasks=2",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    aggregate = (tmp_path / "sweep" / "aggregate.csv").read_text().splitlines()
    assert len(aggregate) == 3 and all("benchmark.eval_split=val" in row for row in aggregate[1:])


def test_a_clean_run_prints_progress_matrix_and_results_and_no_library_noise(tmp_path):
    """Every logger on (CSV, TensorBoard, wandb offline): no warnings, deprecations or wandb console lines."""
    home = {
        name: str(tmp_path / "wandb_home")
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    }
    done = subprocess.run(
        [CLRUN, "benchmark.num_tasks=2", "logger=many", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **home},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for noise in ("Warning", "warning", "deprecated", "wandb:", "Tip:", "GPU available"):
        assert noise not in output, (noise, output)
    for expected in ("Task 2/2 · epoch 1/1", "accuracy R[i, j] (%)", "average accuracy", "results in"):
        assert expected in output, (expected, output)
