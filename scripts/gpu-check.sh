#!/usr/bin/env bash
# The GPU path in one command, for a machine with a CUDA GPU (about 5-8 minutes). Run after scripts/setup.sh with a
# CUDA build of torch in .venv. Writes bench/results/gpu-check.json (and devices-gpu/-cpu.json, gpu.json):
#   1. the quick matrix end to end with train and evaluate given one GPU each; fails unless both ran on the GPU
#   2. a training step and greedy decoding at batch 1, 16 and 64 of the embedded default, GPU against CPU
#   3. the GPU benchmark: Whisper-large-v3 + Qwen2.5-7B shapes, random weights, bf16, SDPA: samples/s, peak memory, MFU
# Without a GPU it says so and exits 0; with a GPU that nvidia-smi lists but torch cannot use it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
python=python
results=bench/results

if ! $python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  version=$($python -c 'import torch; print(torch.__version__)')
  listed=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -c . || true)
  if [ "${listed:-0}" -gt 0 ]; then  # a CPU build of torch, or a driver it cannot use: not a pass
    echo "gpu-check: nvidia-smi lists $listed GPU(s) but torch $version sees no CUDA device: install a CUDA build" \
      "of torch into .venv that matches the driver ($(nvidia-smi --query-gpu=driver_version --format=csv,noheader \
      2>/dev/null | head -n 1)), then run this again" >&2
    exit 1
  fi
  echo "gpu-check: no CUDA GPU on this machine (nvidia-smi lists none) and none visible to torch $version:" \
    "nothing to check"
  exit 0
fi
mkdir -p "$results"
work=$(mktemp -d /tmp/steermoe-gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

echo "== 1. quick matrix on the GPU (workflow copied to $work)"
cp -r Snakefile experiments templates workflow profiles "$work"/
(cd "$work" && snakemake --cores all --resources gpu=1 --set-resources train:gpu=1 evaluate:gpu=1 \
  --config quick=true -- results/table.csv > snakemake.log 2>&1) \
  || { tail -n 40 "$work/snakemake.log"; echo "gpu-check: the quick matrix failed"; exit 1; }

echo "== 2. embedded default: training step and decoding, GPU against CPU"
$python -m bench devices --out "$results/devices-gpu.json"
CUDA_VISIBLE_DEVICES="" $python -m bench devices --steps 3 --batch-sizes 1 16 --out "$results/devices-cpu.json"

echo "== 3. GPU benchmark at full size"
$python -m bench gpu --out "$results/gpu.json"

$python - "$work" "$results" "$start" <<'EOF'
import json, sys, time
from pathlib import Path

work, results, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
ran = {}
for summary in sorted(work.glob("results/*/train/final/train_summary.json")):
    experiment = summary.parents[2].name
    metrics = json.loads((summary.parents[2] / "eval" / "metrics.json").read_text())
    ran[experiment] = {"train_device": json.loads(summary.read_text()).get("device"),
                       "eval_device": metrics.get("device"), "precision": metrics.get("precision")}
wrong = {k: v for k, v in ran.items() if not all(str(v[d]).startswith("cuda") for d in ("train_device", "eval_device"))}
gpu, cpu = (json.loads((results / f"devices-{d}.json").read_text()) for d in ("gpu", "cpu"))
full = json.loads((results / "gpu.json").read_text())
check = {"matrix": ran, "matrix_on_gpu": not wrong and bool(ran),
         "step_seconds": {"gpu": gpu["median_step_seconds"], "cpu": cpu["median_step_seconds"]},
         "step_speedup": cpu["median_step_seconds"] / gpu["median_step_seconds"],
         "decode_utterances_per_second": {"gpu": gpu["decode_utterances_per_second"],
                                          "cpu": cpu["decode_utterances_per_second"]},
         "full_size": {k: full.get(k) for k in ("gpu", "samples_per_second", "peak_memory_gib", "mfu", "verdict")},
         "seconds": int(time.time()) - start}
(results / "gpu-check.json").write_text(json.dumps(check, indent=2) + "\n")
print(json.dumps(check, indent=2))
if wrong:
    sys.exit(f"gpu-check: these experiments did not train and evaluate on the GPU: {wrong}")
EOF
echo "gpu-check: done in $(( $(date +%s) - start )) s; bench/results/gpu-check.json"
