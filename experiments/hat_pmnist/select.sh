#!/usr/bin/env bash
# How hat_pmnist's optimiser and epochs were chosen: HAT on 10-task Permuted MNIST, seed 1, scored on
# the validation split (benchmark.eval_split=val: the accuracy matrix is computed on the 10% of the
# training images held out, never on the test images). The rows of experiments/hat_pmnist/README.md.
# Usage: experiments/hat_pmnist/select.sh <folder holding MNIST/raw/>
# Then:  python experiments/hat_pmnist/make_table.py outputs/hat_pmnist_selection
set -euo pipefail
root=${1:?usage: select.sh <folder holding MNIST/raw/>}
out=${OUT:-outputs/hat_pmnist_selection}
run() {
  name=$1
  shift
  clrun experiment=hat_pmnist benchmark.root="$root" benchmark.eval_split=val seed=1 \
    hydra.run.dir="$out/$name/seed_1" "$@"
}
run adam_1e-3_e5 optimizer=adam optimizer.lr=0.001 trainer.max_epochs=5  # the CLArena setting
run sgd_0.05_e10 optimizer=sgd optimizer.lr=0.05 optimizer.momentum=0.0 trainer.max_epochs=10  # the HAT paper's rate
for lr in 0.01 0.02; do
  run "sgdm_${lr}_e5" optimizer=sgd optimizer.lr=$lr optimizer.momentum=0.9 trainer.max_epochs=5
done
for lr in 0.01 0.02 0.05 0.1; do
  run "sgdm_${lr}_e10" optimizer=sgd optimizer.lr=$lr optimizer.momentum=0.9 trainer.max_epochs=10
done
