#!/usr/bin/env bash
# A CUDA 13.0 build toolchain from PyPI wheels, for building decodebench with `--features cuda` on
# a machine without a system CUDA toolkit (and without a GPU or an NVIDIA driver: CI).
#
# Usage:
#   eval "$(scripts/cuda-toolchain.sh --env)"   # install if needed, then set the build env
#   source scripts/cuda-toolchain.sh            # the same, from an interactive bash
#   scripts/cuda-toolchain.sh                   # install if needed, print a summary
#   scripts/cuda-toolchain.sh --check           # exit 0 if installed and current, 1 if not
#
# What it does, all under one prefix (never system-wide):
#   PREFIX = $DECODEBENCH_CUDA_TOOLCHAIN, else $DECODEBENCH_HOME/cuda-toolchain, else
#            ~/.cache/decodebench/cuda-toolchain.                                  (~1.2 GB)
#   1. `python3 -m pip install --no-deps --target PREFIX` of the pinned wheels below ($DECODEBENCH_PIP
#      overrides the pip command, as for models). They unpack to PREFIX/nvidia/cu13/{bin,include,
#      lib,nvvm}, which is CUDA_HOME. Skipped when PREFIX/.stamp lists the same pins.
#   2. Unversioned links in CUDA_HOME/lib (libcudart.so -> libcudart.so.13, libcublas.so,
#      libcublasLt.so, libcurand.so, libnvrtc.so): the linker looks for `-lcudart` etc.
#   3. A link-time stub of the driver library, CUDA_HOME/lib/stubs/libcuda.so (soname
#      libcuda.so.1), as the real toolkit ships one in lib64/stubs: no package ships libcuda,
#      which comes with the NVIDIA driver. candle-core makes cudarc link the driver API
#      (`dynamic-linking`), so every `cu*` symbol cudarc declares must resolve at link time.
#      The list is taken from the cudarc version in Cargo.lock: every `pub unsafe fn cu...` in
#      $CARGO_HOME/registry/src/*/cudarc-VERSION/src/driver/sys/mod.rs (all CUDA versions'
#      bindings; ~515 names), each compiled as a C function returning 34
#      (CUDA_ERROR_STUB_LIBRARY). The binary records a dependency on libcuda.so.1, which the real
#      driver provides at run time. The stubs folder is never put on LD_LIBRARY_PATH; a binary
#      built here cannot start on a machine without the driver (exit 127, libcuda.so.1 not
#      found), which is expected.
#   4. Prints the environment (`--env`): the exports below. cudarc's build script adds
#      CUDA_HOME/lib and CUDA_HOME/lib/stubs to the link search itself; LIBRARY_PATH repeats them
#      for any other linker use. No CPATH or NVCC_PREPEND_FLAGS are needed: the wheel's
#      nvcc.profile adds CUDA_HOME/include and include/cccl (<nv/target>, <cuda/std/...>).
#
#   PATH                 CUDA_HOME/bin first (nvcc, ptxas, ...)
#   NVCC                 CUDA_HOME/bin/nvcc (cudaforge, used by candle-kernels' build script)
#   CUDA_HOME, CUDA_PATH, CUDA_ROOT   PREFIX/nvidia/cu13
#   CUDA_COMPUTE_CAP     kept if set, else the first GPU's from nvidia-smi, else 80 (A100; CI has
#                        no GPU to ask). Set it to your GPU's (86: A10/RTX 30xx, 89: L4/RTX 40xx,
#                        90: H100) for kernels built for it.
#   CUDARC_CUDA_VERSION  13000 (cudarc's bindings for the CUDA 13.0 toolkit installed here)
#   LIBRARY_PATH         CUDA_HOME/lib:CUDA_HOME/lib/stubs (link time only)
#   LD_LIBRARY_PATH      CUDA_HOME/lib (run time: the real cudart/cublas/curand/nvrtc; no stub)
#
# Changing any of NVCC, CUDA_HOME, CUDA_COMPUTE_CAP or CUDARC_CUDA_VERSION makes cargo rerun
# candle-kernels' build script (~13 minutes on 2 cores), so keep PREFIX and the cap stable
# between builds.
#
# Pins: CUDA 13.0 Update 2 components. cudarc 0.19 accepts nvcc up to 13.4 without an override;
# 13.0 is the oldest 13.x and runs on the widest range of drivers (>= 580).

# Sourced: run in a child bash (no `set -e` in the caller's shell), then apply its exports.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    __decodebench_cuda_env="$(bash "${BASH_SOURCE[0]}" --env)" && eval "$__decodebench_cuda_env"
    __decodebench_cuda_rc=$?
    unset __decodebench_cuda_env
    return $__decodebench_cuda_rc
fi

set -euo pipefail

PINS=(
    nvidia-cuda-nvcc==13.0.88      # nvcc, ptxas, fatbinary, nvlink
    nvidia-nvvm==13.0.88           # cicc, libdevice (nvcc's device front end)
    nvidia-cuda-crt==13.0.88       # crt/ headers nvcc includes
    nvidia-cuda-cccl==13.0.85      # <nv/target>, <cuda/std/...>
    nvidia-cuda-runtime==13.0.96   # cuda_runtime.h, libcudart.so.13
    nvidia-cuda-nvrtc==13.0.88     # libnvrtc.so.13 (candle compiles some kernels at run time)
    nvidia-cublas==13.1.0.3        # libcublas.so.13, libcublasLt.so.13 (~420 MB)
    nvidia-curand==10.4.0.35       # libcurand.so.10
)
CUDARC_VERSION_CODE=13000
# Bump when the layout this script builds (links, stub) changes.
LAYOUT_VERSION=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${DECODEBENCH_CUDA_TOOLCHAIN:-${DECODEBENCH_HOME:-$HOME/.cache/decodebench}/cuda-toolchain}"
CUDA_HOME_DIR="$PREFIX/nvidia/cu13"
STAMP="$PREFIX/.stamp"
read -r -a PIP <<<"${DECODEBENCH_PIP:-python3 -m pip}"

log() { echo "cuda-toolchain: $*" >&2; }
die() { echo "cuda-toolchain: error: $*" >&2; exit 1; }

mode=summary
case "${1:-}" in
    --env) mode="env" ;;
    --check) mode="check" ;;
    "") ;;
    -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (expected --env, --check or nothing)" ;;
esac

stamp_text() {
    printf 'layout %s\n' "$LAYOUT_VERSION"
    printf '%s\n' "${PINS[@]}"
}

# The cudarc version Cargo.lock resolves (candle-core's CUDA bindings).
cudarc_version() {
    awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

cudarc_driver_sys() {
    local ver="$1" f
    for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$ver"/src/driver/sys/mod.rs; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

installed_ok() {
    [[ -f "$STAMP" && -x "$CUDA_HOME_DIR/bin/nvcc" ]] && [[ "$(cat "$STAMP")" == "$(stamp_text)" ]]
}

install_wheels() {
    local staging="$PREFIX.staging"
    rm -rf "$staging"
    log "installing ${#PINS[@]} CUDA 13.0 wheels into $PREFIX (about 1.2 GB, once)"
    "${PIP[@]}" install --quiet --no-deps --no-input --disable-pip-version-check --root-user-action=ignore \
        --target "$staging" "${PINS[@]}" >&2 \
        || die "pip install of the CUDA wheels failed"
    [[ -x "$staging/nvidia/cu13/bin/nvcc" ]] || die "nvcc missing from the installed wheels ($staging/nvidia/cu13/bin)"
    rm -rf "$PREFIX.old"
    [[ -e "$PREFIX" ]] && mv "$PREFIX" "$PREFIX.old"
    mv "$staging" "$PREFIX"
    rm -rf "$PREFIX.old"
}

link_unversioned() {
    local lib="$CUDA_HOME_DIR/lib" name target f
    for name in cudart cublas cublasLt curand nvrtc; do
        # The one real soname, e.g. libcublas.so.13 (not libnvrtc.alt.so.13 or builtins).
        target=""
        for f in "$lib/lib$name.so."*; do
            [[ "${f##*/}" =~ ^lib$name\.so\.[0-9]+$ ]] && { target="${f##*/}"; break; }
        done
        [[ -n "$target" ]] || die "lib$name.so.N not found in $lib"
        [[ "$(readlink "$lib/lib$name.so" 2>/dev/null || true)" == "$target" ]] || ln -sfn "$target" "$lib/lib$name.so"
    done
}

build_driver_stub() {
    local stubs="$CUDA_HOME_DIR/lib/stubs" ver sys names tmp n
    ver="$(cudarc_version)"
    [[ -n "$ver" ]] || die "no cudarc in $ROOT/Cargo.lock"
    [[ -f "$stubs/libcuda.so" && "$(cat "$stubs/.cudarc-version" 2>/dev/null || true)" == "$ver" ]] && return 0
    if ! sys="$(cudarc_driver_sys "$ver")"; then
        log "fetching crate sources for cudarc $ver (cargo fetch)"
        cargo fetch --locked --manifest-path "$ROOT/Cargo.toml" >&2 || die "cargo fetch failed"
        sys="$(cudarc_driver_sys "$ver")" || die "cudarc-$ver sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"
    fi
    names="$(grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | sed 's/^pub unsafe fn //' | sort -u)"
    (( $(wc -l <<<"$names") > 100 )) || die "found too few cu* functions in $sys"
    mkdir -p "$stubs"
    tmp="$(mktemp -d)"
    {
        echo "/* Link-time stub of libcuda.so.1 for cudarc $ver, generated by scripts/cuda-toolchain.sh."
        echo "   Every driver entry point returns CUDA_ERROR_STUB_LIBRARY (34). Never load it at run time. */"
        echo "#define STUB(name) int name(void) { return 34; }"
        while IFS= read -r n; do echo "STUB($n)"; done <<<"$names"
    } >"$tmp/cuda_stub.c"
    gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$tmp/libcuda.so" "$tmp/cuda_stub.c" \
        || die "compiling the libcuda stub failed"
    mv "$tmp/libcuda.so" "$stubs/libcuda.so"
    cp "$tmp/cuda_stub.c" "$stubs/cuda_stub.c"
    echo "$ver" >"$stubs/.cudarc-version"
    rm -rf "$tmp"
    log "libcuda stub: $(wc -l <<<"$names") driver functions of cudarc $ver -> $stubs/libcuda.so"
}

# $CUDA_COMPUTE_CAP if set, else the first GPU's (nvidia-smi), else 80.
compute_cap() {
    local cap="${CUDA_COMPUTE_CAP:-}"
    if [[ -z "$cap" ]] && command -v nvidia-smi >/dev/null; then
        cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '. ' || true)"
    fi
    echo "${cap:-80}"
}

# Prepends $2 to the path list $1 unless it is already in it; prints the result.
prepend() {
    case ":${1}:" in *":$2:"*) echo "$1" ;; *) echo "$2${1:+:$1}" ;; esac
}

print_env() {
    local lib="$CUDA_HOME_DIR/lib"
    printf 'export PATH=%q\n' "$(prepend "${PATH:-}" "$CUDA_HOME_DIR/bin")"
    printf 'export NVCC=%q\n' "$CUDA_HOME_DIR/bin/nvcc"
    printf 'export CUDA_HOME=%q CUDA_PATH=%q CUDA_ROOT=%q\n' "$CUDA_HOME_DIR" "$CUDA_HOME_DIR" "$CUDA_HOME_DIR"
    printf 'export CUDA_COMPUTE_CAP=%q\n' "$(compute_cap)"
    printf 'export CUDARC_CUDA_VERSION=%q\n' "$CUDARC_VERSION_CODE"
    printf 'export LIBRARY_PATH=%q\n' "$(prepend "$(prepend "${LIBRARY_PATH:-}" "$lib/stubs")" "$lib")"
    printf 'export LD_LIBRARY_PATH=%q\n' "$(prepend "${LD_LIBRARY_PATH:-}" "$lib")"
}

if [[ "$mode" == check ]]; then
    installed_ok && [[ -f "$CUDA_HOME_DIR/lib/stubs/libcuda.so" ]] && exit 0
    exit 1
fi

command -v gcc >/dev/null || die "gcc is needed (the libcuda stub; nvcc's host compiler is g++)"
mkdir -p "$(dirname "$PREFIX")"
exec 9>"$PREFIX.lock"
flock 9
if installed_ok; then
    log "up to date: $PREFIX"
else
    install_wheels
fi
link_unversioned
build_driver_stub
stamp_text >"$STAMP"
flock -u 9

if [[ "$mode" == env ]]; then
    print_env
else
    log "CUDA_HOME=$CUDA_HOME_DIR ($("$CUDA_HOME_DIR/bin/nvcc" --version | grep -o 'release [0-9.]*'))"
    log "use it with:  eval \"\$(scripts/cuda-toolchain.sh --env)\""
    print_env >&2
fi
