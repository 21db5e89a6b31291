#!/bin/sh
# models/build.sh: rebuilds the default model (DESIGN.md section 12) into models/default/:
# WordNet question/answer data (models/wordnet_data.py), a byte-level BPE tokenizer
# (duel tokenizer train), pretraining on the WordNet text (duel pretrain), instruction tuning on
# the question/answer pairs (duel sft) in the "qa" chat template ("Question: ... Answer: ..."), the
# form of the questions mixed into the pretraining text, then the held-out evaluation
# (models/evaluate.py).
# Work files go to $WORK (default build-default-model/); each training stage resumes from its
# checkpoint when the script is run again after an interruption.
# Usage: models/build.sh [DUEL_BINARY]   (default build/cli/duel; builds it when missing)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUEL=${1:-$ROOT/build/cli/duel}
WORK=${WORK:-$ROOT/build-default-model}
OUT=${OUT:-$ROOT/models/default}
PYTHON=${PYTHON:-python3}
SEED=${SEED:-1234}
# Sizes chosen to finish in about 40 minutes on 2 quiet CPU cores (see models/README.md for the
# measured rates): PRETRAIN_STEPS updates of 2,048 tokens read the knowledge set's text
# (0.67M tokens: ~5,700 common headwords, each in four definition forms and an example, and the
# definition questions of the ~5,300 training headwords) about 8 times, so every definition is
# read ~30 times in some form.
PRETRAIN_STEPS=${PRETRAIN_STEPS:-2600}
SFT_STEPS=${SFT_STEPS:-400}

if [ ! -x "$DUEL" ]; then
    cmake -S "$ROOT" -B "$ROOT/build" -DDUEL_CUDA=OFF >/dev/null
    cmake --build "$ROOT/build" -j2 --target duel
fi
mkdir -p "$WORK"
START=$(date +%s)
echo "== data"
"$PYTHON" "$ROOT/models/wordnet_data.py" "$WORK/data" --seed "$SEED"
echo "== tokenizer"
"$DUEL" tokenizer train --input "$WORK/data/pretrain_train.txt" --vocab-size 4096 \
    --out "$WORK/tokenizer.json"
cat > "$WORK/config.json" <<JSON
{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 4096,
  "hidden_size": 320,
  "intermediate_size": 864,
  "num_hidden_layers": 4,
  "num_attention_heads": 10,
  "num_key_value_heads": 2,
  "max_position_embeddings": 256,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "hidden_act": "silu",
  "tie_word_embeddings": true,
  "attention_bias": false,
  "mlp_bias": false,
  "bos_token_id": 4094,
  "eos_token_id": 4095,
  "pad_token_id": 4093,
  "torch_dtype": "bfloat16"
}
JSON
echo "== pretrain"
"$DUEL" pretrain --config "$WORK/config.json" --tokenizer "$WORK/tokenizer.json" \
    --train "$WORK/data/pretrain_train.txt" --valid "$WORK/data/pretrain_valid.txt" \
    --out "$WORK/pretrain" --steps "$PRETRAIN_STEPS" --batch-size 16 --seq-len 128 \
    --lr 2e-3 --min-lr 2e-4 --warmup 30 --weight-decay 0.01 --eval-every 200 --eval-batches 10 \
    --checkpoint-every 50 --seed "$SEED" --dtype f32 --template qa
echo "== sft"
"$DUEL" sft --model "$WORK/pretrain" --train "$WORK/data/sft_train.jsonl" \
    --valid "$WORK/data/sft_valid.jsonl" --out "$WORK/sft" --steps "$SFT_STEPS" \
    --batch-size 32 --seq-len 128 --lr 3e-4 --min-lr 3e-5 --warmup 20 --eval-every 100 \
    --eval-batches 20 --checkpoint-every 50 --seed "$SEED" --dtype bf16 --template qa
mkdir -p "$OUT"
cp "$WORK/sft/config.json" "$WORK/sft/model.safetensors" "$WORK/sft/tokenizer.json" \
    "$WORK/sft/tokenizer_config.json" "$OUT/"
END=$(date +%s)
echo "== built $OUT in $((END - START)) s"
if [ -f "$ROOT/models/evaluate.py" ]; then
    echo "== evaluate"
    "$PYTHON" "$ROOT/models/evaluate.py" --duel "$DUEL" --model "$OUT" \
        --test "$WORK/data/test.jsonl" --out "$WORK/eval.json"
fi
