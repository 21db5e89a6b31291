#!/usr/bin/env bash
# ops/bench_llamacpp.sh: duel's CPU engine side by side with llama.cpp on the same weights, same
# thread count, runs interleaved, medians (docs/BENCHMARKS.md, "CPU engine against llama.cpp").
# One command reruns all of it and prints a summary table; every step has a header:
#   1. llama.cpp  npm i -E node-llama-cpp@3.21.1 into the cache (no install scripts, no prebuilt
#                 binaries), clone the llama.cpp git bundle it carries, build llama-bench (the
#                 anchor) and llama-completion (the converter check) with cmake, Release, native
#                 CPU flags (GGML_NATIVE). Nothing of it enters this repository.
#   2. duel       a Release build in build-bench/ (CUDA off)
#   3. models     SmolLM2-135M-shaped random weights (tests/tools/make_random_model.py --preset
#                 smollm2-135m --dtype bf16) and models/default; GGUF f32, bf16 and q8_0 of each
#                 (tests/tools/hf_to_gguf.py)
#   4. check      greedy text: duel generate and llama-completion on the same prompt, f32 weights
#                 and KV on both sides, must agree up to llama.cpp's end of text or for 24
#                 characters (the converter's q/k permutation and tokenizer); the agreement of every
#                 format is printed
#   5. bench      --rounds rounds; in each, per model and format, duel bench forward (128-token
#                 prefill, 64 decode steps, 3 repeats) and llama-bench (pp128 and tg64, 3
#                 repetitions, and once more with 1 to take its CPU time apart from loading),
#                 alternating which runs first; then duel bench engine (1 sequence vs 8 forked
#                 candidates) per format on the SmolLM2 shape; load averages recorded
#   6. summary    medians over rounds: prompt processing and decode tokens/s of both, ratios duel
#                 / llama.cpp per round then their median, duel's decode as a share of the read
#                 bandwidth it measured in the same run; the same per CPU-second; the
#                 8-candidate ratio
# Options: --rounds N (default 5), --threads 1|2 (default 2: duel's caller and helper thread,
# llama.cpp -t 2, OpenBLAS 2; 1: one thread each), --omp-passive (OMP_WAIT_POLICY=passive for
# llama.cpp: its OpenMP threads spin at every barrier, and on a machine busy with other work a
# descheduled thread then stalls each of the hundreds of barriers of a token; measured here at
# load average 18: tg 0.6 tokens/s spinning, 21 passive), --formats "f32 bf16 q8" (default),
# --models "smollm2 default" (default), --cache DIR (default ~/.cache/duel-llamacpp; env
# DUEL_LLAMACPP_CACHE), --skip-check, --no-engine. Results: ${DUEL_BENCH_OUT:-bench-results}/
# llamacpp-<date>/ (logs, results.jsonl, summary.txt).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=ops/lib.sh
. ops/lib.sh

NODE_LLAMA_CPP_VERSION=3.21.1
rounds=5 threads=2 formats="f32 bf16 q8" models="smollm2 default" check=1 engine=1 omp_passive=0
cache=${DUEL_LLAMACPP_CACHE:-$HOME/.cache/duel-llamacpp}
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=${2:?--rounds needs a number}; shift ;;
    --threads) threads=${2:?--threads needs 1 or 2}; shift ;;
    --omp-passive) omp_passive=1 ;;
    --formats) formats=${2:?--formats needs a list}; shift ;;
    --models) models=${2:?--models needs a list}; shift ;;
    --cache) cache=${2:?--cache needs a folder}; shift ;;
    --skip-check) check=0 ;;
    --no-engine) engine=0 ;;
    -h | --help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ops/bench_llamacpp.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $threads in 1 | 2) ;; *) echo "ops/bench_llamacpp.sh: --threads is 1 or 2 (duel runs one helper thread)" >&2; exit 2 ;; esac
[ "$omp_passive" -eq 1 ] && export OMP_WAIT_POLICY=passive
out=${DUEL_BENCH_OUT:-bench-results}/llamacpp-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out" "$cache" || exit 2
out=$(cd "$out" && pwd)
results=$out/results.jsonl
PY=/usr/bin/python3
gguf_type() { case $1 in q8) echo q8_0 ;; *) echo "$1" ;; esac; }
load1() { cut -d' ' -f1 /proc/loadavg; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# cpu_of FILE CMD...: runs CMD (its stdout passes through) and writes its CPU seconds (user +
# system, every thread) to FILE.
cpu_of() {
    "$PY" -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(str(u.ru_utime + u.ru_stime))
sys.stdout.buffer.write(r.stdout)
sys.exit(r.returncode)' "$@"
}

duel_section "1. llama.cpp (node-llama-cpp@$NODE_LLAMA_CPP_VERSION, built natively)"
npmdir=$cache/npm-$NODE_LLAMA_CPP_VERSION
bundle=$npmdir/node_modules/node-llama-cpp/llama/gitRelease.bundle
if [ ! -f "$bundle" ]; then
    mkdir -p "$npmdir" && echo '{"name": "duel-llamacpp-anchor", "private": true}' >"$npmdir/package.json"
    (cd "$npmdir" && npm i -E "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" --ignore-scripts \
        --omit=optional --no-audit --no-fund) >"$out/npm.log" 2>&1 || { tail "$out/npm.log"; fail "npm install"; }
fi
src=$cache/llama.cpp-$NODE_LLAMA_CPP_VERSION
[ -d "$src/.git" ] || git clone -q "$bundle" "$src" || fail "git clone of $bundle"
llama_commit=$(git -C "$src" rev-parse --short HEAD)
if [ ! -x "$src/build/bin/llama-bench" ] || [ ! -x "$src/build/bin/llama-completion" ]; then
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF >"$out/llama-configure.log" 2>&1 || fail "llama.cpp configure (see $out/llama-configure.log)"
    cmake --build "$src/build" -j"$DUEL_JOBS" --target llama-bench llama-completion \
        >"$out/llama-build.log" 2>&1 || fail "llama.cpp build (see $out/llama-build.log)"
fi
LB=$src/build/bin/llama-bench LC=$src/build/bin/llama-completion
echo "llama.cpp $llama_commit from node-llama-cpp $NODE_LLAMA_CPP_VERSION: $LB"

duel_section "2. duel (build-bench/, Release)"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DDUEL_CUDA=OFF >"$out/duel-configure.log" 2>&1 ||
    fail "duel configure (see $out/duel-configure.log)"
cmake --build build-bench -j"$DUEL_JOBS" --target duel >"$out/duel-build.log" 2>&1 || fail "duel build (see $out/duel-build.log)"
DUEL=$PWD/build-bench/cli/duel
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
echo "duel $(git rev-parse --short HEAD): $DUEL; $("$DUEL" info | grep -i openblas | head -1)"

duel_section "3. models"
declare -A MODEL_DIR
for m in $models; do
    case $m in
    smollm2)
        MODEL_DIR[$m]=$cache/smollm2-135m-random
        [ -f "${MODEL_DIR[$m]}/model.safetensors" ] ||
            "$PY" tests/tools/make_random_model.py --preset smollm2-135m --dtype bf16 \
                --out "${MODEL_DIR[$m]}" >"$out/make-model.log" 2>&1 || fail "make_random_model.py"
        ;;
    default) MODEL_DIR[$m]=$PWD/models/default ;;
    *) fail "unknown model '$m' (smollm2, default)" ;;
    esac
    for f in $formats; do
        g=$cache/$m-$(gguf_type "$f").gguf
        if [ ! -f "$g" ] || [ "$g" -ot "${MODEL_DIR[$m]}/model.safetensors" ] || [ "$g" -ot tests/tools/hf_to_gguf.py ]; then
            "$PY" tests/tools/hf_to_gguf.py "${MODEL_DIR[$m]}" "$g" --type "$(gguf_type "$f")" || fail "hf_to_gguf.py $m $f"
        fi
        echo "$m $f: ${MODEL_DIR[$m]} -> $g"
    done
done

if [ "$check" -eq 1 ]; then
    duel_section "4. check: greedy text of duel and llama.cpp on the same GGUF weights"
    prompt="Question: What does tea mean? Answer:"
    for m in $models; do
        for f in $formats; do
            g=$cache/$m-$(gguf_type "$f").gguf
            want=$("$LC" -m "$g" -p "$prompt" -n 32 --temp 0 -t "$threads" -ctk f32 -ctv f32 \
                --no-display-prompt -no-cnv --no-warmup -s 1 --simple-io 2>"$out/check-llama-$m-$f.log")
            want=${want%% \[end of text\]*}  # llama-completion's end-of-generation marker
            got=$("$DUEL" generate --model "${MODEL_DIR[$m]}" --weights "$f" --prompt "$prompt" \
                --temperature 0 --max-new-tokens 32 2>"$out/check-duel-$m-$f.log")
            # Bytes that are no whole UTF-8 character (a random model's tokens) are printed raw by
            # llama.cpp and replaced by duel: compare the text without them.
            read -r same total < <("$PY" -c 'import os, sys
a, b = (os.fsencode(x).decode("utf-8", "replace").replace("\ufffd", "") for x in sys.argv[1:3])
n = 0
while n < min(len(a), len(b)) and a[n] == b[n]: n += 1
print(n, len(a))' "$want" "$got")
            echo "$m $f: llama.cpp '${want:0:60}' | duel '${got:0:60}' | first $same of $total characters agree"
            # f32 on both sides: the same text until llama.cpp's end of text, or for 24 characters
            # at least (a random model's near-ties part the two sums' rounding later; a wrong q/k
            # permutation or tokenizer parts them at once)
            if [ "$f" = f32 ] && [ "$same" -lt "$total" ] && [ "$same" -lt 24 ]; then
                fail "$m: duel and llama.cpp disagree on f32 weights (the converter is wrong)"
            fi
        done
    done
fi

duel_section "5. bench: $rounds interleaved rounds, $threads threads"
# nproc would count OMP_NUM_THREADS (exported above), not the machine's cores
cores=$(getconf _NPROCESSORS_ONLN)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $cores cores, load average $(cut -d' ' -f1-3 /proc/loadavg); OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset)}"
if [ "$omp_passive" -eq 0 ] && [ "$threads" -gt 1 ] && [ "$(load1 | cut -d. -f1)" -ge "$cores" ]; then
    echo "warning: the load average is at least the core count: llama.cpp's spinning OpenMP threads will stall (consider --omp-passive or --threads 1)"
fi
for ((r = 1; r <= rounds; r++)); do
    for m in $models; do
        for f in $formats; do
            g=$cache/$m-$(gguf_type "$f").gguf
            run_duel() {
                local l0; l0=$(load1)
                "$DUEL" bench forward --model "${MODEL_DIR[$m]}" --weights "$f" --threads "$threads" \
                    --prefill 128 --decode 64 --repeats 3 --json 2>>"$out/duel-forward.log" | tail -1 >"$out/last.json" || return 1
                "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({"program": "duel", "model": sys.argv[2], "format": sys.argv[3], "round": int(sys.argv[4]),
    "pp": d["prefill_tokens_per_s_median"], "tg": d["decode_tokens_per_s_median"],
    "pp_cpu": d["prefill_tokens_per_cpu_s"], "tg_cpu": d["decode_tokens_per_cpu_s"],
    "weight_bytes": d["decode_weight_bytes_per_token"], "read_gb_per_s": d["read_gb_per_s"],
    "load": [float(sys.argv[5]), float(sys.argv[6])]}))' "$out/last.json" "$m" "$f" "$r" "$l0" "$(load1)" >>"$results"
            }
            run_llama() {
                # Each test runs with -r 1 and -r 3: the wall figure is the -r 3 run's mean, the
                # CPU-second figure the two extra repetitions' CPU time (the children's rusage),
                # which leaves out loading and warm-up. tg starts at depth 0 (duel's decode after
                # its 128-token prefill reads a little more KV: 1-2 % of a step here).
                local l0 pp tg; l0=$(load1)
                cpu_of "$out/cpu1" "$LB" -m "$g" -p 128 -n 0 -t "$threads" -r 1 -o json >/dev/null 2>>"$out/llama-bench.log" || return 1
                pp=$(cpu_of "$out/cpu3" "$LB" -m "$g" -p 128 -n 0 -t "$threads" -r 3 -o json 2>>"$out/llama-bench.log") || return 1
                local pp_cpu; pp_cpu=$("$PY" -c 'import sys; print(2 * 128 / max(1e-9, float(open(sys.argv[2]).read()) - float(open(sys.argv[1]).read())))' "$out/cpu1" "$out/cpu3")
                cpu_of "$out/cpu1" "$LB" -m "$g" -p 0 -n 64 -t "$threads" -r 1 -o json >/dev/null 2>>"$out/llama-bench.log" || return 1
                tg=$(cpu_of "$out/cpu3" "$LB" -m "$g" -p 0 -n 64 -t "$threads" -r 3 -o json 2>>"$out/llama-bench.log") || return 1
                local tg_cpu; tg_cpu=$("$PY" -c 'import sys; print(2 * 64 / max(1e-9, float(open(sys.argv[2]).read()) - float(open(sys.argv[1]).read())))' "$out/cpu1" "$out/cpu3")
                "$PY" -c 'import json, sys
pp, tg = json.loads(sys.argv[1])[0], json.loads(sys.argv[2])[0]
print(json.dumps({"program": "llama.cpp", "model": sys.argv[3], "format": sys.argv[4], "round": int(sys.argv[5]),
    "pp": pp["avg_ts"], "tg": tg["avg_ts"], "pp_cpu": float(sys.argv[8]), "tg_cpu": float(sys.argv[9]),
    "load": [float(sys.argv[6]), float(sys.argv[7])]}))' "$pp" "$tg" "$m" "$f" "$r" "$l0" "$(load1)" "$pp_cpu" "$tg_cpu" >>"$results"
            }
            if [ $((r % 2)) -eq 1 ]; then
                run_duel || fail "duel bench forward ($m $f)"
                run_llama || fail "llama-bench ($m $f)"
            else
                run_llama || fail "llama-bench ($m $f)"
                run_duel || fail "duel bench forward ($m $f)"
            fi
            echo "round $r/$rounds $m $f: $(tail -2 "$results" | "$PY" -c 'import json, sys
for l in sys.stdin: d = json.loads(l); print("%s pp %.1f tg %.1f;" % (d["program"], d["pp"], d["tg"]), end=" ")')"
        done
    done
done
if [ "$engine" -eq 1 ] && [[ " $models " == *" smollm2 "* ]]; then
    for f in $formats; do
        l0=$(load1)
        "$DUEL" bench engine --model "${MODEL_DIR[smollm2]}" --weights "$f" --concurrency 1,8 \
            --rounds "$rounds" --decode 64 --duels 1 --turns 2 --duel-new 8 --turn-answer 8 --json \
            2>>"$out/duel-engine.log" | tail -1 >"$out/last.json" || fail "duel bench engine ($f)"
        "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({"program": "duel-engine", "model": "smollm2", "format": sys.argv[2],
    "one": d["decode_tokens_per_s"]["1"], "eight": d["decode_tokens_per_s"]["8"],
    "forked": d["decode_tokens_per_s_forked_m"], "ratio_forked": d["decode_ratio_forked_m"]["median"],
    "ratio_eight": d["decode_ratio_to_one"]["8"]["median"], "bw_fraction_one": d.get("decode_fraction_of_bandwidth"),
    "load": [float(sys.argv[3]), float(sys.argv[4])]}))' "$out/last.json" "$f" "$l0" "$(load1)" >>"$results"
        echo "engine $f: $(tail -1 "$results")"
    done
fi

duel_section "6. summary (medians over $rounds rounds; duel / llama.cpp)"
"$PY" - "$results" "$llama_commit" "$threads" "${OMP_WAIT_POLICY:-unset}" <<'EOF' | tee "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"llama.cpp {sys.argv[2]} (node-llama-cpp 3.21.1), {sys.argv[3]} threads each, OMP_WAIT_POLICY={sys.argv[4]}; load average "
      f"(1 min) {min(min(r['load']) for r in rows):.1f}-{max(max(r['load']) for r in rows):.1f} during the runs")
print("| model | weights | duel pp128 t/s | llama.cpp pp128 t/s | **pp ratio** | duel tg64 t/s | "
      "llama.cpp tg64 t/s | **tg ratio** | duel decode / read bandwidth |")
print("|---|---|---|---|---|---|---|---|---|")
keys = []
for r in rows:
    if r["program"] in ("duel", "llama.cpp") and (r["model"], r["format"]) not in keys:
        keys.append((r["model"], r["format"]))
def pick(prog, m, f):
    return [r for r in rows if r["program"] == prog and r["model"] == m and r["format"] == f]
def ratio(d, l, key):  # per-round ratios (the two ran seconds apart), then their median
    return med([a[key] / b[key] for a in d for b in l if a["round"] == b["round"]])
for m, f in keys:
    d, l = pick("duel", m, f), pick("llama.cpp", m, f)
    bw = med([r["tg"] * r["weight_bytes"] / 1e9 / r["read_gb_per_s"] for r in d])
    print(f"| {m} | {f} | {med([r['pp'] for r in d]):.1f} | {med([r['pp'] for r in l]):.1f} | "
          f"**{ratio(d, l, 'pp'):.2f}x** | {med([r['tg'] for r in d]):.1f} | {med([r['tg'] for r in l]):.1f} | "
          f"**{ratio(d, l, 'tg'):.2f}x** | {100 * bw:.0f} % |")
print()
print("Per CPU-second (the processes' CPU time: what other work on the machine does not lower; "
      "meaningful with --threads 1, where neither program spins; llama.cpp's is the difference of "
      "two runs' CPU time, noise where a test takes milliseconds, as pp128 of models/default does):")
print("| model | weights | duel pp128 t/cpu-s | llama.cpp pp128 t/cpu-s | **pp ratio** | duel tg64 t/cpu-s | "
      "llama.cpp tg64 t/cpu-s | **tg ratio** |")
print("|---|---|---|---|---|---|---|---|")
for m, f in keys:
    d, l = pick("duel", m, f), pick("llama.cpp", m, f)
    print(f"| {m} | {f} | {med([r['pp_cpu'] for r in d]):.1f} | {med([r['pp_cpu'] for r in l]):.1f} | "
          f"**{ratio(d, l, 'pp_cpu'):.2f}x** | {med([r['tg_cpu'] for r in d]):.1f} | "
          f"{med([r['tg_cpu'] for r in l]):.1f} | **{ratio(d, l, 'tg_cpu'):.2f}x** |")
eng = [r for r in rows if r["program"] == "duel-engine"]
if eng:
    print()
    print("| weights | 1 sequence t/s | 8 sequences t/s (ratio) | M = 8 forked t/s (**ratio**) | 1 sequence / read bandwidth |")
    print("|---|---|---|---|---|")
    for r in eng:
        bw = f"{100 * r['bw_fraction_one']:.0f} %" if r.get("bw_fraction_one") else "-"
        print(f"| {r['format']} | {r['one']:.1f} | {r['eight']:.1f} ({r['ratio_eight']:.2f}x) | "
              f"{r['forked']:.1f} (**{r['ratio_forked']:.2f}x**) | {bw} |")
EOF
echo "results: $out"
