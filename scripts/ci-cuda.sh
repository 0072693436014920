#!/usr/bin/env bash
# Compile check of the CUDA build, without a GPU: keeps the `cuda` feature from rotting unseen.
#
#   scripts/ci-cuda.sh
#
# 1. scripts/cuda-toolchain.sh: CUDA 13.0 from PyPI wheels + a link-time libcuda stub (~1.2 GB,
#    once, under ~/.cache/decodebench/cuda-toolchain).
# 2. cargo build --release --workspace -F decodebench/cuda     (the binary a GPU user runs)
# 3. cargo test  --release --workspace -F decodebench/cuda --no-run   (every test compiles)
#
# Both steps use the release profile so candle-kernels' build script (nvcc over all of candle's
# kernels, ~13 of the ~20 cold minutes on 2 cores) runs once, not once per profile. Everything
# goes to target-cuda/, so the CPU build in target/ never triggers the kernel build. A warm
# target-cuda/ makes a rerun take seconds to a few minutes.
#
# The binaries cannot start here (no libcuda.so.1 without an NVIDIA driver). On a machine whose
# `nvidia-smi -L` lists a GPU, the script also runs `decodebench doctor --device cuda`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TARGET_DIR="$ROOT/target-cuda"
FEATURES=(--workspace --features decodebench/cuda)

t_all=$SECONDS
step() { # step NAME COMMAND...
    local name="$1" t=$SECONDS rc=0
    shift
    echo "ci-cuda: >>> $name (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$@" || rc=$?
    echo "ci-cuda: <<< $name: $((SECONDS - t)) s$([[ $rc == 0 ]] || echo ", FAILED (exit $rc)")" >&2
    return "$rc"
}

env_file="$(mktemp)"
trap 'rm -f "$env_file"' EXIT
# shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
step "toolchain" bash -c '"$1" --env >"$2"' _ "$ROOT/scripts/cuda-toolchain.sh" "$env_file"
# shellcheck disable=SC1090
source "$env_file"
echo "ci-cuda: CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION CARGO_TARGET_DIR=$CARGO_TARGET_DIR" >&2

step "cargo build --release (cuda)" cargo build --release "${FEATURES[@]}"
step "cargo test --release --no-run (cuda)" cargo test --release "${FEATURES[@]}" --no-run

# The feature really took: the binary depends on the driver library.
bin="$CARGO_TARGET_DIR/release/decodebench"
if ! readelf -d "$bin" | grep -q 'libcuda\.so\.1'; then
    echo "ci-cuda: $bin does not link libcuda.so.1: the cuda feature did not reach candle" >&2
    exit 1
fi

if nvidia-smi -L >/dev/null 2>&1; then
    step "decodebench doctor --device cuda" "$bin" doctor --device cuda
else
    echo "ci-cuda: no NVIDIA driver/GPU here: built and linked only (binaries need libcuda.so.1 to start)" >&2
fi
echo "ci-cuda: OK in $((SECONDS - t_all)) s" >&2
