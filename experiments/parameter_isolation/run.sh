#!/usr/bin/env bash
# HAT, AdaHAT, PackNet, WSN, CBP, Finetuning and Fix on 10-task Permuted MNIST (TIL), 3 seeds, in
# the hat_pmnist setting (784-256-100 MLP, 64-d features, batch 128, the shipped optimiser and
# epochs): HAT and AdaHAT on the mask MLP of experiment=hat_pmnist, the others on the plain MLP of
# experiment=finetuning_pmnist with the algorithm swapped. Every method keeps its config's defaults.
# Usage: experiments/parameter_isolation/run.sh <folder holding MNIST/raw/> [extra clrun overrides...]
# Then:  python experiments/hat_pmnist/make_table.py outputs/parameter_isolation
set -euo pipefail
root=${1:?usage: run.sh <folder holding MNIST/raw/> [overrides...]}
shift
out=${OUT:-outputs/parameter_isolation}
for seed in ${SEEDS:-1 2 3}; do
  for algorithm in ${ALGORITHMS:-hat adahat packnet wsn cbp finetuning fix}; do
    case $algorithm in
      hat | finetuning | fix) experiment=(experiment=${algorithm}_pmnist) ;;
      adahat) experiment=(experiment=hat_pmnist algorithm=adahat name=adahat_pmnist) ;;
      *) experiment=(experiment=finetuning_pmnist algorithm=$algorithm name=${algorithm}_pmnist) ;;
    esac
    [ -f "$out/$algorithm/seed_$seed/results/summary.json" ] && grep -q '"tasks_done": 10' "$out/$algorithm/seed_$seed/results/summary.json" && continue
    clrun "${experiment[@]}" benchmark.root="$root" seed=$seed \
      hydra.run.dir="$out/$algorithm/seed_$seed" "$@"
  done
done
