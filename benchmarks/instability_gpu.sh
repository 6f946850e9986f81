#!/usr/bin/env bash
# The instability study at ~35 M parameters on one GPU (issue #12): `steadylm sweep --study instability-gpu`,
# fixed in steadylm.study.studies.INSTABILITY_GPU, then its table and report. One prepared script for a
# short lease of a GPU machine: run it from the repo root, e.g. through the device tool as
#     bash benchmarks/instability_gpu.sh            (timeout_s 600; it aims at <= 8 minutes)
# On a machine whose python3 holds torch, transformers, accelerate, tokenizers, safetensors, rich, matplotlib,
# jinja2 and tensorboard (the GPU image here does; datasets, peft's and pytorch-optimizer's paths are not used),
# it runs steadylm from this checkout without installing it. Results land in $OUT (or ./runs when OUT is unset):
# sweep.json, lr_sensitivity.png, attention_logits.png, report.html, and the log.
set -euo pipefail
out="${OUT:-runs}/instability-gpu"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$(dirname "$out")"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$py" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  start=$(date +%s)
  "$py" -m steadylm sweep --study instability-gpu --out "$out" --workers "${WORKERS:-6}"
  echo "study wall time: $(( $(date +%s) - start )) s"
  "$py" -m steadylm report "$out" -o "$out/report.html"
} 2>&1 | tee "${OUT:-runs}/instability_gpu.log"
