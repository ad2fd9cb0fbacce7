#!/usr/bin/env bash
# HAT against AdaHAT where capacity is tight: the CLArena / AdaHAT-paper setting of hat_pmnist
# (Adam 1e-3, 5 epochs a task), in which HAT's masks stay near their random start and later tasks
# find no free units (experiments/hat_pmnist/README.md). AdaHAT's claim is about this case.
# Usage: experiments/parameter_isolation/run_tight_capacity.sh <folder holding MNIST/raw/>
# Then:  python experiments/hat_pmnist/make_table.py outputs/parameter_isolation_tight
set -euo pipefail
root=${1:?usage: run_tight_capacity.sh <folder holding MNIST/raw/>}
out=${OUT:-outputs/parameter_isolation_tight}
for seed in ${SEEDS:-1 2 3}; do
  for algorithm in hat adahat; do
    clrun experiment=hat_pmnist algorithm=$algorithm optimizer=adam optimizer.lr=0.001 trainer.max_epochs=5 \
      benchmark.root="$root" seed=$seed hydra.run.dir="$out/$algorithm/seed_$seed"
  done
done
