#!/usr/bin/env bash
# The README's worked example for zoo models: fine-tune torchvision's ResNet-18 at 4 bits from
# a full-precision checkpoint on a real folder-per-class dataset, then measure it.
# Needs the vision extra (bash scripts/setup.sh plot,digits,vision). Writes into $1 (default
# zoo-example/); about 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-zoo-example}"
qgen=.venv/bin/qgen
common=(--dataset "folder:$out/fmnist-folder" --model tv:resnet18 --set data.input_size=32
        --batch-size 64 --threads 2 --quiet --out "$out/runs")
mkdir -p "$out"

# 1. a real image-folder dataset: 1,000 Fashion-MNIST training and 500 test images as PNG
[ -d "$out/fmnist-folder" ] || $qgen write-folder fashion-mnist "$out/fmnist-folder" \
    --train-subset 1000 --test-subset 500
# 2. full-precision ResNet-18 trained on it: the checkpoint a fine-tune starts from
fp=$($qgen train "${common[@]}" --epochs 10 --lr 0.05 | tail -1)
# 3. LSQ at 4 bits (first and last layer at 8), started from those weights, cosine schedule
q=$($qgen train "${common[@]}" --bits 4 --weights "$fp/model.safetensors" \
      --set train.schedule=cosine --epochs 3 --lr 0.01 | tail -1)
# 4. measure both: flatness measures, robustness to corruptions, and the quantization-noise
#    theory for the 4-bit model
measure=(--measures 'pacbayes.*flatness,sharpness.*flatness' --set eval_subset=500
         --set ascent_steps=5 --set ascent_batch=64 --set mc_stderr=0.02
         --set mc_eval_examples=250 --threads 2 --quiet)
$qgen measure "$fp" "$q" "${measure[@]}"
$qgen robustness "$fp" "$q" -c demo -s 1,3,5 --set test_examples=300 --threads 2 --quiet
$qgen theory "$q" --threads 2 --quiet
# 5. the answers, side by side
.venv/bin/python - "$fp" "$q" <<'EOF'
import json
import sys
from pathlib import Path

print(f"{'run':<6} {'epochs':>6} {'train acc':>9} {'test acc':>8} {'loss gap':>8} "
      f"{'pacbayes.mag':>12} {'sharp.mag':>9} {'clean acc':>9} {'corrupted':>9}")
for d in map(Path, sys.argv[1:]):
    r = json.loads((d / "result.json").read_text())
    m = json.loads((d / "measures.json").read_text())["values"]
    rb = json.loads((d / "robustness.json").read_text())["values"]
    label = r.get("quant", {}).get("label", "fp")
    print(f"{label:<6} {r['epochs']:>6.0f} {r['metrics']['train_accuracy']:>9.3f} "
          f"{r['metrics']['test_accuracy']:>8.3f} {r['metrics']['loss_gap']:>8.3f} "
          f"{m['pacbayes.mag.flatness']:>12.3g} {m['sharpness.mag.flatness']:>9.3g} "
          f"{rb['clean_acc']:>9.3f} {rb['mean_acc']:>9.3f}")
EOF
