#!/usr/bin/env bash
# ops/bench_cuda.sh: the one prepared script of a session with a GPU (issue 23, docs/CUDA.md):
# verify the CUDA backend and measure it in one call, well inside a 10-minute timeout. Steps,
# each with its own time limit, a status (PASS, FAIL, SKIP, TIMEOUT) and a line in the summary:
#   probe      nvidia-smi, the device the build sees
#   build      build-cuda/ with CUDA on (sm_NN from the device); or, with a bundle prepared
#              beforehand (--prepare), the bundle's binaries (no compiler time on the GPU)
#   tests      test_cuda_api, test_cuda_kernels, test_cuda_erm and the compute contract on the
#              cuda backend (test_compute_contract cuda); a SKIP on a GPU machine is a FAIL
#   memcheck   compute-sanitizer --tool memcheck on each of those tests
#   models     the default model, and random SmolLM2-135M- and Llama-3.2-1B-shaped models in bf16
#              (tests/tools/make_random_model.py; torch is there)
#   equal      compare_backends: CPU engine against CUDA engine on each model: greedy tokens
#              identical for 64 steps (or parting at a near tie), logits rel. err. < 2e-2, the
#              same duel pairs for the same seeds
#   kernels    bench_cuda_kernels --json: the copy bandwidth (the roofline's denominator)
#   decode     duel bench engine --compute cuda: tokens/s at 1, 8, 64, 256 sequences; batch 1
#              against the HBM roofline (bf16 weight bytes + KV bytes of a step over the copy
#              bandwidth)
#   duel       duel bench engine --duel: time to duel for M = 8 x 256 tokens
#   hf         Hugging Face transformers generate() on the same model and machine (the anchor),
#              tokens/s at the same batch sizes
#   loop       duel bench loop with engine.backend=cuda and trainer.weight_transport=cuda_ipc:
#              vote -> serving latency, snapshots through the transport
# Everything goes to $OUT (the device tool's output folder) or --out DIR: summary.txt (what a
# session pastes into docs/BENCHMARKS.md), results.json, every step's log, and figures (PNG).
#
# --dry-run runs every step's plumbing on a machine without a GPU (this one): the existing
# release build, the CPU against the test double ("reference") instead of CUDA, --compute cpu,
# small models and short runs; steps that need a device SKIP. So a first run on a GPU does not
# die on a typo.
#
# Options: --dry-run; --prepare DIR (here, before a GPU session: build with CUDA for --arch and
# pack the binaries and the libraries the device lacks into DIR, to carry); --bundle DIR (use
# them; default .gpu-bundle when present); --build (compile on the device even with a bundle);
# --arch NN (default: the device's, else 90); --out DIR; --only STEP[,STEP] (run just these);
# --budget SECONDS (default 480: every step's limit is cut to what is left of it, and a step that
# would start with less than 15 s left is skipped, so that the whole run ends in time to rerun).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

dry=0 prepare= bundle= force_build=0 arch= out_dir= only= budget=480
while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) dry=1 ;;
    --prepare) prepare=${2:?--prepare needs a folder}; shift ;;
    --bundle) bundle=${2:?--bundle needs a folder}; shift ;;
    --build) force_build=1 ;;
    --arch) arch=${2:?--arch needs a number like 90}; shift ;;
    --out) out_dir=${2:?--out needs a folder}; shift ;;
    --only) only=${2:?--only needs step names}; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    -h | --help) sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ops/bench_cuda.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY=${DUEL_PYTHON:-python3}
[ $dry -eq 1 ] && [ -x /usr/bin/python3 ] && PY=/usr/bin/python3 # Debian's, with torch

# ---- --prepare: a bundle for a GPU machine that has CUDA but not our build's libraries ----------
if [ -n "$prepare" ]; then
    set -e
    a=${arch:-90}
    cmake -S . -B build-gpu -DDUEL_CUDA=ON -DDUEL_CUDA_ARCHITECTURES="$a" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build-gpu -j"$(nproc)" --target duel test_cuda_api test_cuda_kernels test_cuda_erm \
        test_compute_contract bench_cuda_kernels compare_backends
    rm -rf "$prepare.tmp" && mkdir -p "$prepare.tmp/bin" "$prepare.tmp/lib"
    bins="build-gpu/cli/duel build-gpu/tests/test_cuda_api build-gpu/tests/test_cuda_kernels \
          build-gpu/tests/test_cuda_erm build-gpu/tests/test_compute_contract \
          build-gpu/tests/bench_cuda_kernels build-gpu/tests/compare_backends $(command -v redis-server)"
    for b in $bins; do cp "$b" "$prepare.tmp/bin/" && strip "$prepare.tmp/bin/$(basename "$b")"; done
    # Every library the binaries load except the C runtime and CUDA's (the device has its own).
    for b in $bins; do ldd "$b"; done | awk '/=>/ {print $3}' | sort -u |
        grep -Ev '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so' |
        while read -r l; do cp -L "$l" "$prepare.tmp/lib/"; done
    git rev-parse HEAD >"$prepare.tmp/commit"
    echo "sm_$a $(date -u +%FT%TZ)" >"$prepare.tmp/built"
    tar -C "$prepare.tmp" -cJf "$prepare.tmp/../bundle.tar.xz" bin lib commit built
    rm -rf "$prepare" && mkdir -p "$prepare" && mv "$prepare.tmp/../bundle.tar.xz" "$prepare/" &&
        rm -rf "$prepare.tmp"
    du -h "$prepare/bundle.tar.xz"
    echo "carry $prepare (it must be git-ignored); on the GPU: ops/bench_cuda.sh --bundle $prepare"
    exit 0
fi

OUT=${out_dir:-${OUT:-bench-results/cuda-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
RESULTS=$OUT/results.jsonl # one JSON object per figure-producing step; results.json at the end
: >"$RESULTS"
declare -A STATUS SECONDS_TAKEN
ORDER=()
T_START=$(date +%s)

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
section() { printf '\n===== %s =====\n' "$*"; }
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
# run_step NAME LIMIT_SECONDS FUNCTION: runs the (exported) function in its own bash under a time
# limit, its output in $OUT/NAME.log; the exit status 77 means SKIP.
run_step() {
    local name=$1 limit=$2 fn=$3
    ORDER+=("$name")
    if ! wanted "$name"; then STATUS[$name]=SKIP; SECONDS_TAKEN[$name]=0; return 0; fi
    local left=$((budget - ($(date +%s) - T_START) - 15))
    if [ $left -lt 15 ]; then
        STATUS[$name]=NOTIME; SECONDS_TAKEN[$name]=0
        echo "$name: not run: the ${budget}s budget is spent"
        return 0
    fi
    [ "$limit" -gt $left ] && limit=$left
    section "$name (limit ${limit}s)"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" bash -c "set -uo pipefail; $fn" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    SECONDS_TAKEN[$name]=$((SECONDS - t0))
    case $rc in
    0) STATUS[$name]=PASS ;;
    77) STATUS[$name]=SKIP ;;
    124 | 137) STATUS[$name]=TIMEOUT ;;
    *) STATUS[$name]=FAIL ;;
    esac
    echo "$name: ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s"
    return 0
}

# ---- binaries: a bundle, a build on the device, or (dry run) this machine's build ---------------
[ -z "$bundle" ] && [ -f .gpu-bundle/bundle.tar.xz ] && [ $force_build -eq 0 ] && bundle=.gpu-bundle
BIN=
LIBS=
step_build() {
    if [ $dry -eq 1 ]; then
        local b=${DUEL_BUILD_DIR:-build}
        cmake --build "$b" -j"$(nproc)" --target duel test_cuda_api test_cuda_kernels test_cuda_erm \
            test_compute_contract bench_cuda_kernels compare_backends 2>&1 | tail -3
        [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
        mkdir -p "$OUT/bin"
        for t in cli/duel tests/test_cuda_api tests/test_cuda_kernels tests/test_cuda_erm \
            tests/test_compute_contract tests/bench_cuda_kernels tests/compare_backends; do
            ln -sf "$ROOT/$b/$t" "$OUT/bin/$(basename $t)"
        done
        echo "dry run: the binaries of $b/"
        return 0
    fi
    if [ -n "$bundle" ]; then
        mkdir -p /tmp/duel-bundle && tar -C /tmp/duel-bundle -xJf "$bundle/bundle.tar.xz" || return 1
        echo "bundle: commit $(cat /tmp/duel-bundle/commit), built $(cat /tmp/duel-bundle/built)"
        [ "$(cat /tmp/duel-bundle/commit)" = "$(git rev-parse HEAD 2>/dev/null)" ] ||
            echo "WARNING: the bundle was built from another commit than this tree's"
        return 0
    fi
    local a=${arch:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')}
    a=${a:-90}
    local extra=()
    # NCCL may live in pip's nvidia-nccl package rather than the CUDA tree.
    local nccl_dir
    nccl_dir=$("$PY" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null)
    if [ -n "$nccl_dir" ] && [ -d "$nccl_dir/lib" ]; then
        extra+=(-DNCCL_LIBRARY="$(ls "$nccl_dir"/lib/libnccl.so* | head -1)" -DNCCL_INCLUDE_DIR="$nccl_dir/include")
    fi
    cmake -S . -B build-cuda -DDUEL_CUDA=ON -DDUEL_CUDA_ARCHITECTURES="$a" -DCMAKE_BUILD_TYPE=Release \
        "${extra[@]}" || return 1
    cmake --build build-cuda -j"$(nproc)" --target duel test_cuda_api test_cuda_kernels test_cuda_erm \
        test_compute_contract bench_cuda_kernels compare_backends 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ]
}
# Where every binary is and what they load: CUDA's libraries from the device's toolkit or pip.
setup_paths() {
    if [ $dry -eq 1 ]; then BIN=$OUT/bin; return; fi
    if [ -n "$bundle" ]; then
        BIN=/tmp/duel-bundle/bin
        LIBS=/tmp/duel-bundle/lib
    else
        BIN=$OUT/bin
        mkdir -p "$BIN"
        for t in cli/duel tests/test_cuda_api tests/test_cuda_kernels tests/test_cuda_erm \
            tests/test_compute_contract tests/bench_cuda_kernels tests/compare_backends; do
            ln -sf "$ROOT/build-cuda/$t" "$BIN/$(basename $t)"
        done
    fi
    local d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib $("$PY" - <<'EOF' 2>/dev/null
import importlib, os
for m in ("nvidia.nccl", "nvidia.cublas", "nvidia.cuda_runtime"):
    try:
        p = os.path.join(os.path.dirname(importlib.import_module(m).__file__), "lib")
        if os.path.isdir(p): print(p)
    except Exception:
        pass
EOF
    ); do [ -d "$d" ] && LIBS=${LIBS:+$LIBS:}$d; done
}
# bin NAME ARGS...: one of our binaries, with its libraries (not exported to python's processes).
bin() {
    local name=$1
    shift
    LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PATH=$BIN:$PATH "$BIN/$name" "$@"
}

# ---- steps -------------------------------------------------------------------------------------
step_probe() {
    if [ $dry -eq 1 ]; then echo "dry run: no GPU expected"; return 77; fi
    nvidia-smi || return 1
    nvidia-smi --query-gpu=name,compute_cap,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    command -v compute-sanitizer || echo "no compute-sanitizer on the PATH"
}

TEST_MODELS=
make_test_models() { # the fixture models the contract test reads ($TEST_MODELS/test-models)
    TEST_MODELS=$OUT/work
    [ -d "$TEST_MODELS/test-models/tiny-llama-f32" ] && return 0
    mkdir -p "$TEST_MODELS"
    "$PY" tests/tools/make_random_model.py --test-fixture "$TEST_MODELS/test-models" >/dev/null
}

step_tests() {
    make_test_models || { echo "cannot make the fixture models (torch?)"; return 1; }
    local failed=0 t
    for t in "test_cuda_api" "test_cuda_kernels" "test_cuda_erm" "test_compute_contract cuda"; do
        echo "--- $t"
        # shellcheck disable=SC2086
        DUEL_BUILD_DIR=$TEST_MODELS DUEL_SOURCE_DIR=$ROOT bin $t >"$OUT/test.$(echo $t | tr ' ' _).log" 2>&1
        local rc=$?
        tail -4 "$OUT/test.$(echo $t | tr ' ' _).log"
        if [ $rc -eq 77 ] || grep -q '^SKIP' "$OUT/test.$(echo $t | tr ' ' _).log"; then
            if [ $dry -eq 1 ]; then echo "$t: SKIP (dry run: expected)"; else echo "$t: SKIPPED ON A GPU MACHINE: FAIL"; failed=1; fi
        elif [ $rc -ne 0 ]; then
            echo "$t: FAIL (exit $rc)"
            failed=1
        fi
    done
    # The contract on the CPU and the test double too: the same file, every backend.
    for b in cpu reference; do
        DUEL_BUILD_DIR=$TEST_MODELS bin test_compute_contract $b >"$OUT/test.contract_$b.log" 2>&1 ||
            { echo "test_compute_contract $b: FAIL"; failed=1; }
    done
    return $failed
}

step_memcheck() {
    if ! command -v compute-sanitizer >/dev/null; then echo "no compute-sanitizer"; return 77; fi
    if [ $dry -eq 1 ]; then echo "dry run: compute-sanitizer needs a GPU"; return 77; fi
    make_test_models || return 1
    local failed=0 t
    for t in "test_cuda_api" "test_cuda_kernels" "test_cuda_erm" "test_compute_contract cuda"; do
        echo "--- memcheck $t"
        # shellcheck disable=SC2086
        DUEL_BUILD_DIR=$TEST_MODELS LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
            timeout 50 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
            "$BIN"/$t >"$OUT/memcheck.$(echo $t | tr ' ' _).log" 2>&1
        local rc=$?
        tail -3 "$OUT/memcheck.$(echo $t | tr ' ' _).log"
        case $rc in
        0) echo "$t: memcheck clean" ;;
        124) echo "$t: memcheck TIMEOUT (50 s)"; failed=1 ;;
        *) echo "$t: memcheck FAIL (exit $rc)"; failed=1 ;;
        esac
    done
    return $failed
}

# The models of the checks: the default one and the random presets (MODEL_PRESETS), in bf16.
step_models() {
    local p
    for p in $MODEL_PRESETS; do
        local d=$OUT/work/models/$p
        if [ ! -f "$d/model.safetensors" ]; then
            "$PY" tests/tools/make_random_model.py --preset "$p" --dtype bf16 --out "$d" || return 1
        fi
        du -sh "$d"
    done
}

step_equal() {
    local b=cuda failed=0 m
    [ $dry -eq 1 ] && b=reference
    for m in $MODEL_DIRS; do
        local name
        name=$(basename "$m")
        echo "--- $name: cpu against $b"
        local steps=64 duels=4
        bin compare_backends --model "$m" --a cpu --b $b --steps $steps --duels $duels --m 4 --new 32 \
            --json | tee "$OUT/equal.$name.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
        tail -1 "$OUT/equal.$name.log" | sed "s/^/{\"step\":\"equal\",\"name\":\"$name\",\"r\":/; s/\$/}/" >>"$RESULTS"
    done
    return $failed
}

step_kernels() {
    if [ $dry -eq 1 ]; then echo "dry run: the kernel benchmark needs a GPU"; return 77; fi
    bin bench_cuda_kernels --json --quick | tee "$OUT/kernels.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    tail -1 "$OUT/kernels.out" | sed 's/^/{"step":"kernels","r":/; s/$/}/' >>"$RESULTS"
}

# The model the speed figures are measured on (the Llama-3.2-1B shape; the dry run's tiny one).
BENCH_MODEL=
step_decode() {
    local compute=cuda levels=1,8,64,256 decode=128 prompt=128 kv=16384
    [ $dry -eq 1 ] && compute=cpu levels=1,8 decode=8 prompt=16 kv=64
    bin duel bench engine --model "$BENCH_MODEL" --compute $compute --concurrency $levels \
        --decode $decode --prompt $prompt --duel-m 8 --rounds 1 --turns 2 --kv-mb $kv --json |
        tee "$OUT/decode.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    tail -1 "$OUT/decode.out" | sed 's/^/{"step":"decode","r":/; s/$/}/' >>"$RESULTS"
}

step_duel() {
    local compute=cuda m=8 new=256 duels=5 kv=16384
    [ $dry -eq 1 ] && compute=cpu new=8 duels=2 kv=64
    bin duel bench engine --model "$BENCH_MODEL" --compute $compute --duel \
        --duel-m $m --duel-new $new --duels $duels --prompt 64 --kv-mb $kv --json | tee "$OUT/duel.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    tail -1 "$OUT/duel.out" | sed 's/^/{"step":"duel","r":/; s/$/}/' >>"$RESULTS"
}

step_hf() {
    local batches=1,8,64,256 new=128 prompt=128 device=cuda
    [ $dry -eq 1 ] && batches=1,8 new=8 prompt=16 device=cpu
    "$PY" ops/hf_generate_bench.py --model "$BENCH_MODEL" --device $device \
        --batches $batches --new $new --prompt $prompt --json | tee "$OUT/hf.out"
    local rc=${PIPESTATUS[0]}
    [ $rc -eq 0 ] || return $rc
    tail -1 "$OUT/hf.out" | sed 's/^/{"step":"hf","r":/; s/$/}/' >>"$RESULTS"
}

step_loop() {
    local votes=96 compute=cuda transport=cuda_ipc
    [ $dry -eq 1 ] && votes=16 compute=cpu transport=file
    local dir=$OUT/work/loop
    mkdir -p "$dir"
    "$PY" - "$dir" <<'EOF'
import json, sys
d = sys.argv[1]
words = [("cat", "a small domesticated feline"), ("river", "a large natural stream of water"),
         ("apple", "fruit with red or yellow or green skin"), ("stone", "a lump of hard mineral"),
         ("bread", "food made from dough of flour"), ("cloud", "a visible mass of water droplets"),
         ("horse", "a hoofed mammal used for riding"), ("music", "an artistic form of sounds"),
         ("table", "a piece of furniture with a flat top"), ("winter", "the coldest season")]
with open(f"{d}/prompts.jsonl", "w") as f:
    for w, g in words[:8]:
        f.write(json.dumps({"prompt": f"Define {w}.", "reference": g}) + "\n")
with open(f"{d}/held-out.jsonl", "w") as f:
    for w, g in words[8:]:
        f.write(json.dumps({"prompt": f"Define {w}.", "reference": g}) + "\n")
EOF
    bin duel bench loop --model "$ROOT/models/default" --prompts "$dir/prompts.jsonl" \
        --held-out "$dir/held-out.jsonl" --held-out-count 2 --eval-samples 0 --votes $votes \
        --max-new-tokens 24 --keep "$dir/work" --json \
        --set engine.backend=$compute --set trainer.weight_transport=$transport \
        --set trainer.publish_every=2 --set trainer.burn_in=0 | tee "$OUT/loop.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    tail -1 "$OUT/loop.out" | sed 's/^/{"step":"loop","r":/; s/$/}/' >>"$RESULTS"
    # Snapshots served through the transport, not their folders (the adapter logs a fallback).
    if grep -q "loading its folder" "$dir/work"/*.log "$OUT/loop.out" 2>/dev/null; then
        echo "some snapshots fell back to their folder:"
        grep -h "loading its folder" "$dir/work"/*.log "$OUT/loop.out" 2>/dev/null | head -3
        [ $dry -eq 1 ] || return 1
    fi
}

# ---- run ---------------------------------------------------------------------------------------
MODEL_PRESETS="smollm2-135m llama3.2-1b"
[ $dry -eq 1 ] && MODEL_PRESETS="tiny-llama tiny-neox"
MODEL_DIRS="$ROOT/models/default"
for p in $MODEL_PRESETS; do MODEL_DIRS="$MODEL_DIRS $OUT/work/models/$p"; done
BENCH_MODEL=$OUT/work/models/${MODEL_PRESETS##* }
export dry ROOT OUT PY RESULTS bundle arch MODEL_PRESETS MODEL_DIRS BENCH_MODEL
export -f say section bin make_test_models step_build step_probe step_tests step_memcheck \
    step_models step_equal step_kernels step_decode step_duel step_hf step_loop
say "ops/bench_cuda.sh $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null)$([ $dry -eq 1 ] && echo ' (DRY RUN: no GPU, cpu against the test double)')"
run_step probe 30 step_probe
run_step build 420 step_build
setup_paths
export BIN LIBS
say "binaries: $BIN${LIBS:+ (libraries: $LIBS)}"
run_step tests 150 step_tests
run_step memcheck 220 step_memcheck
run_step models 240 step_models
run_step equal 300 step_equal
run_step kernels 90 step_kernels
run_step decode 240 step_decode
run_step duel 150 step_duel
run_step hf 240 step_hf
run_step loop 240 step_loop

section "summary"
"$PY" ops/bench_cuda_report.py --results "$RESULTS" --out "$OUT" --model "$BENCH_MODEL" \
    --dry-run $dry 2>&1 | tee -a "$SUMMARY"
say ""
for s in "${ORDER[@]}"; do say "$(printf '%-9s %-8s %4ss' "$s" "${STATUS[$s]}" "${SECONDS_TAKEN[$s]}")"; done
say "total $(($(date +%s) - T_START)) s; results in $OUT"
fail=0
for s in "${ORDER[@]}"; do [ "${STATUS[$s]}" = FAIL ] || [ "${STATUS[$s]}" = TIMEOUT ] && fail=1; done
exit $fail
