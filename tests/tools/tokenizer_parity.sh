#!/bin/sh
# tokenizer_parity.sh SOURCE_DIR OUT_DIR DRIVER: runs the tokenizer parity test. Skips (exit 77,
# which ctest reports as skipped) when node or the npm devDependencies (npm ci) are missing.
src=$1 out=$2 driver=$3
if ! command -v node >/dev/null 2>&1; then
    echo "SKIP: node is not installed; the tokenizer parity test needs node and 'npm ci'"
    exit 77
fi
if [ ! -d "$src/node_modules/@huggingface/tokenizers" ] || [ ! -d "$src/node_modules/gpt-3-encoder" ]; then
    echo "SKIP: $src/node_modules lacks @huggingface/tokenizers or gpt-3-encoder; run 'npm ci' in $src"
    exit 77
fi
node "$src/tests/tools/tokenizer_parity.mjs" "$out" 12000 || exit 1
exec "$driver" "$out/parity.json"
