#!/bin/bash
# test_train_cli.sh: `duel tokenizer train`, `duel pretrain`, `duel sft` and `duel dpo` end to
# end on a tiny model: a run killed with SIGKILL and rerun ends with the same weights, byte for
# byte, as an uninterrupted run (and so does --stop-at); malformed JSONL lines fail with their
# line number or are skipped with a warning; DPO reports the held-out margin; --help works.
# Usage: test_train_cli.sh DUEL_BINARY
set -u
DUEL=$1
TMP=$(mktemp -d "${DUEL_TEST_TMP:-/tmp}/train_cli.XXXXXX")
fail() { echo "FAIL: $*"; exit 1; }

for c in pretrain sft dpo "tokenizer train"; do
    $DUEL $c --help > "$TMP/help.txt" || fail "$c --help exits non-zero"
    grep -q "usage: duel $c" "$TMP/help.txt" || fail "$c --help has no usage line"
done

for i in $(seq 1 40); do
    echo "word$i (noun): the meaning of word number $i, a thing that is used in examples."
    echo "cat (noun): feline mammal usually having thick soft fur and no ability to roar."
done > "$TMP/text.txt"
$DUEL tokenizer train --input "$TMP/text.txt" --vocab-size 400 --out "$TMP/tokenizer.json" \
    > "$TMP/tok.log" || fail "tokenizer train"
VOCAB=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['model']['vocab']))" "$TMP/tokenizer.json")
cat > "$TMP/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "vocab_size": $VOCAB, "hidden_size": 32,
 "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": true}
JSON
ARGS=(--config "$TMP/config.json" --tokenizer "$TMP/tokenizer.json" --train "$TMP/text.txt"
      --valid "$TMP/text.txt" --steps 80 --batch-size 4 --seq-len 32 --warmup 5
      --eval-every 40 --eval-batches 2 --checkpoint-every 1 --dtype f32 --log-every 50)
$DUEL pretrain "${ARGS[@]}" --out "$TMP/a" 2> "$TMP/a.log" > /dev/null || fail "pretrain: $(tail -3 "$TMP/a.log")"
grep -q "validation loss" "$TMP/a.log" || fail "no validation loss printed"
grep -q "tok/s" "$TMP/a.log" || fail "no progress line"

# SIGKILL in the middle of the run, then the same command again.
$DUEL pretrain "${ARGS[@]}" --out "$TMP/b" 2> "$TMP/b.log" > /dev/null &
PID=$!
for i in $(seq 1 400); do
    [ -f "$TMP/b/checkpoint/state.json" ] && grep -q '"step": [3-9][0-9]*' "$TMP/b/checkpoint/state.json" 2>/dev/null && break
    sleep 0.02
done
kill -9 $PID 2>/dev/null
wait $PID 2>/dev/null
[ -f "$TMP/b/model.safetensors" ] && echo "note: the run finished before the kill"
$DUEL pretrain "${ARGS[@]}" --out "$TMP/b" 2> "$TMP/b2.log" > /dev/null || fail "resume after kill: $(tail -3 "$TMP/b2.log")"
grep -q "resumed from" "$TMP/b2.log" || fail "the rerun did not resume"
cmp -s "$TMP/a/model.safetensors" "$TMP/b/model.safetensors" || fail "killed and resumed weights differ"

# --stop-at, then resume
$DUEL pretrain "${ARGS[@]}" --out "$TMP/c" --stop-at 40 2> "$TMP/c.log" > /dev/null || fail "stop-at"
grep -q "stopped at step 40" "$TMP/c.log" || fail "no stop message"
$DUEL pretrain "${ARGS[@]}" --out "$TMP/c" 2> /dev/null > /dev/null || fail "resume after stop-at"
cmp -s "$TMP/a/model.safetensors" "$TMP/c/model.safetensors" || fail "stopped and resumed weights differ"

# a corrupt checkpoint is a clear error naming the file
$DUEL pretrain "${ARGS[@]}" --out "$TMP/d" --stop-at 3 2> /dev/null > /dev/null || fail "stop-at 3"
printf 'X' | dd of="$TMP/d/checkpoint/model.safetensors" bs=1 seek=300 conv=notrunc 2>/dev/null
$DUEL pretrain "${ARGS[@]}" --out "$TMP/d" 2> "$TMP/d.log" > /dev/null && fail "corrupt checkpoint accepted"
grep -q "model.safetensors: corrupt checkpoint" "$TMP/d.log" || fail "corrupt checkpoint message: $(cat "$TMP/d.log")"

# SFT: bad lines
printf '%s\n' '{"prompt": "What does cat mean?", "response": "feline mammal"}' \
    '{"prompt": "What does dog mean?" "response": "x"}' \
    '{"prompt": "What does word1 mean?", "response": "the meaning of word number 1"}' > "$TMP/sft.jsonl"
SFT=(--model "$TMP/a" --train "$TMP/sft.jsonl" --steps 5 --batch-size 2 --warmup 1 --checkpoint-every 0)
$DUEL sft "${SFT[@]}" --out "$TMP/s" 2> "$TMP/s.log" > /dev/null && fail "bad JSONL accepted"
grep -q "sft.jsonl:2: malformed JSON" "$TMP/s.log" || fail "bad line message: $(cat "$TMP/s.log")"
$DUEL sft "${SFT[@]}" --out "$TMP/s" --skip-bad-lines 2> "$TMP/s.log" > /dev/null || fail "sft --skip-bad-lines"
grep -q "skipped 1 malformed line(s), first at line(s) 2" "$TMP/s.log" || fail "no skip warning"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    [ -f "$TMP/s/$f" ] || fail "sft did not write $f"
done

# DPO on synthetic pairs with held-out pairs
for i in $(seq 1 16); do
    echo "{\"prompt\": \"Tell me about word$i.\", \"chosen\": \"a good answer about word$i\", \"rejected\": \"a bad answer about word$i\"}"
done > "$TMP/pairs.jsonl"
head -4 "$TMP/pairs.jsonl" | sed 's/word/cat/g' > "$TMP/pairs_valid.jsonl"
$DUEL dpo --model "$TMP/s" --pairs "$TMP/pairs.jsonl" --valid "$TMP/pairs_valid.jsonl" --out "$TMP/p" \
    --steps 20 --batch-pairs 4 --lr 3e-3 --warmup 2 --eval-every 10 --template chatml \
    2> "$TMP/p.log" > "$TMP/p.out" || fail "dpo: $(tail -3 "$TMP/p.log")"
grep -q "held-out reward margin" "$TMP/p.out" || fail "dpo summary: $(cat "$TMP/p.out")"
python3 - "$TMP/p.out" <<'PY' || fail "dpo did not raise the held-out margin: $(cat "$TMP/p.out")"
import re, sys
m = re.search(r"held-out reward margin (-?[0-9.]+), accuracy ([0-9.]+)", open(sys.argv[1]).read())
sys.exit(0 if m and float(m.group(1)) > 0 else 1)
PY
rm -rf "$TMP"
echo "ok"
