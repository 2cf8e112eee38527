#!/usr/bin/env bash
# Downloads what the trainers use by default, into data/ (run from anywhere; paths are relative
# to the repo root):
#
#   data/gpt2/encoder.json, vocab.bpe       GPT-2's BPE tokenizer (1 MB + 0.5 MB), from OpenAI
#   data/gpt2-small/model.safetensors        GPT-2 small (124M) weights, 548 MB, and config.json,
#   data/gpt2-small/config.json              from huggingface.co/openai-community/gpt2
#   data/openwebtext/owt_val_000000.bin      an OpenWebText sample as llm.c token shards: the
#   data/openwebtext/owt_train_*.bin         first of the 73 parquet files (~1/73 of ~9B tokens)
#                                            of apollo-research/Skylion007-openwebtext-tokenizer-gpt2,
#                                            the pre-tokenised OpenWebText the e2e SAE paper used,
#                                            cut by dev/data/openwebtext.py into 10M-token shards,
#                                            the first one val. The parquet file stays in
#                                            data/openwebtext/parquet/ (delete it if space is short).
#
#   bash scripts/download_starter_pack.sh
#
# Every file is downloaded to FILE.part, checked, then renamed; a failed or interrupted download
# leaves no partial file, nor a folder it made and left empty, and files already there with the
# right checksum are not fetched again. The settings below are checked before any download.
# Checks: sha256 pinned here for the tokenizer files and for GPT-2 (at a pinned revision of the
# model repo, so the checksums cannot drift); the parquet file can't be pinned (the dataset has
# no release), so it is checked against the sha256 and size Hugging Face publishes for it
# (X-Linked-Etag / X-Linked-Size), and dev/data/openwebtext.py checks every token is GPT-2's.
#
# Needs curl and sha256sum; for the OpenWebText sample, python3 with numpy and pyarrow
# (pip install numpy pyarrow). Knobs, as environment variables:
#   DATA_DIR=data                  where everything goes
#   OWT_FILES=1                    how many of the 73 parquet files to fetch (0: no OpenWebText)
#   OWT_SHARD_TOKENS=10000000      tokens per shard (the full-size recipe uses 100M)
#   PYTHON=python3                 the python with numpy and pyarrow
#   HF_ENDPOINT=https://huggingface.co, GPT2_TOKENIZER_URL=https://openaipublic.blob.core.windows.net/gpt-2/encodings/main
#                                  mirrors (test/test_starter_pack.sh points them at nothing)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-data}
OWT_FILES=${OWT_FILES:-1}
OWT_SHARD_TOKENS=${OWT_SHARD_TOKENS:-10000000}
PYTHON=${PYTHON:-python3}
HF_ENDPOINT=${HF_ENDPOINT:-https://huggingface.co}
GPT2_TOKENIZER_URL=${GPT2_TOKENIZER_URL:-https://openaipublic.blob.core.windows.net/gpt-2/encodings/main}

# openai-community/gpt2 at a fixed commit, so the pinned checksums below stay right
GPT2_REVISION=607a30d783dfa663caf39e06633721c8d4cfcd7e
GPT2_URL=$HF_ENDPOINT/openai-community/gpt2/resolve/$GPT2_REVISION
OWT_URL=$HF_ENDPOINT/datasets/apollo-research/Skylion007-openwebtext-tokenizer-gpt2/resolve/main/data

SHA_ENCODER=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
SHA_VOCAB=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
SHA_CONFIG=0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4
SHA_MODEL=248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707  # 548,105,171 bytes

die() {
    echo "error: $*" >&2
    exit 1
}

# The .part file being written, or the conversion folder: removed however the script ends
# (errors, Ctrl-C, kill), so nothing half-written is ever left in data/. On failure, so are the
# folders this run made and left empty (NEW_DIRS, deepest first; rmdir never removes content).
PARTIAL=""
NEW_DIRS=()
cleanup() {
    local rc=$?
    if [ -n "$PARTIAL" ]; then rm -rf "$PARTIAL"; fi
    if [ "$rc" != 0 ]; then
        for d in ${NEW_DIRS[@]+"${NEW_DIRS[@]}"}; do rmdir "$d" 2>/dev/null || true; done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# curl with a one-line error: progress bar on a terminal, else quiet with the error captured
download() {  # url, output file
    local err
    if [ -t 2 ]; then
        curl -fL --retry 3 --retry-delay 2 --connect-timeout 30 --progress-bar -o "$2" "$1" && return 0
        err="see curl's message above"
    else
        err=$(curl -fL --retry 3 --retry-delay 2 --connect-timeout 30 -sS -o "$2" "$1" 2>&1) && return 0
    fi
    rm -f "$2"
    die "download failed: $1 (${err//$'\n'/ }). Are you online? Behind a proxy, set HTTPS_PROXY."
}

# fetch URL DEST SHA256 [SIZE]: DEST.part, check, rename. An empty SHA256 skips that check.
fetch() {
    local url=$1 dest=$2 sha=$3 size=${4:-}
    if [ -f "$dest" ] && { [ -z "$sha" ] || [ "$(sha256_of "$dest")" = "$sha" ]; }; then
        echo "ok    $dest (already there)"
        return
    fi
    [ -f "$dest" ] && echo "      $dest has the wrong sha256: fetching it again"
    mkdir -p "$(dirname "$dest")"
    PARTIAL="$dest.part"
    rm -f "$PARTIAL"  # left by a run that was killed outright
    echo "get   $url"
    download "$url" "$PARTIAL"
    if [ -n "$size" ] && [ "$(stat -c %s "$PARTIAL")" != "$size" ]; then
        die "size mismatch for $url: got $(stat -c %s "$PARTIAL") bytes, expected $size (removed; run again)"
    fi
    local got
    got=$(sha256_of "$PARTIAL")
    if [ -n "$sha" ] && [ "$got" != "$sha" ]; then
        die "sha256 mismatch for $url: got $got, expected $sha (removed; run again)"
    fi
    mv -f "$PARTIAL" "$dest"
    PARTIAL=""
    echo "ok    $dest"
}

# The sha256 and size Hugging Face publishes for an LFS file: headers of the unfollowed redirect.
hf_lfs_meta() {  # url -> "sha256 size", or nothing
    local headers
    headers=$(curl -fsSI --retry 3 --connect-timeout 30 "$1" 2>&1) ||
        die "download failed: $1 (${headers//$'\n'/ }). Are you online? Behind a proxy, set HTTPS_PROXY."
    printf '%s\n' "$headers" | tr -d '\r"' | awk -F': *' '
        tolower($1) == "x-linked-etag" { sha = $2 }
        tolower($1) == "x-linked-size" { size = $2 }
        END { if (sha ~ /^[0-9a-f]{64}$/ && size ~ /^[0-9]+$/) print sha, size }'
}

# ----------------------------------------------------------------------------
# check the tools and every setting first, so nothing fails after a long download

command -v curl >/dev/null || die "curl not found (apt-get install curl)"
command -v sha256sum >/dev/null || die "sha256sum not found (apt-get install coreutils)"
[[ "$OWT_FILES" =~ ^(0|[1-9][0-9]?)$ ]] && [ "$OWT_FILES" -le 73 ] || die "OWT_FILES=$OWT_FILES: expected 0..73"
# dev/data/openwebtext.py's range: a shard's token count is an int32
[[ "$OWT_SHARD_TOKENS" =~ ^[1-9][0-9]{0,9}$ ]] && [ "$OWT_SHARD_TOKENS" -le 2147483647 ] ||
    die "OWT_SHARD_TOKENS=$OWT_SHARD_TOKENS: expected a whole number of tokens in 1..2147483647"
[ ! -e "$DATA_DIR" ] || [ -d "$DATA_DIR" ] || die "DATA_DIR=$DATA_DIR is not a folder"
for url in "$HF_ENDPOINT" "$GPT2_TOKENIZER_URL"; do
    [[ "$url" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]] || die "'$url' (HF_ENDPOINT or GPT2_TOKENIZER_URL) is not a URL: expected scheme://..."
done
if [ "$OWT_FILES" -gt 0 ]; then
    "$PYTHON" -c "import numpy, pyarrow" 2>/dev/null ||
        die "the OpenWebText sample needs $PYTHON with numpy and pyarrow: pip install numpy pyarrow, set PYTHON=..., or OWT_FILES=0 to skip it"
fi

# the folders this run may make that are not there yet, deepest first: removed on failure if left empty
for d in "$DATA_DIR/openwebtext/parquet" "$DATA_DIR/openwebtext" "$DATA_DIR/gpt2-small" "$DATA_DIR/gpt2"; do
    [ -e "$d" ] || NEW_DIRS+=("$d")
done
d=$DATA_DIR
while [ ! -e "$d" ]; do NEW_DIRS+=("$d"); d=$(dirname "$d"); done

# a run killed outright (kill -9, power loss) can't clean up: remove what it may have left
for f in gpt2/encoder.json gpt2/vocab.bpe gpt2-small/config.json gpt2-small/model.safetensors; do
    rm -f "$DATA_DIR/$f.part"
done
rm -rf "$DATA_DIR"/openwebtext/parquet/*.part "$DATA_DIR/openwebtext/.convert.part"

# ----------------------------------------------------------------------------
# tokenizer and GPT-2 small

fetch "$GPT2_TOKENIZER_URL/encoder.json" "$DATA_DIR/gpt2/encoder.json" "$SHA_ENCODER"
fetch "$GPT2_TOKENIZER_URL/vocab.bpe" "$DATA_DIR/gpt2/vocab.bpe" "$SHA_VOCAB"
fetch "$GPT2_URL/config.json" "$DATA_DIR/gpt2-small/config.json" "$SHA_CONFIG"
fetch "$GPT2_URL/model.safetensors" "$DATA_DIR/gpt2-small/model.safetensors" "$SHA_MODEL" 548105171

# ----------------------------------------------------------------------------
# OpenWebText sample: parquet file(s) -> shards

[ "$OWT_FILES" -gt 0 ] || { echo "done (OWT_FILES=0: no OpenWebText)"; exit 0; }
OWT_DIR=$DATA_DIR/openwebtext
parquets=()
for ((i = 0; i < OWT_FILES; i++)); do
    name=$(printf 'train-%05d-of-00073.parquet' "$i")
    dest=$OWT_DIR/parquet/$name
    meta=""
    [ -f "$dest" ] || meta=$(hf_lfs_meta "$OWT_URL/$name")
    if [ -f "$dest" ]; then
        echo "ok    $dest (already there)"
    elif [ -n "$meta" ]; then
        fetch "$OWT_URL/$name" "$dest" "${meta% *}" "${meta#* }"
    else
        echo "warning: Hugging Face sent no sha256 for $name; checking only that it is a parquet file"
        fetch "$OWT_URL/$name" "$dest" ""
    fi
    [ "$(head -c 4 "$dest")" = "PAR1" ] && [ "$(tail -c 4 "$dest")" = "PAR1" ] ||
        { rm -f "$dest"; die "$dest is not a parquet file (removed; run again)"; }
    parquets+=("$dest")
done

if compgen -G "$OWT_DIR/owt_*.bin" >/dev/null; then
    echo "ok    $OWT_DIR/owt_*.bin (shards already there; delete them to convert again)"
else
    # convert into a scratch folder and move the finished shards in: a failed conversion
    # leaves no shard that the trainers' globs would pick up
    PARTIAL=$OWT_DIR/.convert.part
    rm -rf "$PARTIAL"
    "$PYTHON" dev/data/openwebtext.py --parquet "${parquets[@]}" --out-dir "$PARTIAL" --shard-tokens "$OWT_SHARD_TOKENS" ||
        die "converting ${parquets[*]} to shards failed (see above)"
    mv "$PARTIAL"/owt_*.bin "$OWT_DIR"/
    rm -rf "$PARTIAL"
    PARTIAL=""
fi
echo "done: $(ls "$OWT_DIR"/owt_train_*.bin | wc -l) train shard(s) and $OWT_DIR/owt_val_000000.bin"
