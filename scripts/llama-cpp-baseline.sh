#!/usr/bin/env bash
# llama.cpp's own decoding speed on the default models, next to decodebench's, on this machine.
#
#   scripts/llama-cpp-baseline.sh [MODEL...]        (default: every installed default model)
#   scripts/llama-cpp-baseline.sh --build-only      (only step 1)
#
# 1. Builds llama.cpp once, from the llama.cpp sources vendored in the PyPI sdist of
#    llama-cpp-python (`pip download`; PyPI is the only thing contacted), into
#    ${DECODEBENCH_HOME:-~/.cache/decodebench}/llama.cpp/ — never into the repository. Only the
#    two tools used here are built (llama-bench, llama-speculative-simple), for this CPU
#    (GGML_NATIVE). cmake and scikit-build-core (which pip needs to read the sdist) come from
#    PyPI wheels into a virtualenv there. About 4 minutes on 2 cores; later runs reuse it.
# 2. Prints a Markdown table per model: its main weight types, llama.cpp's tg128 tokens/s
#    (`llama-bench -p 0 -n 128`), decodebench's greedy tokens/s (`decodebench generate --json`,
#    field tokens_per_s, 128 new tokens) and their ratio.
# 3. For the Qwen pair (target qwen2.5-coder-1.5b, draft qwen2.5-coder-0.5b): the speedup of
#    llama.cpp's `llama-speculative-simple` (draft-max $GAMMA) over its own plain decoding, next
#    to decodebench's speculative decoding (--gamma $GAMMA) over its greedy decoding.
# 4. Block verification on the target: the time of one forward over N new tokens after a
#    256-token cache, for N in $BLOCKS: llama.cpp's `llama-bench -p N -n 0 -d 256` (avg_ns; the
#    256 cached tokens are processed before each timed run) next to `decodebench calibrate
#    --context 256` (median forward ms), with each engine's c(N)/c(1).
#
# Every measurement runs ROUNDS times (default 3), the two engines alternating, and the tables
# give medians; a ratio is the median of the rounds' ratios (each round's two numbers measured
# a minute apart at most), with the rounds' range beside it when ROUNDS > 1. On a shared machine
# one engine's single run can land in a busy minute (here once: llama.cpp's single-token forward
# at 58.7 ms against 35-36 in the next runs); alternating rounds spread that over both.
#
# Environment: ROUNDS (3), THREADS (default: nproc; both engines use that many), GAMMA (4), N (128 new tokens), DECODEBENCH (the
# binary; default target/release/decodebench, built with `cargo build --release` if missing),
# DECODEBENCH_HOME, DECODEBENCH_PIP (default `python3 -m pip`), LLAMA_CPP_PYTHON_VERSION
# (0.3.36). Timings on a shared machine are noisy: the table says what ran when.
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
HOME_DIR=${DECODEBENCH_HOME:-$HOME/.cache/decodebench}
LC=$HOME_DIR/llama.cpp
THREADS=${THREADS:-$(nproc)}
# decodebench uses the same number of threads (candle's pool and rayon's).
export CANDLE_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
GAMMA=${GAMMA:-4}
N=${N:-128}
ROUNDS=${ROUNDS:-3}
BLOCKS=${BLOCKS:-1,2,4,8,16,32,64}
PIP=${DECODEBENCH_PIP:-python3 -m pip}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DB=${DECODEBENCH:-$ROOT/target/release/decodebench}
PROMPT="Write a Python function that checks whether a string is a palindrome, with a docstring and two examples."
# The same request in ChatML (the Qwen models' template), given raw to both engines for the
# speculative runs so that both decode the same text.
CHATML="<|im_start|>system
You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>
<|im_start|>user
$PROMPT<|im_end|>
<|im_start|>assistant
"
SRC=$LC/src-$VERSION
BIN=$LC/build-$VERSION/bin
# llama.cpp's AMX matrix product (0.3.36) dies at its first `ldtilecfg` on some AMX CPUs for a
# batch of 2+ tokens, while one token works (seen here on an AMX Xeon: a general protection
# fault in ggml_backend_amx_mul_mat; ggml-org/llama.cpp#20824, fix proposed in #26954). On a
# CPU with AMX a second build with its AMX code compiled out (-mno-amx-*; its AVX-512 paths and
# weight repacking stay) runs the batches: the speculative runs and the block forwards. tg128
# stays on the default build, AMX included, llama.cpp's fastest there. The table says so.
BATCH_BIN=$BIN
NO_AMX=""
if grep -qw amx_int8 /proc/cpuinfo; then
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    BATCH_BIN=$LC/build-$VERSION-noamx/bin
fi

log() { echo "llama-cpp-baseline: $*" >&2; }

# summary A_VALUES B_VALUES: "median(A) median(B) ratio", the ratio the median of the rounds'
# B/A, followed by "[min-max]" of them when there are several rounds. One value per round,
# space-separated.
summary() {
    python3 - "$1" "$2" <<'EOF'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
r = [y / x for x, y in zip(a, b)]
rng = f" [{min(r):.2f}-{max(r):.2f}]" if len(r) > 1 else ""
print(f"{statistics.median(a):.1f} {statistics.median(b):.1f} {statistics.median(r):.2f}x{rng}")
EOF
}

# build_llama_cpp BUILD_DIR [CFLAGS]
build_llama_cpp() {
    local build=$1 cflags=${2:-}
    if [[ -x $build/bin/llama-bench && -x $build/bin/llama-speculative-simple ]]; then
        log "llama.cpp build found in $build"
        return
    fi
    # Build tools from PyPI wheels in a virtualenv of our own: cmake (when the system has none)
    # and scikit-build-core, the sdist's build backend, which pip needs to read the sdist's
    # metadata. (`--no-binary :all:` would make pip compile cmake itself from source.)
    if [[ ! -x $LC/venv/bin/python ]]; then
        log "creating $LC/venv (cmake, scikit-build-core from PyPI wheels)"
        python3 -m venv "$LC/venv"
    fi
    "$LC/venv/bin/python" -m pip install --quiet --disable-pip-version-check cmake scikit-build-core
    local cmake=cmake
    command -v cmake >/dev/null || cmake=$LC/venv/bin/cmake
    mkdir -p "$LC/download"
    if [[ ! -f $SRC/vendor/llama.cpp/CMakeLists.txt ]]; then
        log "downloading the llama-cpp-python $VERSION sdist (llama.cpp sources)"
        "$LC/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --no-build-isolation \
            --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$LC/download"
        local sdist
        sdist=$(ls "$LC/download"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || ls "$LC/download"/llama-cpp-python-"$VERSION".tar.gz)
        rm -rf "$SRC" && mkdir -p "$SRC"
        tar -xzf "$sdist" -C "$SRC" --strip-components=1
    fi
    log "building llama-bench and llama-speculative-simple (GGML_NATIVE=ON ${cflags:+$cflags }-j $(nproc)) in $build; log in $LC/cmake-build.log"
    "$cmake" -S "$SRC/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cflags" \
        >"$LC/cmake-configure.log" 2>&1 \
        || { tail -30 "$LC/cmake-configure.log" >&2; exit 1; }
    "$cmake" --build "$build" --target llama-bench llama-speculative-simple -j "$(nproc)" >"$LC/cmake-build.log" 2>&1 \
        || { tail -30 "$LC/cmake-build.log" >&2; exit 1; }
}

# NAME PATH per installed default model, from `decodebench models list --json` (or, from a
# build without --json, the table: INSTALLED and PATH are its last two columns).
installed_models() {
    if "$DB" models list --json >/dev/null 2>&1; then
        "$DB" models list --json | python3 -c 'import json,sys; [print(m["name"], m["path"]) for m in json.load(sys.stdin) if m["installed"]]'
    else
        "$DB" models list | awk 'NR > 1 && $(NF-1) == "yes" { print $1, $NF }'
    fi
}

# Main weight types of a GGUF file (matrices per type), from its header.
weight_types() {
    python3 - "$1" <<'EOF'
import struct, sys, collections
T = {0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 8: 'Q8_0', 10: 'Q2_K', 11: 'Q3_K',
     12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 15: 'Q8_K', 30: 'BF16'}
f = open(sys.argv[1], 'rb')
def rd(fmt): return struct.unpack('<' + fmt, f.read(struct.calcsize('<' + fmt)))
def rstr(): return f.read(rd('Q')[0])
def skip(t):
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if t in sizes: f.read(sizes[t])
    elif t == 8: rstr()
    elif t == 9:
        at, n = rd('IQ')
        for _ in range(n): skip(at)
f.read(4); _, nt, nkv = rd('IQQ')
for _ in range(nkv):
    rstr(); skip(rd('I')[0])
c = collections.Counter()
for _ in range(nt):
    rstr(); nd = rd('I')[0]; rd('Q' * nd); t = rd('IQ')[0]
    if nd == 2: c[T.get(t, str(t))] += 1
print(', '.join(f'{k} ×{v}' for k, v in c.most_common()))
EOF
}

# llama.cpp tg$N tokens/s.
llama_tg() {
    "$BIN/llama-bench" -m "$1" -p 0 -n "$N" -t "$THREADS" -r 3 -o json 2>/dev/null \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.1f" % r[0]["avg_ts"])'
}

# llama.cpp's ms per forward over each block size in $BLOCKS after a 256-token cache, as
# "N MS" lines.
llama_blocks() {
    "$BATCH_BIN/llama-bench" -m "$1" -p "$BLOCKS" -n 0 -d 256 -t "$THREADS" -r 3 -o json 2>/dev/null \
        | python3 -c 'import json,sys; [print(r["n_prompt"], "%.2f" % (r["avg_ns"] / 1e6)) for r in json.load(sys.stdin)]'
}

# decodebench's ms per forward over each block size in $BLOCKS after a 256-token cache.
db_blocks() {
    "$DB" calibrate --model "$1" --context 256 --tokens "$BLOCKS" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin)["forward_ms"]; [print(n, "%.2f" % d[n]) for n in sorted(d, key=int)]'
}

# decodebench tokens/s for `generate ARGS...` (greedy unless ARGS say otherwise; the prompt in
# the model's chat template, or $CHATML raw with DB_RAW=1).
db_tps() {
    local prompt=(--prompt "$PROMPT")
    [[ ${DB_RAW:-0} == 1 ]] && prompt=(--raw --prompt "$CHATML")
    "$DB" generate "${prompt[@]}" --max-new-tokens "$N" --json "$@" 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f %d %.2f" % (d["tokens_per_s"], d["new_tokens"], d.get("mean_accepted_tokens", 0)))'
}

# llama-speculative-simple (draft model, greedy): decoding tokens/s and the share of drafted
# tokens accepted. Its log prints "decoded N tokens in T seconds, speed: S t/s" and
# "accept = P%".
llama_spec() {
    local target=$1 draft=$2 out
    out=$("$BATCH_BIN/llama-speculative-simple" -m "$target" -md "$draft" --spec-type draft-simple -p "$CHATML" -n "$N" \
        -t "$THREADS" -td "$THREADS" --spec-draft-n-max "$GAMMA" --spec-draft-n-min 0 --temp 0 -c 2048 --seed 1 2>&1 || true)
    echo "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
speed = re.findall(r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s+seconds, speed:\s+([\d.]+)\s+t/s", t)
acc = re.findall(r"accept\s*=\s*([\d.]+)%", t)
print(speed[-1][2] if speed else "n/a", acc[-1] if acc else "n/a")'
}

main() {
    build_llama_cpp "$(dirname "$BIN")"
    if [[ $BATCH_BIN != "$BIN" ]]; then
        build_llama_cpp "$(dirname "$BATCH_BIN")" "$NO_AMX"
    fi
    if [[ ${1:-} == --build-only ]]; then
        return
    fi
    if [[ ! -x $DB ]]; then
        log "building decodebench (cargo build --release)"
        (cd "$ROOT" && cargo build --release --quiet)
    fi
    local cpu simd
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
    simd=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx_vnni|amx_int8)$' | tr '\n' ' ')
    echo "## llama.cpp (llama-cpp-python $VERSION sdist, GGML_NATIVE) vs decodebench"
    echo
    echo "CPU: $cpu, $(nproc) threads available, $THREADS used; SIMD: $simd"
    if [[ $BATCH_BIN != "$BIN" ]]; then
        echo "llama.cpp's AMX product crashes here for 2+ tokens: its speculative and block runs use a build with $NO_AMX (see the script)"
    fi
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| model | main weight types | llama.cpp tg$N tok/s | decodebench greedy tok/s | ratio |"
    echo "| --- | --- | ---: | ---: | ---: |"
    declare -A PATHS
    while read -r name path; do
        PATHS[$name]=$path
        if [[ $# -gt 0 && ! " $* " == *" $name "* ]]; then continue; fi
        local lts="" dbs="" lt db ratio
        for ((round = 0; round < ROUNDS; round++)); do
            lts+=" $(llama_tg "$path")"
            dbs+=" $(db_tps --model "$name" | cut -d' ' -f1)"
        done
        read -r lt db ratio < <(summary "$lts" "$dbs")
        echo "| $name | $(weight_types "$path") | $lt | $db | $ratio |"
    done < <(installed_models)
    local t=qwen2.5-coder-1.5b d=qwen2.5-coder-0.5b
    if [[ -n ${PATHS[$t]:-} && -n ${PATHS[$d]:-} ]]; then
        echo
        echo "Speculative decoding, target $t, draft $d, $GAMMA draft tokens per step, greedy:"
        echo
        echo "| engine | plain tok/s | speculative tok/s | speedup | acceptance |"
        echo "| --- | ---: | ---: | ---: | --- |"
        local plains="" specs="" gs="" ss="" spec acc g s plain_m spec_m ratio lc_row="n/a"
        for ((round = 0; round < ROUNDS; round++)); do
            plains+=" $(llama_tg "${PATHS[$t]}")"
            read -r spec acc < <(llama_spec "${PATHS[$t]}" "${PATHS[$d]}")
            specs+=" $spec"
            g=$(DB_RAW=1 db_tps --model "$t")
            s=$(DB_RAW=1 db_tps --model "$t" --strategy speculative --draft "$d" --gamma "$GAMMA")
            gs+=" ${g%% *}"
            ss+=" ${s%% *}"
        done
        if [[ $specs != *n/a* ]]; then
            read -r plain_m spec_m ratio < <(summary "$plains" "$specs")
            lc_row="$plain_m | $spec_m | $ratio"
        fi
        echo "| llama.cpp (llama-bench tg$N; llama-speculative-simple --spec-draft-n-max $GAMMA) | $lc_row | $acc% of drafted tokens |"
        read -r plain_m spec_m ratio < <(summary "$gs" "$ss")
        echo "| decodebench (greedy; --strategy speculative --gamma $GAMMA) | $plain_m | $spec_m | $ratio | $(echo "$s" | cut -d' ' -f3) tokens per target forward |"
    fi
    if [[ -n ${PATHS[$t]:-} ]]; then
        echo
        echo "Block verification on $t: one forward over N new tokens after a 256-token cache (ms):"
        echo
        # One engine after the other (never side by side on the same cores), ROUNDS times; each
        # round's output is one "N MS" line per block size, rounds separated by a "-" line.
        local lc_blocks="" db_blocks_ms=""
        for ((round = 0; round < ROUNDS; round++)); do
            lc_blocks+="$(llama_blocks "${PATHS[$t]}")"$'\n-\n'
            db_blocks_ms+="$(db_blocks "$t")"$'\n-\n'
        done
        python3 - "$lc_blocks" "$db_blocks_ms" <<'EOF'
import statistics, sys
def rounds(text):
    out = []
    for chunk in text.split("\n-\n"):
        r = {int(n): float(ms) for n, ms in (line.split() for line in chunk.splitlines() if line.strip())}
        if r:
            out.append(r)
    return out
lcr, dbr = rounds(sys.argv[1]), rounds(sys.argv[2])
med = lambda rs, n: statistics.median([r[n] for r in rs if n in r]) if any(n in r for r in rs) else None
sizes = sorted({n for r in lcr + dbr for n in r})
lc, db = {n: med(lcr, n) for n in sizes}, {n: med(dbr, n) for n in sizes}
print(f"Medians of {max(len(lcr), len(dbr))} rounds; a ratio is the median of the rounds' ratios [their range].")
print()
print("| N | llama.cpp ms | decodebench ms | decodebench / llama.cpp | llama.cpp c(N)/c(1) | decodebench c(N)/c(1) |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
def ratios(f, unit=""):
    rs = [x for x in (f(a, b) for a, b in zip(lcr, dbr)) if x is not None]
    if not rs:
        return "n/a"
    return f"{statistics.median(rs):.2f}{unit}" + (f" [{min(rs):.2f}-{max(rs):.2f}]" if len(rs) > 1 else "")
for n in sizes:
    cell = lambda x: "n/a" if x is None else f"{x:.1f}"
    ratio = ratios(lambda a, b: b[n] / a[n] if n in a and n in b else None, "x")
    cl = ratios(lambda a, b: a[n] / a[1] if n in a and 1 in a else None)
    cd = ratios(lambda a, b: b[n] / b[1] if n in b and 1 in b else None)
    print(f"| {n} | {cell(lc[n])} | {cell(db[n])} | {ratio} | {cl} | {cd} |")
EOF
    fi
    echo
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

main "$@"
