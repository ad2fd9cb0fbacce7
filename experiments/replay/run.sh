#!/usr/bin/env bash
# Replay on Split MNIST, class-incremental (5 tasks x 2 classes), in Buzzega et al. 2020's
# Seq-MNIST protocol as Mammoth runs it: a 784-100-100 MLP (ReLU), plain SGD, batch 10, one epoch
# per task, and each method's learning rate, memory batch size and loss weights from Mammoth's
# utils/best_args.py (seq-mnist; GDumb and ER-ACE are not in that table: see SETTINGS below).
# Buffer sizes 200 and 500, seeds 1 2 3; Finetuning ("SGD" in the paper) and Joint once per seed.
#
# Usage: experiments/replay/run.sh <folder holding MNIST/raw/> [extra clrun overrides...]
#        BENCHMARK=split_cifar10 experiments/replay/run.sh <folder holding cifar-10-batches-py/>
# Then:  python experiments/replay/make_table.py outputs/replay
# Runs already complete in the output folder are skipped; OUT, SEEDS, BUFFERS, ALGORITHMS choose.
set -euo pipefail
root=${1:?usage: run.sh <data folder> [overrides...]}
shift
benchmark=${BENCHMARK:-split_mnist}
out=${OUT:-outputs/replay/$benchmark}

# The papers' networks and protocols: Seq-MNIST, Mammoth's MNISTMLP (784-100-100, then the
# classifier), batch 10, 1 epoch; Seq-CIFAR-10, ResNet-18, batch 32, 50 epochs.
common=(benchmark=$benchmark paradigm=cil benchmark.root="$root" optimizer=sgd)
case $benchmark in
  split_mnist) common+=(backbone=mlp "backbone.hidden_dims=[100]" backbone.output_dim=100
    benchmark.batch_size=10 trainer.max_epochs=1) ;;
  split_cifar10) common+=(backbone=resnet18 benchmark.batch_size=32 trainer.max_epochs=50) ;;
  *) echo "run.sh: BENCHMARK must be split_mnist or split_cifar10" >&2; exit 2 ;;
esac

# Per method and buffer: Mammoth's best_args (lr, minibatch_size = the memory batch, alpha,
# beta, weight decay). ER-ACE takes ER's (its loss is ER's with the current batch's CE made
# asymmetric); GDumb its own config (it trains on the memory alone, after each task), at the
# benchmark's SGD learning rate.
settings() {  # algorithm buffer -> overrides
  case "$benchmark:$1:$2" in
    split_mnist:finetuning:* | split_mnist:joint:* | split_mnist:gdumb:*) echo "optimizer.lr=0.03" ;;
    split_mnist:er:200 | split_mnist:er_ace:200) echo "optimizer.lr=0.01 algorithm.memory_batch_size=10" ;;
    split_mnist:er:500 | split_mnist:er_ace:500) echo "optimizer.lr=0.1 algorithm.memory_batch_size=10" ;;
    split_mnist:agem:*) echo "optimizer.lr=0.1 algorithm.memory_batch_size=128" ;;
    split_mnist:icarl:*) echo "optimizer.lr=0.1 algorithm.memory_batch_size=10" ;;
    split_mnist:der:200) echo "optimizer.lr=0.03 algorithm.memory_batch_size=10 algorithm.alpha=0.2" ;;
    split_mnist:der:500) echo "optimizer.lr=0.03 algorithm.memory_batch_size=128 algorithm.alpha=1.0" ;;
    split_mnist:derpp:200) echo "optimizer.lr=0.03 algorithm.memory_batch_size=128 algorithm.alpha=0.2 algorithm.beta=1.0" ;;
    split_mnist:derpp:500) echo "optimizer.lr=0.03 algorithm.memory_batch_size=10 algorithm.alpha=1.0 algorithm.beta=0.5" ;;
    split_cifar10:finetuning:* | split_cifar10:joint:* | split_cifar10:gdumb:*) echo "optimizer.lr=0.1" ;;
    split_cifar10:er:* | split_cifar10:er_ace:*) echo "optimizer.lr=0.1 algorithm.memory_batch_size=32" ;;
    split_cifar10:agem:*) echo "optimizer.lr=0.03 algorithm.memory_batch_size=32" ;;
    split_cifar10:icarl:*) echo "optimizer.lr=0.1 optimizer.weight_decay=0.00001" ;;
    split_cifar10:der:*) echo "optimizer.lr=0.03 algorithm.memory_batch_size=32 algorithm.alpha=0.3" ;;
    split_cifar10:derpp:200) echo "optimizer.lr=0.03 algorithm.memory_batch_size=32 algorithm.alpha=0.1 algorithm.beta=0.5" ;;
    split_cifar10:derpp:500) echo "optimizer.lr=0.03 algorithm.memory_batch_size=32 algorithm.alpha=0.2 algorithm.beta=0.5" ;;
  esac
}

run() {  # name seed overrides...
  local name=$1 seed=$2
  shift 2
  local dir="$out/$name/seed_$seed"
  [ -f "$dir/results/summary.json" ] && grep -q '"tasks_done": 5' "$dir/results/summary.json" && return
  clrun "${common[@]}" seed=$seed name=replay_$name hydra.run.dir="$dir" "$@"
}

for seed in ${SEEDS:-1 2 3}; do
  for algorithm in ${ALGORITHMS:-finetuning joint er der derpp agem icarl gdumb er_ace}; do
    case $algorithm in
      finetuning | joint)
        # shellcheck disable=SC2046
        run "$algorithm" "$seed" algorithm=$algorithm $(settings "$algorithm" -) "$@" ;;
      *)
        for buffer in ${BUFFERS:-200 500}; do
          # shellcheck disable=SC2046
          run "${algorithm}_$buffer" "$seed" algorithm=$algorithm algorithm.memory_size=$buffer \
            $(settings "$algorithm" "$buffer") "$@"
        done ;;
    esac
  done
done
