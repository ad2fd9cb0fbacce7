#!/usr/bin/env bash
# Baselines on Split MNIST (TIL, DIL, CIL) and 10-task Permuted MNIST (TIL, DIL):
# Finetuning, Joint, EWC, online EWC, SI, MAS, L2, LwF, seeds 1-3.
#
# Usage: experiments/baselines/run.sh <mnist root> select|final|all
#   select: grid of each method's coefficient per scenario (benchmark x paradigm), seed 1, on a
#           *selection root* whose "test" files are held-out training images (selection_root.py);
#           select.py then writes experiments/baselines/selected.json.
#   final:  every method x scenario x seed with the coefficients selected for that scenario.
#   SCENARIOS="split_mnist:til ..." restricts either stage to some scenarios, METHODS="mas lwf"
#   the select stage to some methods.
# Then:   python experiments/baselines/make_table.py "$OUT/final"
# Every clrun call is a Hydra sweep (one process, one aggregate.{csv,json} per folder).
set -euo pipefail
root=${1:?usage: run.sh <folder holding MNIST/raw/> select|final|all}
stage=${2:-all}
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-outputs/baselines}
clrun=${CLRUN:-clrun}
python=${PYTHON:-python}
selection_root=${SELECTION_ROOT:-$out/mnist-selection}

# Shared by every run: Adam 1e-3 (optimizer default), batch 128 (benchmark default), the default
# MLP 784-256-100-64; no checkpoints or plots (speed). Epochs per task: per benchmark, below.
common=(trainer.enable_progress_bar=false save_checkpoints=false
  callbacks.result_plots=null callbacks.learning_curves=null hydra.callbacks.sweep_aggregate.plot=false
  optimizer=adam optimizer.lr=1e-3 benchmark.batch_size=128)
split_mnist=(benchmark=split_mnist trainer.max_epochs=5)
permuted_mnist=(benchmark=permuted_mnist trainer.max_epochs=2)

methods=(finetuning joint ewc online_ewc si mas l2 lwf)
scenarios=${SCENARIOS:-split_mnist:til split_mnist:dil split_mnist:cil permuted_mnist:til permuted_mnist:dil}
# The coefficient each method is tuned on, and its grid (decades) per benchmark. Permuted MNIST's
# grids sit lower: ten tasks of ten classes sum nine earlier penalties, each with a larger
# importance, so Split MNIST's values freeze the network there (README: "Permuted MNIST TIL").
declare -A key=([ewc]=reg_lambda [online_ewc]=reg_lambda [si]=reg_lambda [mas]=reg_lambda
  [l2]=reg_lambda [lwf]=distillation_lambda)
declare -A grid_split_mnist=([ewc]=1e1,1e3,1e5,1e7 [online_ewc]=1e1,1e3,1e5,1e7 [si]=0.1,1,10,100
  [mas]=0.1,1,10,100 [l2]=0.01,0.1,1,10 [lwf]=0.1,1,3,10)
declare -A grid_permuted_mnist=([ewc]=1e0,1e1,1e2,1e3 [online_ewc]=1e0,1e1,1e2,1e3 [si]=0.01,0.1,1,10
  [mas]=0.001,0.01,0.1,1,10 [l2]=0.001,0.01,0.1,1 [lwf]=0.3,1,3,10,30)
# Split MNIST DIL's best values sat at the top of Split MNIST's grids: one decade more there.
declare -A grid_split_mnist_dil=([ewc]=1e1,1e3,1e5,1e7,1e9 [online_ewc]=1e1,1e3,1e5,1e7,1e9
  [si]=0.1,1,10,100,1000 [mas]=0.1,1,10,100 [l2]=0.01,0.1,1,10 [lwf]=0.1,1,3,10,30)
# Fixed per-method options: importance (Fisher / MAS) from each task's first 256 training
# samples (true Fisher, exact over the classes), for time; online EWC's gamma stays 1.0.
declare -A extra=([ewc]=algorithm.importance_samples=256 [online_ewc]=algorithm.importance_samples=256
  [mas]=algorithm.importance_samples=256)

if [[ $stage == select || $stage == all ]]; then
  # made once (concurrent select stages read it)
  [[ -f $selection_root/MNIST/raw/t10k-labels-idx1-ubyte ]] \
    || "$python" "$here/selection_root.py" --src "$root" --dst "$selection_root" --held-out 1600
  for scenario in $scenarios; do
    benchmark=${scenario%:*} paradigm=${scenario#*:}
    grid_name="grid_${benchmark}_${paradigm}"  # a scenario's own grid, else its benchmark's
    declare -p "$grid_name" &>/dev/null || grid_name="grid_$benchmark"
    declare -n bench="$benchmark" grid="$grid_name"
    for method in "${!grid[@]}"; do
      [[ -n ${METHODS:-} && " $METHODS " != *" $method "* ]] && continue  # METHODS="mas lwf": only these
      $clrun -m "${common[@]}" "${bench[@]}" benchmark.root="$selection_root" seed=1 \
        paradigm="$paradigm" algorithm="$method" "algorithm.${key[$method]}=${grid[$method]}" ${extra[$method]:-} \
        hydra.sweep.dir="$out/select/$benchmark/$method/$paradigm"
    done
  done
  "$python" "$here/select.py" "$out/select" --write "$here/selected.json"
fi

if [[ $stage == final || $stage == all ]]; then
  # selected.json: {"selected": {"<benchmark>": {"<paradigm>": {"ewc": 1000.0, ...}}}}: each
  # scenario runs with the values chosen on its own validation data.
  selected() { "$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['selected'][sys.argv[2]][sys.argv[3]][sys.argv[4]])" \
    "$here/selected.json" "$1" "$2" "$3"; }
  for scenario in $scenarios; do
    benchmark=${scenario%:*} paradigm=${scenario#*:}
    declare -n bench="$benchmark"
    for method in "${methods[@]}"; do
      tuned=()
      [[ -n ${key[$method]:-} ]] && tuned=("algorithm.${key[$method]}=$(selected "$benchmark" "$paradigm" "$method")")
      $clrun -m "${common[@]}" "${bench[@]}" benchmark.root="$root" seed=1,2,3 \
        paradigm="$paradigm" algorithm="$method" "${tuned[@]}" ${extra[$method]:-} \
        hydra.sweep.dir="$out/final/${benchmark}_${paradigm}/$method"
    done
  done
fi

# run.sh - sweep_check: issue 17's one-sweep check on Split Digits (24 jobs, one aggregate; no MNIST needed).
if [[ $stage == sweep_check ]]; then
  $clrun -m algorithm=ewc,si,mas,lwf paradigm=til,cil seed=1,2,3 benchmark=split_digits trainer.max_epochs=1 \
    trainer.enable_progress_bar=false hydra.sweep.dir="$out/sweep_check"
fi

# run.sh <mnist root> check_pmnist_ewc: EWC's lambda on Permuted MNIST TIL, on the selection root
# (validation data), seed 1: is the lambda tuned on Split MNIST too strong for 10 permutations?
if [[ $stage == check_pmnist_ewc ]]; then
  $clrun -m "${common[@]}" "${permuted_mnist[@]}" benchmark.root="$selection_root" seed=1 paradigm=til \
    algorithm=ewc algorithm.reg_lambda=1e2,1e3 ${extra[ewc]} hydra.sweep.dir="$out/check/permuted_mnist_til_ewc"
fi
