#!/usr/bin/env bash
# Compile check of the CUDA build, without a GPU: keeps the `cuda` feature from rotting unseen.
#
#   scripts/ci-cuda.sh
#
# 1. scripts/cuda-toolchain.sh: CUDA 13.0 from PyPI wheels + a link-time libcuda stub (~1.2 GB,
#    once, under ~/.cache/decodebench/cuda-toolchain).
# 2. cargo test --workspace -F decodebench/cuda --no-run: every test, and the binary the
#    integration tests run, compiled and linked with the feature.
#
# It builds in the same target directory and dev profile as `cargo test --workspace`, which CI
# runs first: only what the feature changes is compiled again (candle-core/-nn/-transformers with
# cudarc and candle-kernels, and the project's crates); polars, tokenizers, plotters and the
# rest are reused. Cargo keeps both feature sets' artifacts side by side (features are part of
# each artifact's hash), so going back to the CPU build recompiles nothing. (It used to build in
# its own target directory, in the release profile: every dependency compiled a second time.)
#
# Most of the remaining time is candle-kernels' build script: nvcc over candle's kernels, PTX for
# most and machine code for the quantized/MoE library. Its builder (cudaforge) runs nvcc on half
# of the cores by default, which on 2 cores is one at a time; CUDAFORGE_THREADS gives it all of
# them (it sets only how many nvcc processes run at once, not what they compile).
#
# The binaries cannot start here (no libcuda.so.1 without an NVIDIA driver). On a machine whose
# `nvidia-smi -L` lists a GPU, the script also runs `decodebench doctor --device cuda`. Until the
# next CPU `cargo build` or `cargo test` (which links the CPU binary back into place),
# target/debug/decodebench is the CUDA build; .ci/run therefore runs this script last.
# CARGO_TARGET_DIR, when set, is honoured (as by cargo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
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
echo "ci-cuda: CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION target=$TARGET_DIR CUDAFORGE_THREADS=$CUDAFORGE_THREADS" >&2

step "cargo test --no-run (cuda)" cargo test "${FEATURES[@]}" --no-run

# The feature really took: the binary depends on the driver library.
bin="$TARGET_DIR/debug/decodebench"
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
