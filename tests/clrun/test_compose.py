"""``compose``: the config ``clrun`` would run, for notebooks and other code."""

from __future__ import annotations

import subprocess
import sys

from hydra.core.global_hydra import GlobalHydra

from clcore.clrun import compose


def test_compose_gives_what_clrun_runs_in_the_folder_asked_for(tmp_path):
    cfg = compose(["experiment=hat_pmnist", "seed=3"], output_dir=tmp_path / "run")
    assert cfg.algorithm._target_ == "clcore.algorithms.HAT" and cfg.seed == 3
    assert cfg.paths.output_dir == str(tmp_path / "run") and "hydra" not in cfg


def test_compose_without_a_folder_uses_clruns_run_folder_and_leaves_hydra_as_it_was():
    GlobalHydra.instance().clear()
    cfg = compose(["name=notebook"])
    assert cfg.paths.output_dir.startswith("outputs/notebook/")
    assert not GlobalHydra.instance().is_initialized()


def test_importing_clrun_loads_neither_torch_nor_lightning():
    check = "import sys, clcore.clrun; bad = [m for m in ('torch', 'lightning') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_another_optimiser_on_top_of_an_experiment_gets_its_own_options(tmp_path):
    """hat_pmnist trains with SGD + momentum; `optimizer=adam` over it must be plain Adam (a
    momentum key merged into Adam's options was refused)."""
    import torch
    from hydra.utils import instantiate

    for experiment in ("hat_pmnist", "finetuning_pmnist", "fix_pmnist"):
        shipped = compose([f"experiment={experiment}"], output_dir=tmp_path / experiment)
        assert (shipped.optimizer.lr, shipped.optimizer.momentum) == (0.05, 0.9)
        cfg = compose([f"experiment={experiment}", "optimizer=adam"], output_dir=tmp_path / experiment)
        optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
        assert isinstance(optimizer, torch.optim.Adam) and "momentum" not in cfg.optimizer
