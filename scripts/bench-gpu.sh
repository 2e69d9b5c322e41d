#!/usr/bin/env bash
# The README's GPU figures, in one run on a CUDA machine (run from the repository root):
#
#   scripts/bench-gpu.sh [OUT_DIR]          # default out/gpu; DEVICE=cpu QUICK=1 for a dry run here
#
# 0. the GPU tests (tests/models/test_cuda_graphs.py: CUDA graphs answer as the plain pass);
# 1. the models' forward pass alone at batch 1..4096 (scripts.bench_models), fp32, beside the service's own
#    pass (traced, CUDA graphs, copy to numpy) with and without the graphs;
# 2. 3x overload with the default (adaptive) admission, the limit read from /metrics while it lasts and the
#    mean batch the engine formed (scripts.bench_overload --watch);
# 3. the serving rows of `make bench` against the naive reference (tools.bench).
# The servers run as they do on the 2-core machine (server on CPU 0, load generator on CPU 1), so that the
# GPU is the only difference. Each step writes its JSON to OUT_DIR; a failed step does not stop the others,
# and the script's exit status says whether one failed.
set -u
out=${1:-out/gpu}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
mkdir -p "$out"
failed=0
step() {
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    if ! (set -o pipefail; "$@" 2>&1 | tee "$out/$name.log"); then
        echo "== $name FAILED"
        failed=1
    fi
    echo "== $name took $((SECONDS - t0)) s"
}

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
fi
$python -c 'import torch, platform; print("torch", torch.__version__, "python", platform.python_version(),
    "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' \
    | tee -a "$out/gpu.txt"

if [ -n "${QUICK:-}" ]; then
    models=(--batch 1 256 --time 0.2 --serving)
    overload=(--runs 1 --duration 2)
    bench=(--quick)
else
    models=(--batch 1 64 256 1024 4096 --time 0.3 --serving)
    overload=(--runs 3 --duration 5)
    bench=(--duration 2 --repeat 3)
fi
step tests $python -m pytest -q -rs -p no:cacheprovider tests/models/test_cuda_graphs.py
step models $python -m scripts.bench_models --device "$device" "${models[@]}" --json "$out/models.json"
step overload $python -m scripts.bench_overload --device "$device" --watch "${overload[@]}"
step serving $python -m tools.bench --device "$device" --pin 0:1 "${bench[@]}" --json "$out/serving.json"
exit $failed
