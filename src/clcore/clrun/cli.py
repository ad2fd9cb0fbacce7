"""``clrun``: the Hydra entry point. ``clrun --help`` lists the config groups."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="pkg://clcore.configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here so that `clrun --help` and config errors answer before torch/lightning load.
    from clcore.clrun.task_loop import run_sequence

    results = run_sequence(cfg)
    # The return value is what Hydra sweepers (Optuna) optimise: the final average accuracy.
    return results.summary()["average_accuracy"]


if __name__ == "__main__":
    main()
