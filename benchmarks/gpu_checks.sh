#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one go, on a machine with a GPU and the project importable:
#
#   bash benchmarks/gpu_checks.sh DATA_DIR OUT_DIR
#
# Its steps are the package's benchmarks, each with the baseline it measures in the same run:
# gpu_inference.py (the Ray Data batch job against a DataLoader on the GPU) and accuracy.py (`best`
# trained with Ray Train through train_models). DATA_DIR is animals10-sample/raw-img. Each step is
# time-boxed and writes its log and JSON under OUT_DIR as it goes; a step that fails or runs out of
# time does not stop the next. The time limits, in seconds, fit all five splits on one H200; shorten
# them to fit a lease:
#   INFERENCE_S (default 300), EFFICIENTNET_S (900), CNN_S (1800).
# (BENCHMARKS.md's H200 figures came from limits of 100, 260 and 170 s: a 15-minute lease.)
set -u
data=${1:?usage: gpu_checks.sh DATA_DIR OUT_DIR}
out=${2:?usage: gpu_checks.sh DATA_DIR OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: the command's output to OUT_DIR/NAME.log, its end shown here
    local name=$1 limit=$2
    shift 2
    echo "=== $name: up to ${limit} s, from $(date +%T)"
    timeout -k 15 "$limit" "$@" >"$out/$name.log" 2>&1
    echo "=== $name: exit $? at $(date +%T)"
    grep -v -E "INFO|logging\.cc|^PC: |^ +@ |^\s*$|Warning|warn\(|Reporting training result|Dataset .* execution|Execution plan|Starting execution|Checkpoint successfully|SIGTERM" "$out/$name.log" | tail -n 25
    ray stop --force >/dev/null 2>&1  # a Ray left behind by a time-boxed step
    return 0
}

# Fails fast: nothing else is worth running without these.
python3 - <<'PY' || exit 1
import torch, ray, ray.data, ray.train.torch
from animals10.device import get_device
from animals10.models import create_model
device = get_device()
print("torch", torch.__version__, "Ray", ray.__version__, device, torch.cuda.get_device_name() if device.type == "cuda" else "")
model = create_model("efficientnet_lite0", 10, pretrained=True).to(device).eval()
with torch.no_grad():
    print("efficientnet_lite0 forward on", device, tuple(model(torch.zeros(2, 3, 224, 224, device=device)).shape))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; echo "$(nproc) CPUs"; free -g | head -2

step inference "${INFERENCE_S:-300}" python3 benchmarks/gpu_inference.py --images "$data" --passes 60 --json "$out/inference.json"
step best_efficientnet "${EFFICIENTNET_S:-900}" python3 benchmarks/accuracy.py --data "$data" --recipes best --models efficientnet_lite0 \
    --seeds 1 2 3 4 5 --cpus-per-worker 4 --results "$out/best_efficientnet.json"
step best_cnn "${CNN_S:-1800}" python3 benchmarks/accuracy.py --data "$data" --recipes best --models custom_cnn \
    --seeds 1 2 3 4 5 --cpus-per-worker 4 --results "$out/best_cnn.json"
