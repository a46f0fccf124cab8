#!/usr/bin/env bash
# The GPU work of issues 3 and 4, ready for a session whose task is lent a device machine.
#
# Once, here, in the repository root (the CIFAR-10 JPEG folder travels as an ignored, carried folder):
#     mkdir -p .data && cp ../shared/datasets/cifar10-jpeg.tar.gz .data/      # .data/ is git-ignored
# Then, with the device tool (its python3 already has torch, torchvision, scikit-learn, matplotlib, tqdm):
#     run(command="bash scripts/gpu_session.sh check", carry=[".data"])
#     run(command="bash scripts/gpu_session.sh cifar10-high 560", carry=[".data"])   # again to go on: --resume
#
#   check               exactness tests on CUDA (pytest -m gpu) and the gradient-norm benchmark on the card
#   cifar10-high SECS   the cifar10-high preset (its training settings are the paper's) for lplgrad and random,
#                       trial 0, on the CIFAR-10 JPEG folder, stopped cleanly (Ctrl-C semantics) after SECS seconds;
#                       rerunning continues from the last finished round while the machine is still warm.
#                       Extra arguments go to `lplgrad run` (e.g. --device cpu --epochs 1 to try it here).
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu-session-out}
mkdir -p "$out"

case "${1:-}" in
check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
    python3 -m pytest -q -m gpu tests/test_gradnorm.py 2>&1 | tee "$out/pytest-gpu.txt"
    python3 bench/gradnorm.py --device cuda --n 1024 --loop-n 128 | tee "$out/bench-cuda.txt"
    python3 bench/gradnorm.py --device cuda --n 1024 --loop-n 128 --reduction global | tee -a "$out/bench-cuda.txt"
    # The grouped weight-gradient size was tuned on the CPU; on a GPU larger groups mean fewer launches.
    for group in 64 1024; do
        python3 bench/gradnorm.py --device cuda --n 1024 --loop-n 16 --group $group | tee -a "$out/bench-cuda.txt"
    done
    python3 bench/layout.py --device cuda --batch 128 | tee "$out/bench-layout-cuda.txt"
    ;;
cifar10-high)
    seconds=${2:?give the seconds to run}
    shift 2
    data=/tmp/cifar10-jpeg
    if [ ! -d "$data/train" ]; then
        mkdir -p "$data" && tar xzf .data/cifar10-jpeg.tar.gz -C "$data"
    fi
    run=/tmp/cifar10-high
    # The preset pins the paper's CIFAR training settings, so they hold on the image-folder copy.
    status=0
    timeout --signal=INT "$seconds" python3 -m lplgrad run --preset cifar10-high --strategy lplgrad,random \
        --trials 1 --dataset "imagefolder:$data" --resume --out "$run" "$@" || status=$?
    echo "lplgrad run exited with $status (130 or 124: stopped at the time limit; rerun to continue)"
    python3 -m lplgrad report "$run" --out "$out"
    cp "$run/results.jsonl" "$run/config.toml" "$out/"
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
