#!/usr/bin/env bash
# test_cli.sh: tests the `duel` executable's command-line behaviour (cli/): every command's --help
# exits 0 and documents every flag; unknown commands and options, bad values and invalid UTF-8
# exit 2 with a message naming the problem; a missing model directory is a clear error (exit 1);
# --json puts one JSON object on the last stdout line; `bench engine` checks its options against
# the shipped model before any run and its defaults fit it; and, on a random test model made by
# tests/tools/make_random_model.py, generation is deterministic per seed, chats, streams, and
# refuses a prompt longer than the context. `duel train` and `duel serve` take the shared
# configuration (--config, --set, DUEL_*) with errors naming the dotted path, flags winning.
# Usage: test_cli.sh PATH/TO/duel. Exits 0 when all pass, 1 on a failure, 77 (ctest's skip) when
# the model checks could not run (no torch), after printing a SKIP line.
set -u
DUEL=${1:?usage: test_cli.sh PATH/TO/duel}
SRC=${DUEL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${DUEL_PYTHON:-/usr/bin/python3}
TAG=cli
# shellcheck source=tests/tools/cli_test_lib.sh
source "$(dirname "$0")/cli_test_lib.sh"

# json_last_line FILE EXPR: the last line of FILE is a JSON object d for which EXPR is true.
json_last_line() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
d = json.loads(lines[-1])
assert isinstance(d, dict), "not an object"
ok = eval(sys.argv[2], {"d": d})
if not ok:
    print("JSON check failed:", sys.argv[2], d)
sys.exit(0 if ok else 1)
EOF
}

echo "== top level"
expect 0 'generate' -- --help
expect 0 'info' -- --help
expect 0 'bench' -- help
expect 0 'duel [0-9]' -- --version
expect 2 "unknown command 'frobnicate'" -- frobnicate
expect 2 'usage' --
expect 0 '--max-new-tokens' -- help generate

echo "== --help of every command documents every flag"
declare -A FLAGS=(
    [info]="--json --blas-coretype"
    [generate]="--model --prompt --chat --interactive --system --template --temperature --top-p --top-k --seed --max-new-tokens --context --n --duel --strategy --reference --beta --arena-model --erm --weights --kv-dtype --compute"
    [bench forward]="--model --weights --threads --prefill --decode --repeats --sgemm-size --bandwidth-mib --bandwidth-threads --no-limits --json"
    [bench machine]="--sgemm-size --bandwidth-mib --bandwidth-threads --repeats --json"
)
for cmd in info generate "bench forward" "bench machine"; do
    # shellcheck disable=SC2086
    out=$("$DUEL" $cmd --help 2>&1)
    rc=$?
    [ $rc -eq 0 ] || fail "duel $cmd --help exited $rc"
    grep -q "^usage: duel $cmd" <<<"$out" || fail "duel $cmd --help has no usage line"
    for flag in ${FLAGS[$cmd]}; do
        grep -Eq -- "^  $flag( |$)" <<<"$out" || fail "duel $cmd --help does not document $flag"
    done
    # ... and nothing undocumented: every option line's flag is in the list above.
    for flag in $(grep -Eo -- '^  --[a-z-]+' <<<"$out"); do
        [ "$flag" = "--help" ] && continue
        grep -qw -- "$flag" <<<"${FLAGS[$cmd]}" || fail "duel $cmd documents $flag that this test does not know"
    done
    pass
done
expect 0 'forward' -- bench --help
expect 0 'loop' -- bench --help
expect 0 'vote -> serving|XADD' -- bench loop --help
expect 2 '--prompts and --held-out are required' -- bench loop
expect 1 'nonexistent.jsonl' -- bench loop --prompts /nonexistent.jsonl --held-out /nonexistent.jsonl
expect 1 'unknown section "bogus"' -- bench loop --set bogus.key=1 --prompts /dev/null --held-out /dev/null
# --control: a missing, malformed or reference-less file fails before any work, naming the file
printf '%s\n' '{"prompt": "Define tea.", "reference": "a beverage"}' >"$TMP/qa.jsonl"
printf 'not json\n' >"$TMP/bad-control.jsonl"
printf '%s\n' '{"prompt": "Define tea."}' >"$TMP/noref-control.jsonl"
expect 1 "$TMP/missing-control.jsonl: No such file" -- bench loop --prompts "$TMP/qa.jsonl" --held-out "$TMP/qa.jsonl" --control "$TMP/missing-control.jsonl"
expect 1 "$TMP/bad-control.jsonl:1: not JSON" -- bench loop --prompts "$TMP/qa.jsonl" --held-out "$TMP/qa.jsonl" --control "$TMP/bad-control.jsonl"
expect 1 "$TMP/noref-control.jsonl:1: no \"reference\"" -- bench loop --prompts "$TMP/qa.jsonl" --held-out "$TMP/qa.jsonl" --control "$TMP/noref-control.jsonl"
expect 0 'ceiling' -- bench trainer --help
expect 2 "--prompt-tokens '9:4': expected MIN:MAX" -- bench trainer --prompt-tokens 9:4
expect 2 "--response-tokens '0:8': expected MIN:MAX" -- bench trainer --response-tokens 0:8
expect 2 "--response-tokens '8': expected MIN:MAX" -- bench trainer --response-tokens 8

# Every command listed by `duel --help` (including those other parts add): --help exits 0 with a
# usage line; an unknown option exits 2 with a message.
mapfile -t COMMANDS < <("$DUEL" --help | awk '/^commands:/ { f = 1; next } /^$/ { f = 0 } f { print $1 }')
[ ${#COMMANDS[@]} -ge 3 ] || fail "duel --help lists ${#COMMANDS[@]} commands"
for cmd in "${COMMANDS[@]}"; do
    expect 0 "^usage: duel $cmd" -- "$cmd" --help
    expect 2 "." -- "$cmd" --frob
done

echo "== usage errors exit 2 with a message"
expect 2 "unknown option '--frob'" -- info --frob
expect 2 "unknown option '--frob'" -- generate --frob --model x --prompt y
expect 2 "unknown option '--frob'" -- bench forward --frob
expect 2 "unknown option '--frob'" -- bench machine --frob
expect 2 "unknown benchmark 'nope'" -- bench nope
expect 2 "unexpected argument 'extra'" -- info extra
expect 2 -- '--model DIR is required' -- generate --prompt hi
expect 2 -- '--prompt TEXT is required' -- generate --model /nonexistent
expect 2 -- '--model DIR is required' -- bench forward
expect 2 -- '--top-p must be a number in \(0, 1\]' -- generate --model x --prompt y --top-p 1.5
expect 2 -- '--top-p' -- generate --model x --prompt y --top-p 0
expect 2 -- '--temperature' -- generate --model x --prompt y --temperature -1
expect 2 -- '--temperature' -- generate --model x --prompt y --temperature nan
expect 2 -- '--top-k must be an integer' -- generate --model x --prompt y --top-k 2.5
expect 2 -- '--max-new-tokens' -- generate --model x --prompt y --max-new-tokens 0
expect 2 -- '--seed' -- generate --model x --prompt y --seed -3
expect 2 -- '--seed needs a value' -- generate --model x --prompt y --seed
expect 2 -- '--chat takes no value' -- generate --model x --prompt y --chat=1
expect 2 -- '--template' -- generate --model x --prompt y --chat --template jinja
expect 2 -- 'not valid UTF-8' -- generate --model x --prompt $'bad \xff byte'
expect 2 -- 'not valid UTF-8' -- generate --model x --prompt $'\xc3' --chat
expect 2 -- "--weights: weight format 'q4' is not one of f32, bf16, q8" -- generate --model x --prompt y --weights q4
expect 2 -- "--kv-dtype: KV dtype 'f16' is not one of f32, bf16" -- generate --model x --prompt y --kv-dtype f16
expect 2 -- "--weights: weight format 'Q8_0'" -- bench forward --model x --weights Q8_0
expect 2 -- "--weights: weight format 'int8'" -- bench engine --model x --weights int8
expect 2 -- "--kv-dtype: KV dtype 'q8'" -- bench engine --model x --kv-dtype q8
expect 2 -- "--weights: weight format 'fp16'" -- serve --weights fp16
expect 1 "engine.weights: weight format 'q4'" -- serve --set engine.weights=q4
expect 1 "engine.kv_dtype: KV dtype 'q8'" -- serve --set engine.kv_dtype=q8
expect 1 "engine.features: \"base\": reference or policy" -- serve --set engine.features=base
expect 1 "model directory '$TMP/missing' does not exist" -- generate --model "$TMP/missing" --prompt hi
expect 1 "does not exist" -- bench forward --model "$TMP/missing"

echo "== configuration: --config, --set, DUEL_* (docs/CONFIG.md)"
for cmd in train serve; do
    expect 0 '^  --set SECTION\.KEY=VALUE .*repeatable' -- $cmd --help
    expect 0 '^  --config FILE .*default: the built-in config/default.json' -- $cmd --help
done
expect 0 'models/default' -- train --help
# A malformed --set is a command-line error (2) naming the key; a bad value in range or an
# unknown key in a file is a configuration error (1) naming the dotted path.
expect 2 'unknown section "nosuch"' -- train --set nosuch.key=1
expect 2 'unknown key trainer\.nosuch' -- train --set=trainer.nosuch=1
expect 2 'gateway\.port must be an integer' -- serve --set gateway.port=notanumber
expect 2 -- '--set needs' -- serve --set
expect 1 'gateway\.port = 70000 is outside \[0, 65535\]' -- serve --set gateway.port=70000
expect 1 'duel\.candidates = 1: outside \[2, 64\] \(knob M\)' -- serve --set duel.candidates=1
expect 1 'engine\.max_pilaf_jobs = 0 is outside \[1, 4096\]' -- serve --set engine.max_pilaf_jobs=0
expect 1 'trainer\.batch_size = 0: outside \[1, 4096\] \(knob batch_size\)' -- train --set trainer.batch_size=0 --model "$TMP/missing"
echo '{"trainer": {"lr": 1e-5, "bogus": 1}}' >"$TMP/unknown.json"
expect 1 "$TMP/unknown.json: unknown key trainer\\.bogus" -- train --config "$TMP/unknown.json"
expect 1 "$TMP/unknown.json: unknown key trainer\\.bogus" -- serve --config "$TMP/unknown.json"
echo '{"oracle": {"judge": {"nope": 1}}}' >"$TMP/nested.json"
expect 1 'unknown key oracle\.judge\.nope' -- serve --config "$TMP/nested.json"
expect 1 'no-such\.json' -- train --config "$TMP/no-such.json"
# The trainer reads its sections before loading the model: model.path comes from the file and
# --model wins over it.
echo '{"model": {"path": "'"$TMP"'/from-file"}}' >"$TMP/model.json"
expect 1 "$TMP/from-file" -- train --config "$TMP/model.json" --data-dir "$TMP/train-data"
expect 1 "$TMP/from-set" -- train --config "$TMP/model.json" --set "model.path=$TMP/from-set" --data-dir "$TMP/train-data"
expect 1 "$TMP/from-flag" -- train --config "$TMP/model.json" --set "model.path=$TMP/from-set" --model "$TMP/from-flag" --data-dir "$TMP/train-data"
# Without --data-dir the trainer's files go to ./duel-data, the folder duel serve uses (it was
# ./data, so that the two servers littered two folders).
expect 0 'default \./duel-data' -- train --help
mkdir -p "$TMP/cwd"
(cd "$TMP/cwd" && "$DUEL" train --model "$TMP/missing" >/dev/null 2>&1 </dev/null)
if [ -d "$TMP/cwd/duel-data/trainer" ] && [ ! -e "$TMP/cwd/data" ]; then
    pass
else
    fail "duel train without --data-dir: $(ls "$TMP/cwd"), expected duel-data/trainer"
fi
# duel serve (test backend) takes the gateway and redis sections from the file, DUEL_REDIS, --set
# and its flags, in that order; its first stdout line names the address, port and Redis.
# serve_in DIR ARGS...: starts duel serve ARGS in folder DIR, prints its first stdout line, stops
# it. serve_line ARGS...: the same with the test backend and a spill log in $TMP.
serve_in() {
    local dir=$1 fifo="$TMP/serve.fifo" pid line=""
    shift
    rm -f "$fifo" && mkfifo "$fifo"
    (cd "$dir" && exec "$DUEL" serve "$@") >"$fifo" 2>"$TMP/serve.err" &
    pid=$!
    read -r -t 20 line <"$fifo"
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "$line"
}
serve_line() {
    serve_in "$TMP" --backend test --web-root "$SRC/gateway/web" \
        --set "gateway.spill_path=$TMP/spill.log" --test-step-ms 0 "$@"
}
echo '{"gateway": {"bind": "127.0.0.1", "port": 0}, "redis": {"host": "127.0.0.1", "port": 7}}' >"$TMP/serve.json"
line=$(serve_line --config "$TMP/serve.json")
grep -Eq 'listening on http://127\.0\.0\.1:[0-9]+/ \(redis 127\.0\.0\.1:7,' <<<"$line" \
    || fail "serve --config: '$line' ($(head -3 "$TMP/serve.err"))"
line=$(DUEL_REDIS=127.0.0.1:8 serve_line --config "$TMP/serve.json")
grep -q '(redis 127\.0\.0\.1:8,' <<<"$line" || fail "serve DUEL_REDIS: '$line'"
line=$(DUEL_REDIS=127.0.0.1:8 serve_line --config "$TMP/serve.json" --set redis.port=9)
grep -q '(redis 127\.0\.0\.1:9,' <<<"$line" || fail "serve --set redis.port: '$line'"
line=$(serve_line --config "$TMP/serve.json" --set redis.port=9 --redis 127.0.0.1:10 --no-snapshots)
grep -q '(redis 127\.0\.0\.1:10,' <<<"$line" || fail "serve --redis over --set: '$line'"
pass

echo "== duel serve on a first run: its data folder, the model by default, the test backend by name"
expect 0 '^  --data-dir DIR .*default \./duel-data' -- serve --help
expect 0 "^  --backend NAME .*'engine' \(default" -- serve --help
# Without --backend it serves model.path; a missing model is an error naming it, not canned
# answers whose votes would go to the trainer's stream.
expect 1 "$TMP/no-model.*--backend test for canned test answers" -- serve --set "model.path=$TMP/no-model" \
    --port 0 --data-dir "$TMP/no-model-data"
expect 2 -- '--model is for the engine backend' -- serve --backend test --model "$TMP/no-model"
# The test backend only by name, its votes kept apart from duel:prefs.
line=$(serve_line --port 0 --redis 127.0.0.1:7)
grep -Eq 'backend test, .*votes to duel:prefs:test,' <<<"$line" || fail "serve --backend test: '$line'"
# From a folder laid out like the repository root (models/ and gateway/), with no duel-data yet:
# duel serve --redis HOST:PORT serves models/default and creates duel-data/ with its spill log.
if [ -f "$SRC/models/default/model.safetensors" ]; then
    root="$TMP/root"
    mkdir -p "$root" && ln -s "$SRC/models" "$root/models" && ln -s "$SRC/gateway" "$root/gateway"
    line=$(serve_in "$root" --redis 127.0.0.1:7 --port 0 --no-snapshots)
    grep -Eq 'backend engine, .*votes to duel:prefs, spill log duel-data/gateway-spill\.log\)' <<<"$line" \
        || fail "serve from a fresh root: '$line' ($(head -3 "$TMP/serve.err"))"
    [ -f "$root/duel-data/gateway-spill.log" ] || fail "serve from a fresh root: no duel-data/gateway-spill.log"
else
    echo "SKIP: models/default is missing: serve from a fresh root not run"
fi
# --data-dir: created with its parents; the spill log goes there unless --spill or
# gateway.spill_path says otherwise (their folders are created too).
line=$(serve_line --port 0 --set gateway.spill_path= --data-dir "$TMP/data/a/b")
grep -q "spill log $TMP/data/a/b/gateway-spill\.log)" <<<"$line" || fail "serve --data-dir: '$line'"
[ -f "$TMP/data/a/b/gateway-spill.log" ] || fail "serve --data-dir: no spill log in $TMP/data/a/b"
line=$(serve_line --port 0 --set gateway.spill_path= --data-dir "$TMP/data2" --spill "$TMP/elsewhere/s.log")
grep -q "spill log $TMP/elsewhere/s\.log)" <<<"$line" || fail "serve --spill over --data-dir: '$line'"
[ -f "$TMP/elsewhere/s.log" ] && [ -d "$TMP/data2" ] || fail "serve --spill: $TMP/elsewhere/s.log or $TMP/data2 missing"
line=$(serve_line --port 0 --data-dir "$TMP/data3")
grep -q "spill log $TMP/spill\.log)" <<<"$line" || fail "serve gateway.spill_path over --data-dir: '$line'"
pass

echo "== --chat answers without the template's answer prefix (the default model's qa: a space)"
if [ -f "$SRC/models/default/model.safetensors" ]; then
    out=$("$DUEL" generate --model "$SRC/models/default" --chat --temperature 0 --max-new-tokens 8 \
        --prompt "What does tea mean?" 2>/dev/null) || fail "generate --chat on models/default failed"
    [ -n "$out" ] && [ "${out:0:1}" != " " ] || fail "generate --chat printed '$out' (leading space or nothing)"
    out=$("$DUEL" generate --model "$SRC/models/default" --chat --temperature 0 --max-new-tokens 8 --n 2 \
        --prompt "What does tea mean?" 2>/dev/null) || fail "generate --chat --n 2 failed"
    grep -q '^ ' <<<"$out" && fail "generate --chat --n 2: a candidate starts with a space: '$out'"
    # bf16 weights hold the bf16 checkpoint exactly: the same greedy answer, with a bf16 KV cache too
    f32=$("$DUEL" generate --model "$SRC/models/default" --chat --temperature 0 --max-new-tokens 24 \
        --prompt "What does river mean?" 2>/dev/null) || fail "generate (f32) failed"
    bf16=$("$DUEL" generate --model "$SRC/models/default" --chat --temperature 0 --max-new-tokens 24 \
        --weights bf16 --kv-dtype bf16 --prompt "What does river mean?" 2>/dev/null) \
        || fail "generate --weights bf16 --kv-dtype bf16 failed"
    [ -n "$f32" ] && [ "$f32" = "$bf16" ] || fail "generate: f32 said '$f32', bf16 weights and KV '$bf16'"
    pass
fi

echo "== the compute backend (engine.backend, --compute): a clear error without a device"
expect 1 'engine\.backend must be auto, cpu or cuda' -- serve --set engine.backend=gpu --model "$SRC/models/default"
if [ -f "$SRC/models/default/model.safetensors" ]; then
    expect 2 "--compute wants auto, cpu or cuda, got 'gpu'" -- generate --model "$SRC/models/default" --prompt hi --compute gpu
    expect 0 '' -- generate --model "$SRC/models/default" --prompt hi --max-new-tokens 2 --compute cpu
    if "$DUEL" info 2>/dev/null | grep -q 'gpu: none\|cuda: not built'; then
        expect 1 'engine\.backend cuda: no device' -- generate --model "$SRC/models/default" --prompt hi --compute cuda
        expect 1 'engine\.backend cuda: no device' -- serve --model "$SRC/models/default" --port 0 --set engine.backend=cuda
    fi
fi

echo "== --json: one JSON object on the last line"
"$DUEL" info --json >"$TMP/info.out" 2>/dev/null || fail "duel info --json failed"
json_last_line "$TMP/info.out" '"cpu" in d["backends"] and "version" in d and isinstance(d["gpu_answers"], bool)' \
    || fail "duel info --json: bad last line"
# OpenBLAS older than the CPU falls back to its generic Prescott kernels (8x slower sgemm);
# duel re-executes itself with OPENBLAS_CORETYPE set, and leaves a user's own setting alone.
if grep -qw avx2 /proc/cpuinfo; then
    env -u OPENBLAS_CORETYPE "$DUEL" info --json >"$TMP/info.out" 2>/dev/null || fail "duel info (no OPENBLAS_CORETYPE) failed"
    json_last_line "$TMP/info.out" 'd["blas_core"].lower() != "prescott"' \
        || fail "duel runs OpenBLAS's generic kernels on a CPU with AVX2"
    # --blas-coretype (what ops/test exports for the test programs) agrees with the JSON.
    got=$(env -u OPENBLAS_CORETYPE "$DUEL" info --blas-coretype) || fail "duel info --blas-coretype failed"
    json_last_line "$TMP/info.out" "(d['blas_core_set_by_duel'] or '') == '$got'" \
        || fail "duel info --blas-coretype says '$got', unlike --json"
fi
[ -z "$(OPENBLAS_CORETYPE=Haswell "$DUEL" info --blas-coretype)" ] \
    || fail "duel info --blas-coretype names a setting when the user set OPENBLAS_CORETYPE"
OPENBLAS_CORETYPE=Prescott "$DUEL" info --json >"$TMP/info.out" 2>/dev/null || fail "duel info (Prescott) failed"
json_last_line "$TMP/info.out" 'd["blas_core"].lower() == "prescott"' \
    || fail "duel overrode the user's OPENBLAS_CORETYPE"
"$DUEL" bench machine --json --sgemm-size 256 --bandwidth-mib 64 --repeats 1 >"$TMP/machine.out" 2>/dev/null \
    || fail "duel bench machine --json failed"
json_last_line "$TMP/machine.out" 'd["bench"] == "machine" and d["sgemm_gflops"] > 0 and d["read_gb_per_s"] > 0' \
    || fail "duel bench machine --json: bad last line"
pass

echo "== bench engine: every option checked against the model before any run"
# The shipped model's context is 256 tokens: options that overflow it fail at once (exit 2,
# naming the options, no run started); the replay's default number of turns fits it.
SHIPPED="$SRC/models/default"
bench_engine_refused() { # PATTERN ARGS...
    local pattern=$1 out rc
    shift
    out=$("$DUEL" bench engine --model "$SHIPPED" --kv-mb 16 "$@" 2>&1 </dev/null)
    rc=$?
    if [ $rc -ne 2 ] || ! grep -Eq -- "$pattern" <<<"$out"; then
        fail "bench engine $*: exit $rc, output: $(echo "$out" | head -3)"
    elif grep -Eq '^(decode|duel [0-9]|turn [0-9])' <<<"$out"; then
        fail "bench engine $*: refused only after running: $(echo "$out" | head -5)"
    else
        pass
    fi
}
bench_engine_refused '--turns x \(--turn-user \+ --turn-answer\) = 648 exceeds the model.s context \(256\)' --turns 9
bench_engine_refused '--prompt \+ --decode = 300 tokens exceed the model.s context \(256\)' --prompt 200 --decode 100
bench_engine_refused '--prompt \+ --duel-new = 264 tokens exceed' --prompt 200 --decode 8 --duel
bench_engine_refused "the replay's 2 turns need 400" --turn-user 100 --turn-answer 100
"$DUEL" bench engine --model "$SHIPPED" --json --kv-mb 16 --concurrency 1 --decode 4 --duel-m 2 --duel-new 4 \
    --duels 1 --turn-answer 8 >"$TMP/bench-engine.out" 2>"$TMP/bench-engine.err" \
    || fail "bench engine with the default turns failed: $(tail -3 "$TMP/bench-engine.err")"
grep -q '^prefix cache, 8-turn replay' "$TMP/bench-engine.out" \
    || fail "bench engine: the replay's default is not 8 turns of 32 tokens: $(cat "$TMP/bench-engine.out")"
json_last_line "$TMP/bench-engine.out" 'd["decode_tokens_per_s"]["1"] > 0 and d["time_to_duel"]["p50_ms"] > 0 and d["prefix_cache_history_tokens"] > 0 and 0 < d["prefix_cache_hit_rate"] <= 1' \
    || fail "bench engine --json: bad last line"
"$DUEL" bench engine --model "$SHIPPED" --kv-mb 16 --concurrency 1 --decode 4 --duel-m 2 --duel-new 4 \
    --duels 1 >"$TMP/bench-engine2.out" 2>/dev/null || fail "bench engine with the default turn lengths failed"
grep -q '^prefix cache, 3-turn replay' "$TMP/bench-engine2.out" \
    || fail "bench engine: 3 turns of 24 + 48 tokens fit 256: $(cat "$TMP/bench-engine2.out")"
pass

echo "== with a random test model"
MODEL="$TMP/tiny-llama"
if ! "$PY" -c 'import torch' 2>/dev/null || [ ! -f "$SRC/tests/tools/make_random_model.py" ]; then
    echo "SKIP: model checks need $PY with torch and tests/tools/make_random_model.py"
    echo "test_cli: $checks checks, $failures failures (model checks skipped)"
    [ $failures -eq 0 ] && exit 77 || exit 1
fi
if ! "$PY" "$SRC/tests/tools/make_random_model.py" --preset tiny-llama --out "$MODEL" >"$TMP/make.log" 2>&1; then
    cat "$TMP/make.log"
    fail "make_random_model.py failed"
    echo "test_cli: $checks checks, $failures failures"
    exit 1
fi

gen() { "$DUEL" generate --model "$MODEL" "$@" </dev/null; }
# A hot temperature: the random model's distribution is peaked, and seeds must matter.
hot=(--temperature 1.5 --top-p 1 --max-new-tokens 24)
gen --prompt "The cat sat on" --seed 7 "${hot[@]}" >"$TMP/a.out" 2>"$TMP/a.err" || fail "generate failed: $(cat "$TMP/a.err")"
gen --prompt "The cat sat on" --seed 7 "${hot[@]}" >"$TMP/b.out" 2>/dev/null || fail "generate failed"
gen --prompt "The cat sat on" --seed 8 "${hot[@]}" >"$TMP/c.out" 2>/dev/null || fail "generate failed"
gen --prompt "The cat sat on" --seed 7 --top-k 40 --top-p 0.95 >"$TMP/d.out" 2>/dev/null || fail "generate failed"
gen --prompt "The cat sat on" --seed 7 --top-k 40 --top-p 0.95 >"$TMP/e.out" 2>/dev/null || fail "generate failed"
cmp -s "$TMP/d.out" "$TMP/e.out" || fail "same seed gave different text (top-k, top-p)"
cmp -s "$TMP/a.out" "$TMP/b.out" || fail "same seed gave different text"
[ -s "$TMP/a.out" ] && [ "$(wc -c <"$TMP/a.out")" -gt 1 ] || fail "generate printed nothing"
cmp -s "$TMP/a.out" "$TMP/c.out" && fail "seeds 7 and 8 gave the same text (24 tokens of a random model)"
grep -Eq 'prefill .* tokens/s .* decode .* tokens/s' "$TMP/a.err" || fail "no tokens/s on stderr: $(cat "$TMP/a.err")"
grep -q 'tokens/s' "$TMP/a.out" && fail "tokens/s leaked into stdout"
"$PY" -c 'import sys; open(sys.argv[1], encoding="utf-8", errors="strict").read()' "$TMP/a.out" \
    || fail "generated text is not valid UTF-8"
pass

gen --prompt "x" --temperature 0 --max-new-tokens 16 --seed 1 >"$TMP/g1.out" 2>/dev/null || fail "greedy failed"
gen --prompt "x" --temperature 0 --max-new-tokens 16 --seed 2 >"$TMP/g2.out" 2>/dev/null || fail "greedy failed"
cmp -s "$TMP/g1.out" "$TMP/g2.out" || fail "greedy output depends on the seed"
gen --prompt "hello" --chat --system "Be brief." --seed 3 --max-new-tokens 12 >/dev/null 2>"$TMP/chat.err" \
    || fail "generate --chat failed: $(cat "$TMP/chat.err")"
pass

# --n M: M candidates of one prompt, labelled; candidate i is seed + i; same seed, same text.
expect 2 -- '--n must be an integer in \[1, 64\], got .0.' -- generate --model "$MODEL" --prompt hi --n 0
expect 2 -- '--n must be an integer in \[1, 64\], got .65.' -- generate --model "$MODEL" --prompt hi --n 65
expect 2 -- '--n takes one --prompt' -- generate --model "$MODEL" --interactive --n 2
gen --prompt "The cat sat on" --seed 7 "${hot[@]}" --n 3 >"$TMP/n1.out" 2>"$TMP/n1.err" || fail "generate --n 3 failed: $(cat "$TMP/n1.err")"
gen --prompt "The cat sat on" --seed 7 "${hot[@]}" --n 3 >"$TMP/n2.out" 2>/dev/null || fail "generate --n 3 failed"
[ "$(grep -cE '^=== candidate [0-2]: [0-9]+ tokens, logprob -?[0-9]+\.[0-9]+, stop: ' "$TMP/n1.out")" -eq 3 ] \
    || fail "--n 3 did not print 3 labelled candidates: $(cat "$TMP/n1.out")"
cmp -s "$TMP/n1.out" "$TMP/n2.out" || fail "--n 3: same seed gave different candidates"
# Candidate 1 of seed 7 is the single answer of seed 8 (seeds seed + i).
gen --prompt "The cat sat on" --seed 8 "${hot[@]}" --n 1 >"$TMP/n3.out" 2>/dev/null || fail "generate --n 1 failed"
[ "$(sed -n '/^=== candidate 1:/,/^=== candidate 2:/p' "$TMP/n1.out" | sed '1d;$d')" = "$(sed 1d "$TMP/n3.out")" ] \
    || fail "candidate 1 of seed 7 differs from the answer of seed 8"
[ "$(sed 1d "$TMP/n3.out")" = "$(cat "$TMP/c.out")" ] || fail "--n 1 differs from the streamed answer of the same seed"
grep -q 'decode 72 tokens' "$TMP/n1.err" || fail "--n 3 x 24 tokens: $(cat "$TMP/n1.err")"
pass

# --duel: M candidates scored by an ERM (fresh from the seed without --erm), the pair, R-hat.
expect 2 -- '--strategy: unknown duel strategy "foo"' -- generate --model "$MODEL" --prompt hi --duel --strategy foo
expect 2 -- '--strategy arena needs --arena-model DIR' -- generate --model "$MODEL" --prompt hi --duel --strategy arena
expect 2 -- '--arena-model needs --strategy arena' -- generate --model "$MODEL" --prompt hi --duel --arena-model "$MODEL"
expect 2 -- 'it must be even (got 3)' -- generate --model "$MODEL" --prompt hi --duel --strategy arena --arena-model "$MODEL" --n 3
expect 2 -- '--duel needs --n of at least 2' -- generate --model "$MODEL" --prompt hi --duel --n 1
expect 2 -- '--strategy, --erm and --reference need --duel' -- generate --model "$MODEL" --prompt hi --strategy bon
expect 2 -- '--strategy pilaf decodes 2 candidates' -- generate --model "$MODEL" --prompt hi --duel --strategy pilaf --n 3
expect 2 -- '--beta must be' -- generate --model "$MODEL" --prompt hi --duel --strategy pilaf --beta -1
expect 1 "reference model directory '$TMP/noref' does not exist" -- generate --model "$MODEL" --prompt hi --duel --reference "$TMP/noref"
expect 1 "$TMP/no.erm" -- generate --model "$MODEL" --prompt hi --duel --erm "$TMP/no.erm"
for strategy in ee_ts bon uncertainty; do
    gen --prompt "The cat sat on" --seed 7 "${hot[@]}" --n 4 --duel --strategy $strategy >"$TMP/d1.out" 2>"$TMP/d1.err" \
        || fail "generate --duel --strategy $strategy failed: $(cat "$TMP/d1.err")"
    gen --prompt "The cat sat on" --seed 7 "${hot[@]}" --n 4 --duel --strategy $strategy >"$TMP/d2.out" 2>/dev/null
    cmp -s "$TMP/d1.out" "$TMP/d2.out" || fail "--duel $strategy: same seed, different output"
    [ "$(grep -cE '^=== candidate [0-3]: [0-9]+ tokens, logprob -?[0-9.]+, mean reward -?[0-9.]+, stop: ' "$TMP/d1.out")" -eq 4 ] \
        || fail "--duel did not print 4 candidates with rewards: $(cat "$TMP/d1.out")"
    pair=$(grep -E "^=== duel \($strategy\): a = candidate [0-3] \(left\), b = candidate [0-3] \(right\), side swap: (yes|no), estimated regret R-hat [0-9.]+ ===$" "$TMP/d1.out") \
        || fail "--duel $strategy: no pair line: $(cat "$TMP/d1.out")"
    a=$(sed -E 's/.* a = candidate ([0-9]+).*/\1/' <<<"$pair"); b=$(sed -E 's/.* b = candidate ([0-9]+).*/\1/' <<<"$pair")
    [ "$a" != "$b" ] || fail "--duel $strategy chose candidate $a twice"
    grep -q 'ERM: none given (--erm), so a fresh one initialised from seed 7' "$TMP/d1.err" \
        || fail "--duel without --erm does not say the ERM is fresh: $(cat "$TMP/d1.err")"
done
# PILAF against another random model of the same shape as the reference: two candidates, the
# mode, deterministic per seed; some seed in 1..8 draws the mixed mode and some the plain one.
"$PY" "$SRC/tests/tools/make_random_model.py" --preset tiny-llama --seed 99 --out "$TMP/ref-model" >/dev/null 2>&1 \
    || fail "make_random_model.py (reference) failed"
modes=""
for s in 1 2 3 4 5 6 7 8; do
    gen --prompt "The cat sat on" --seed $s "${hot[@]}" --duel --strategy pilaf --beta 2 --reference "$TMP/ref-model" \
        >"$TMP/p1.out" 2>"$TMP/p1.err" || fail "pilaf failed: $(cat "$TMP/p1.err")"
    [ "$(grep -c '^=== candidate [01]: ' "$TMP/p1.out")" -eq 2 ] || fail "pilaf did not print 2 candidates: $(cat "$TMP/p1.out")"
    line=$(grep -E '^=== duel \(pilaf, (mixed: candidate 0 is y\+, 1 is y-|plain: two policy samples)\): a = candidate [01] \(left\), b = candidate [01] \(right\), side swap: (yes|no) ===$' "$TMP/p1.out") \
        || fail "pilaf: no duel line: $(cat "$TMP/p1.out")"
    modes="$modes $(grep -oE 'mixed|plain' <<<"$line")"
done
gen --prompt "The cat sat on" --seed 8 "${hot[@]}" --duel --strategy pilaf --beta 2 --reference "$TMP/ref-model" >"$TMP/p2.out" 2>/dev/null
cmp -s "$TMP/p1.out" "$TMP/p2.out" || fail "pilaf: same seed, different output"
grep -q mixed <<<"$modes" && grep -q plain <<<"$modes" || fail "pilaf modes over 8 seeds:$modes"
# PILAF's reference decodes in the engine's pool too: a long prompt and answers up to the
# context fit the pool `duel generate` sizes.
long_prompt=$(printf 'the cat sat on the mat %.0s' $(seq 1 15))
gen --prompt "$long_prompt" --seed 3 --context 300 --max-new-tokens 400 --duel --strategy pilaf --reference "$TMP/ref-model" \
    >"$TMP/p3.out" 2>"$TMP/p3.err" || fail "pilaf with a long prompt failed: $(cat "$TMP/p3.err")"
grep -q '^=== duel (pilaf, ' "$TMP/p3.out" || fail "pilaf with a long prompt: no duel line: $(cat "$TMP/p3.out")"
# arena: half the candidates from each model, one answer from each.
gen --prompt "The cat sat on" --seed 5 "${hot[@]}" --n 4 --duel --strategy arena --arena-model "$TMP/ref-model" \
    >"$TMP/a1.out" 2>"$TMP/a1.err" || fail "arena failed: $(cat "$TMP/a1.err")"
[ "$(grep -cE '^=== candidate [01]: .*, from --model, stop: ' "$TMP/a1.out")" -eq 2 ] \
    && [ "$(grep -cE '^=== candidate [23]: .*, from --arena-model, stop: ' "$TMP/a1.out")" -eq 2 ] \
    || fail "arena: candidates not split between the models: $(cat "$TMP/a1.out")"
grep -qE '^=== duel \(arena\): a = candidate ([01] \(left, from --model\), b = candidate [23] \(right, from --arena-model\)|[23] \(left, from --arena-model\), b = candidate [01] \(right, from --model\)), side swap: (yes|no) ===$' "$TMP/a1.out" \
    || fail "arena: no pair line with one answer from each model: $(cat "$TMP/a1.out")"
# The candidates are those of --n alone (same seeds): the duel only adds scoring.
sed -E 's/, mean reward -?[0-9.]+//' "$TMP/d1.out" | grep -v '^=== duel' >"$TMP/d3.out"
gen --prompt "The cat sat on" --seed 7 "${hot[@]}" --n 4 >"$TMP/d4.out" 2>/dev/null
cmp -s "$TMP/d3.out" "$TMP/d4.out" || fail "--duel changed the candidates of --n 4"
pass

long=$(printf 'word %.0s' $(seq 1 50))
expect 1 'context' -- generate --model "$MODEL" --prompt "$long" --context 16 --max-new-tokens 4
expect 2 -- '--context must be an integer' -- generate --model "$MODEL" --prompt hi --context 100000000
expect 1 'max_position_embeddings' -- generate --model "$MODEL" --prompt hi --context 9999

# BOS: a model whose tokenizer_config.json sets add_bos_token gets one more prompt token; a
# broken tokenizer_config.json is an error naming the file.
cp -r "$MODEL" "$TMP/bos-model"
"$PY" - "$TMP/bos-model/tokenizer_config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["add_bos_token"] = True
json.dump(c, open(sys.argv[1], "w"))
EOF
"$DUEL" generate --model "$MODEL" --prompt hello --temperature 0 --max-new-tokens 2 2>"$TMP/nobos.err" >/dev/null
"$DUEL" generate --model "$TMP/bos-model" --prompt hello --temperature 0 --max-new-tokens 2 2>"$TMP/bos.err" >/dev/null
n0=$(grep -o 'prompt [0-9]* tokens' "$TMP/nobos.err" | grep -o '[0-9]*')
n1=$(grep -o 'prompt [0-9]* tokens' "$TMP/bos.err" | grep -o '[0-9]*')
if [ -z "$n0" ] || [ "$n1" != "$((n0 + 1))" ]; then fail "add_bos_token: prompt tokens $n0 -> $n1, expected one more"; fi
echo '{"add_bos_token": "yes"' >"$TMP/bos-model/tokenizer_config.json"
expect 1 'tokenizer_config.json' -- generate --model "$TMP/bos-model" --prompt hello
pass

# Interactive chat: two messages on stdin, then end of input.
printf 'hello\n\n/reset\nhow are you?\n' | "$DUEL" generate --model "$MODEL" --interactive --seed 5 \
    --max-new-tokens 8 >"$TMP/chat.out" 2>"$TMP/chat2.err"
rc=$?
[ $rc -eq 0 ] || fail "interactive chat exited $rc: $(cat "$TMP/chat2.err")"
[ "$(grep -c 'tokens/s' "$TMP/chat2.err")" -eq 2 ] || fail "interactive chat did not answer twice: $(cat "$TMP/chat2.err")"
grep -q 'conversation forgotten' "$TMP/chat2.err" || fail "/reset was not acknowledged"
pass

"$DUEL" bench forward --model "$MODEL" --prefill 16 --decode 4 --repeats 1 --no-limits --json \
    >"$TMP/bench.out" 2>"$TMP/bench.err" || fail "bench forward failed: $(cat "$TMP/bench.err")"
json_last_line "$TMP/bench.out" 'd["prefill_tokens_per_s"] > 0 and d["decode_tokens_per_s"] > 0 and 0 <= d["prefill_gemm_share"] <= 1' \
    || fail "bench forward --json: bad last line"
f32_bytes=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["decode_weight_bytes_per_token"])' "$TMP/bench.out")
"$DUEL" bench forward --model "$MODEL" --weights q8 --prefill 16 --decode 4 --repeats 1 --no-limits --json \
    >"$TMP/bench.out" 2>"$TMP/bench.err" || fail "bench forward --weights q8 failed: $(cat "$TMP/bench.err")"
# q8 reads 34 bytes per 32 weights (padding of the small model's 16-row groups aside): about 27 %
json_last_line "$TMP/bench.out" "d['weights'] == 'q8' and 0.26 < d['decode_weight_bytes_per_token'] / $f32_bytes < 0.35" \
    || fail "bench forward --weights q8 --json: bad last line"
pass

echo "test_cli: $checks checks, $failures failures"
[ $failures -eq 0 ]
