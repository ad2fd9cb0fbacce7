#!/usr/bin/env bash
# HAT vs Finetuning vs Fix on 10-task Permuted MNIST (TIL), 3 seeds, the configs as shipped.
# Usage: experiments/hat_pmnist/run.sh <mnist root> [extra clrun overrides...]
# Then:  python experiments/hat_pmnist/make_table.py outputs/hat_pmnist_table
set -euo pipefail
root=${1:?usage: run.sh <folder holding MNIST/raw/> [overrides...]}
shift
out=${OUT:-outputs/hat_pmnist_table}
for seed in 1 2 3; do
  for algorithm in hat finetuning fix; do
    clrun experiment=${algorithm}_pmnist benchmark.root="$root" seed=$seed \
      hydra.run.dir="$out/$algorithm/seed_$seed" "$@"
  done
done
