#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one go, for a GPU machine lent for a short time.
#
#   GNR650_DATA_DIR=<data> bash scripts/gpu_benchmarks.sh [results.md]
#
# GNR650_DATA_DIR holds eurosat/2750; a subset from scripts/eurosat_subset.py will do (images/s and the
# ratios do not depend on the set's size; the sweep's fit time is also printed scaled to the full set's
# 16,200 training images). Networks start from random weights (model.pretrained=false): the targets
# were measured so, and timing does not depend on them. Steps run in priority order, each cut off after
# STEP_TIMEOUT seconds (default 240) so that one cannot use up the rest; each gnr650-bench step records
# its section in results.md (default docs/benchmarks.md), the sweep leaves its runs in $SWEEP_DIR.
#
# WHEELS=<folder of .whl>: installs them into /tmp/site first (an offline machine without hydra-core).
# Plumbing check on a CPU: TRAINER=cpu EXTRA="model.img_size=32 dataset.fraction=0.02 batch_size=32" \
#   STEPS="ti_full sweep" bash scripts/gpu_benchmarks.sh /tmp/check.md
set -uo pipefail
cd "$(dirname "$0")/.."
MD=${1:-docs/benchmarks.md}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
TRAINER=${TRAINER:-gpu}
PYTHON=${PYTHON:-python3}
SWEEP_DIR=${SWEEP_DIR:-/tmp/gnr650-gpu-sweep}
STEPS=${STEPS:-"sweep ti_full b16_full b16_full_compiled b16_top4_cached b16_top4_uncached b16_last_run ti_bs512 ti_strategies"}
read -r -a EXTRA <<< "${EXTRA:-}"
export PYTHONUNBUFFERED=1

if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"

COMMON=(trainer="$TRAINER" model.pretrained=false)

bench() {  # bench <overrides...> -- <gnr650-bench options...>
  local overrides=() options=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do overrides+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift && options=("$@")
  echo "[gpu_benchmarks] gnr650-bench ${COMMON[*]} ${overrides[*]} ${EXTRA[*]} ${options[*]}"
  timeout "$STEP_TIMEOUT" "$PYTHON" scripts/benchmark.py "${COMMON[@]}" "${overrides[@]}" "${EXTRA[@]}" \
    --epochs 3 --repeats 2 --out "$MD" "${options[@]}" || echo "[gpu_benchmarks] step failed or timed out (rc $?)"
}

sweep() {  # the four strategies, 10 epochs each; prints each job's fit time and the total
  rm -rf "$SWEEP_DIR"
  timeout "$STEP_TIMEOUT" "$PYTHON" train.py -m experiment=eurosat-vit model=vit_ti16 finetune=last,top4,full,frozen \
    "${COMMON[@]}" trainer.enable_progress_bar=false "${EXTRA[@]}" hydra.sweep.dir="$SWEEP_DIR" \
    || echo "[gpu_benchmarks] sweep failed or timed out (rc $?)"
  "$PYTHON" - "$SWEEP_DIR" <<'EOF'
import json, sys
from pathlib import Path
jobs = sorted(Path(sys.argv[1]).glob("*/results.json"))
runs = [json.loads(p.read_text()) for p in jobs]
total = 0.0
for path, r in zip(jobs, runs):
    fit, n = (r.get("timing") or {}).get("fit_s") or 0.0, r["data"]["sizes"]["train"]
    total += fit
    analysis = path.parent / "artifacts" / "analysis.json"  # its own seconds against the job's (target <= 10%)
    cost = sum(json.loads(analysis.read_text())["seconds"].values()) if analysis.is_file() else float("nan")
    job = (r.get("timing") or {}).get("total_s") or float("nan")
    print(f"[sweep] {r['finetune']:>6}: {r['status']}, fit {fit:.1f} s on {n} train images, "
          f"test acc {r.get('metrics', {}).get('test/acc', float('nan')):.4f}, cache {r.get('feature_cache')}, "
          f"analysis {cost:.1f} s of the job's {job:.1f} s ({100 * cost / job:.1f}%)")
if runs:
    n = runs[0]["data"]["sizes"]["train"]
    print(f"[sweep] total fit {total:.1f} s on {n} train images; scaled to 16,200: {total * 16200 / n:.1f} s (target <= 60 s)")
EOF
}

for step in $STEPS; do
  case $step in
    sweep) sweep ;;
    ti_full) bench model=vit_ti16 finetune=full batch_size=128 ;;
    b16_full) bench model=vit_b16 finetune=full batch_size=128 ;;
    b16_full_compiled) bench model=vit_b16 finetune=full batch_size=128 compile=true ;;
    b16_top4_cached) bench model=vit_b16 finetune=top4 batch_size=128 ;;
    b16_top4_uncached) bench model=vit_b16 finetune=top4 batch_size=128 finetune.cache_features=false ;;
    b16_last_run) bench model=vit_b16 finetune=last batch_size=128 trainer.max_epochs=10 -- --mode run --repeats 1 ;;
    ti_bs512) bench model=vit_ti16 finetune=full batch_size=512 ;;
    ti_strategies) bench model=vit_ti16 batch_size=128 -- --strategies full,lora,vpt,bitfit,norm,llrd,top4,last ;;
    *) echo "[gpu_benchmarks] unknown step '$step'"; exit 2 ;;
  esac
done
