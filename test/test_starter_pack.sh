#!/usr/bin/env bash
# Offline tests of scripts/download_starter_pack.sh: no network is used. Endpoints point at a
# closed local port (127.0.0.1:9) or at file:// folders made here, and a dead proxy is set so that
# even the default URLs cannot reach anything. Checks exit codes, the one-line messages, that no
# partial file is left (also after a kill mid-download), nor a folder the run made and left
# empty (while folders that were there stay), that files with the right sha256 are kept, that a
# wrong sha256 is rejected, and that bad settings are refused before any download. Run from the
# repo root:
#
#   bash test/test_starter_pack.sh        (ends with a Catch2-style summary line)
set -u
cd "$(dirname "$0")/.."
SCRIPT=scripts/download_starter_pack.sh
TOK_SRC=data/gpt2  # the real tokenizer files (tracked in the repo), served through file:// below

T=$(mktemp -d /tmp/test_starter_pack.XXXXXX)
trap 'rm -rf "$T"' EXIT
DEAD=http://127.0.0.1:9  # discard port: connection refused at once
# a dead proxy for every scheme, in case a test reaches a default URL
export http_proxy=$DEAD https_proxy=$DEAD HTTPS_PROXY=$DEAD ALL_PROXY=$DEAD all_proxy=$DEAD
unset no_proxy NO_PROXY

cases=0; failures=0
check() {  # name, condition...
    local name=$1; shift
    cases=$((cases + 1))
    if "$@"; then echo "PASS $name"; else failures=$((failures + 1)); echo "FAIL $name"; echo "  output: $(cat "$T/out" 2>/dev/null)"; fi
}
# run the script with the given environment; output in $T/out, exit code in $rc
run() { env "$@" bash "$SCRIPT" >"$T/out" 2>&1; rc=$?; }
has() { grep -qF -- "$1" "$T/out"; }
no_files() { [ -z "$(find "$1" -type f 2>/dev/null)" ]; }
no_parts() { [ -z "$(find "$1" -name '*.part' 2>/dev/null)" ]; }

# 1. nothing reachable: exit 1, one clear line, not a single file written
D=$T/d1
run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=$DEAD/gpt-2 PYTHON=true
check "offline: exit code 1" [ "$rc" = 1 ]
check "offline: message names the URL" has "error: download failed: $DEAD/gpt-2/encoder.json"
check "offline: says to check the network" has "Are you online?"
check "offline: no file left" no_files "$D"
check "offline: no folder left" [ ! -e "$D" ]

# 2. the default URLs behind a dead proxy
D=$T/d2
run DATA_DIR="$D" PYTHON=true
check "default URLs offline: exit 1 naming the OpenAI URL" \
    bash -c "[ $rc = 1 ] && grep -qF 'download failed: https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json' '$T/out'"
check "default URLs offline: no file left" no_files "$D"

# 3. a file with the wrong checksum is rejected and removed
mkdir -p "$T/bad"
echo '{"not": 0}' >"$T/bad/encoder.json"
D=$T/d3
run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=file://$T/bad PYTHON=true
check "bad checksum: exit 1" [ "$rc" = 1 ]
check "bad checksum: message" has "sha256 mismatch for file://$T/bad/encoder.json"
check "bad checksum: no file left" no_files "$D"

# 4. tokenizer served correctly, model offline: the good files stay, a stale .part goes
mkdir -p "$T/d4/gpt2-small"
echo stale >"$T/d4/gpt2-small/model.safetensors.part"
D=$T/d4
run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=file://$(realpath "$TOK_SRC") PYTHON=true
check "partial success: exit 1 at the model" bash -c "[ $rc = 1 ] && grep -qF 'download failed: $DEAD/openai-community/gpt2/resolve/' '$T/out'"
check "partial success: tokenizer files verified and kept" \
    bash -c "cmp -s '$D/gpt2/encoder.json' '$TOK_SRC/encoder.json' && cmp -s '$D/gpt2/vocab.bpe' '$TOK_SRC/vocab.bpe'"
check "partial success: no .part left (stale one removed)" no_parts "$D"
check "partial success: no model file" bash -c "[ ! -e '$D/gpt2-small/model.safetensors' ] && [ ! -e '$D/gpt2-small/config.json' ]"
check "partial success: the folder that was there stays, emptied of its stale .part" [ -d "$D/gpt2-small" ]

# 5. run again: verified files are not fetched again (the tokenizer URL is now dead too)
run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=$DEAD/gpt-2 PYTHON=true
check "rerun: keeps files with the right sha256" bash -c "[ $rc = 1 ] && grep -qF 'ok    $D/gpt2/encoder.json (already there)' '$T/out'"

# 6. missing python dependencies are reported before any download
D=$T/d6
run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=$DEAD/gpt-2 PYTHON=false
check "no pyarrow: exit 1 before downloading" bash -c "[ $rc = 1 ] && grep -qF 'needs false with numpy and pyarrow' '$T/out' && ! grep -q 'get ' '$T/out'"
check "no pyarrow: no file left" no_files "$D"
run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=$DEAD/gpt-2 PYTHON=false OWT_FILES=0
check "OWT_FILES=0: python not needed" bash -c "[ $rc = 1 ] && grep -qF 'download failed' '$T/out'"

# 7. killed mid-download: the .part is removed. encoder.json is a FIFO that sends 200 kB and
# then blocks, so curl is stuck inside the download when the script is killed.
mkdir -p "$T/slow"
mkfifo "$T/slow/encoder.json"
D=$T/d7
env DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=file://$T/slow PYTHON=true bash "$SCRIPT" >"$T/out" 2>&1 &
pid=$!
exec 3>"$T/slow/encoder.json"  # opens once curl opens the other end
head -c 200000 /dev/zero >&3  # more than curl's write buffer, so the .part has bytes on disk
for _ in $(seq 100); do [ -s "$D/gpt2/encoder.json.part" ] && break; sleep 0.1; done
saw_part=no; [ -s "$D/gpt2/encoder.json.part" ] && saw_part=yes
kill -TERM "$pid"
exec 3>&-  # let curl finish; bash runs the TERM trap when it returns
wait "$pid"; rc=$?
check "killed: the download had started" [ "$saw_part" = yes ]
check "killed: exit non-zero" [ "$rc" != 0 ]
check "killed: no file left" no_files "$D"

# 8. bad settings are refused before any download (the tokenizer is served, so a download would work),
# with nothing written; a failed run removes the folders it made, and only those
for setting in OWT_SHARD_TOKENS=abc OWT_SHARD_TOKENS=0 OWT_SHARD_TOKENS=2147483648 OWT_FILES=74 HF_ENDPOINT=127.0.0.1:9; do
    D=$T/d8
    run DATA_DIR="$D" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=file://$(realpath "$TOK_SRC") PYTHON=true "$setting"
    check "$setting: exit 1 before downloading" bash -c "[ $rc = 1 ] && [ \$(wc -l <'$T/out') = 1 ] && grep -q '^error: .*${setting%%=*}' '$T/out'"
    check "$setting: nothing written" [ ! -e "$D" ]
done
mkdir -p "$T/d8/mine"
echo keep >"$T/d8/mine/file"
run DATA_DIR="$T/d8" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=$DEAD/gpt-2 PYTHON=true
check "failed run: its empty folders removed, what was there kept" \
    bash -c "[ $rc = 1 ] && [ \"\$(cd '$T/d8' && find . | sort | tr '\n' ' ')\" = '. ./mine ./mine/file ' ]"
echo notadir >"$T/d9"
run DATA_DIR="$T/d9" HF_ENDPOINT=$DEAD GPT2_TOKENIZER_URL=$DEAD/gpt-2 PYTHON=true
check "DATA_DIR a file: refused" bash -c "[ $rc = 1 ] && grep -qF 'error: DATA_DIR=$T/d9 is not a folder' '$T/out'"

if [ "$failures" = 0 ]; then
    echo "All tests passed ($cases assertions in $cases test cases)"
else
    echo "test cases: $cases | $((cases - failures)) passed | $failures failed"
fi
[ "$failures" = 0 ]
