#!/usr/bin/env bash
# fp32 against bf16 autocast (and torch.compile) per phase on this CPU: the numbers behind trainer.precision=auto
# and compile=false (docs/benchmarks.md, "bf16 and torch.compile on the CPU").
#
#   GNR650_DATA_DIR=<data> GNR650_WEIGHTS_DIR=<weights> bash scripts/cpu_precision_benchmarks.sh [results.md]
#
# Each step is one `gnr650-bench --phases` command (recorded as its own section of results.md, default
# docs/benchmarks.md). Run it on an otherwise idle machine: on 2 cores another process slows oneDNN's bf16
# kernels far more than its share. STEPS picks steps; a 10% EuroSAT subset is enough for images/s.
set -uo pipefail
cd "$(dirname "$0")/.."
MD=${1:-docs/benchmarks.md}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-"resnet18 ti224_full ti224_top4 ti224_lora ti112_full ti224_eval512"}
VIT=(experiment=eurosat-vit-full dataset.fraction=0.1)

bench() { echo "[cpu_precision_benchmarks] gnr650-bench $*"; "$PYTHON" scripts/benchmark.py "$@" --out "$MD"; }

for step in $STEPS; do
  case $step in
    resnet18) bench experiment=overfit-resnet18 --phases --images 512 --repeats 2 --compile ;;
    ti224_full) bench "${VIT[@]}" finetune=full --phases --images 128 --repeats 2 --compile ;;
    ti224_top4) bench "${VIT[@]}" finetune=top4 --phases --images 256 --repeats 2 ;;
    ti224_lora) bench "${VIT[@]}" finetune=lora --phases --images 128 --repeats 2 ;;
    ti112_full) bench "${VIT[@]}" finetune=full model.img_size=112 --phases --images 256 --repeats 2 ;;
    ti224_eval512) bench "${VIT[@]}" finetune=frozen eval_batch_size=512 --phases --images 512 --repeats 2 ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
