#!/usr/bin/env bash
# dev/peer_pack.sh -- packs what the GPU box lacks to time the e2e_sae library (ApolloResearch/e2e_sae)
# beside our engine (dev/bench_e2e_sae.py, run there by dev/gpu_peer.sh). Run it here, where PyPI is
# reachable; the GPU box reaches nothing. It fills two git-ignored folders:
#   .whl/   the wheels the box lacks to import the library's training step (cp312, x86-64), and
#           nothing else: gpu_peer.sh installs every wheel in it
#   .peer/  e2e_sae-2.1.1.tar.gz, the library's source at v2.1.1 (the PyPI wheel of 2.1.1 lacks
#           e2e_sae/scripts/train_tlens, which e2e_sae/loader.py imports), and stub/wandb, a stand-in
#           for wandb, which e2e_sae imports at load but the training step never calls (the real
#           one is ~60 MB installed)
# Both travel to the box as carried paths (run's carry: .whl and .peer), so it fails if they pass
# 30 MiB together: with our binaries (~25 MiB) that stays under the 64 MiB a call may carry.
# Usage: dev/peer_pack.sh [E2E_SAE_GIT_DIR]
#   E2E_SAE_GIT_DIR: a clone (bare is fine) of github.com/ApolloResearch/e2e_sae holding v2.1.1;
#   the search tool's fetch of github:ApolloResearch/e2e_sae leaves one at the default below.
set -eu
cd "$(dirname "$0")/.."
SRC_GIT=${1:-/work/.mirror/ApolloResearch+e2e_sae/repo}
E2E_COMMIT=83b4add4d2652a4e5c6775a0e2b752897c871a87  # v2.1.1, the newest release ("Bump to v2.1.1")

# The wheels: the library's imports on the way to its step (e2e_sae.models.transformers pulls in
# loader -> scripts/train_tlens/run_train_tlens -> fire, dotenv, pydantic, wandb; losses and utils
# pydantic) and transformer-lens 3.9.0's import-time ones, less what the box has (KINDS.md:
# torch, transformers, accelerate, einops, jaxtyping, numpy, pandas, pyarrow, fsspec, xxhash, ...).
# Of transformer-lens' requirements, beartype, typeguard, fancy-einsum and
# transformers-stream-generator (sdist only) are never imported by 3.9.0 and zstandard by e2e_sae's
# step: they stay behind. typing-extensions rides along because pydantic 2.14 needs >= 4.16 and
# the box's version is unknown. One version of each: two stop the install.
WHEELS="
transformer-lens==3.9.0
better-abc==0.0.3
datasets==5.2.0
dill==0.4.1
multiprocess==0.70.19
pydantic==2.14.4
pydantic-core==2.50.5
annotated-types==0.8.0
typing-inspection==0.4.5
typing-extensions==4.16.0
fire==0.7.1
termcolor==3.3.0
python-dotenv==1.2.4
"
rm -rf .whl .peer  # .whl holds exactly this list: gpu_peer.sh installs all of it
mkdir -p .whl .peer/stub/wandb/apis
for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$w"
done

git --git-dir="$SRC_GIT" cat-file -e "$E2E_COMMIT^{commit}" || {
    echo "peer_pack: $SRC_GIT lacks e2e_sae v2.1.1 ($E2E_COMMIT): fetch github:ApolloResearch/e2e_sae and pass its git dir"; exit 1; }
# the whole tree less a 3.9 MB sample checkpoint nothing here loads
git --git-dir="$SRC_GIT" archive --format=tar.gz --prefix=e2e_sae/ -o .peer/e2e_sae-2.1.1.tar.gz "$E2E_COMMIT" \
    -- . ':(exclude)e2e_sae/scripts/train_tlens/sample_models'

# wandb's stand-in: e2e_sae needs the module and wandb.apis.public.Run (a type hint) at import
cat > .peer/stub/wandb/__init__.py <<'EOF'
"""A stand-in for wandb (dev/peer_pack.sh): e2e_sae imports wandb at load, its training step never
calls it. Anything that does call it fails loudly instead of timing something else."""
STUB = True
run = None


def _stub(*args, **kwargs):
    raise RuntimeError("wandb is a stub here (dev/peer_pack.sh): the benchmark must not call it")


init = log = finish = save = Api = _stub
EOF
: > .peer/stub/wandb/apis/__init__.py
cat > .peer/stub/wandb/apis/public.py <<'EOF'
class Run:  # only a type hint in e2e_sae.models.transformers
    pass
EOF

ls -l .whl .peer
total=$(du -cb .whl .peer | tail -n 1 | cut -f1)
echo "peer_pack: .whl + .peer = $(awk -v b="$total" 'BEGIN { printf "%.1f MiB", b / 1048576 }') (limit 30 MiB)"
[ "$total" -le $((30 * 1048576)) ] || { echo "peer_pack: over 30 MiB: drop something"; exit 1; }
