#!/usr/bin/env bash
# tinyshakespeare -> llm.c token shards, offline: the recipe behind the shards that ship with
# the bundled demo model, models/tinyshakespeare-gpt2-4L128 (documents at blank lines, each preceded by <|endoftext|>, first
# 10% of tokens to val; see dev/data/prepare_text.cpp). Run from the repo root:
#
#   bash dev/data/tinyshakespeare.sh
#     -> data/tinyshakespeare/tinyshakespeare_train.bin (304,227 tokens), ..._val.bin (33,802)
#
# Inputs (override with environment variables):
#   TEXT      tinyshakespeare.txt    [data/tinyshakespeare.txt, tracked in the repo]
#   GPT2_DIR  encoder.json, vocab.bpe [data/gpt2, tracked in the repo]
#   OUT       output prefix          [data/tinyshakespeare/tinyshakespeare]
#   EXPECT    folder with the published shards to compare against, byte for byte
#             [models/tinyshakespeare-gpt2-4L128, skipped if absent]
# Nothing is downloaded: if the text is missing, get it from
# https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
set -euo pipefail
cd "$(dirname "$0")/../.."

TEXT=${TEXT:-data/tinyshakespeare.txt}
GPT2_DIR=${GPT2_DIR:-data/gpt2}
OUT=${OUT:-data/tinyshakespeare/tinyshakespeare}
EXPECT=${EXPECT:-models/tinyshakespeare-gpt2-4L128}

if [ ! -f "$TEXT" ]; then
    echo "error: $TEXT not found (set TEXT=path/to/tinyshakespeare.txt)" >&2
    exit 1
fi
[ -x ./prepare_text ] || make prepare_text

./prepare_text -o "$OUT" --val-fraction 0.1 \
    --encoder "$GPT2_DIR/encoder.json" --vocab "$GPT2_DIR/vocab.bpe" "$TEXT"

if [ -f "$EXPECT/tinyshakespeare_train.bin" ] && [ -f "$EXPECT/tinyshakespeare_val.bin" ]; then
    for split in train val; do
        if cmp -s "${OUT}_$split.bin" "$EXPECT/tinyshakespeare_$split.bin"; then
            echo "${OUT}_$split.bin is identical to $EXPECT/tinyshakespeare_$split.bin"
        else
            echo "error: ${OUT}_$split.bin differs from $EXPECT/tinyshakespeare_$split.bin" >&2
            exit 1
        fi
    done
fi
