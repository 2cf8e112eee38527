"""
OpenWebText, pre-tokenised with GPT-2's BPE, -> llm.c token shards (SPEC §7) for the trainers.

Source: the dataset the e2e SAE paper trained on, apollo-research/Skylion007-openwebtext-tokenizer-gpt2
on Hugging Face (~9B tokens in 73 parquet files; column `input_ids`, rows of 1024 tokens cut
from the concatenated documents, which are separated by <|endoftext|> 50256). Rows are written
in dataset order into shards of --shard-tokens tokens (default 100M); the first shard is val,
the rest train:

    data/openwebtext/owt_val_000000.bin, owt_train_000001.bin, owt_train_000002.bin, ...

    pip install datasets numpy
    python dev/data/openwebtext.py                           # streams the whole dataset (~18 GB of shards)
    python dev/data/openwebtext.py --max-tokens 500000000    # first 500M tokens: val + 4 train shards
    python dev/data/openwebtext.py --parquet train-00000-of-00073.parquet --shard-tokens 10000000
                                   # local parquet files (needs pyarrow only; scripts/download_starter_pack.sh)

Each shard is written to PATH.tmp and renamed. It refuses to write into a folder that already
has owt_*.bin shards, so a stale shard from an earlier run can never join the training glob.
"""
import argparse
import glob
import os

import numpy as np

DATASET = "apollo-research/Skylion007-openwebtext-tokenizer-gpt2"
MAGIC, VERSION, VOCAB = 20240520, 1, 50257


def write_shard(path, tokens):
    """One llm.c shard: int32 header [20240520, 1, n, 0 ...] (256 of them), then n uint16 tokens."""
    tokens = np.asarray(tokens)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, len(tokens))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    os.replace(tmp, path)


def write_shards(chunks, out_dir, shard_tokens, max_tokens=None, prefix="owt"):
    """Concatenates the 1-D token arrays in `chunks` and cuts the stream into shards of
    shard_tokens (the last one may be shorter); shard 0 is val. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    existing = sorted(glob.glob(os.path.join(out_dir, f"{prefix}_*.bin")))
    if existing:
        raise SystemExit(f"error: {out_dir} already has {len(existing)} {prefix}_*.bin shards ({existing[0]}, ...): "
                         "remove them first, or pick another --out-dir")
    buf = np.empty(shard_tokens, dtype=np.uint16)
    fill, total, paths = 0, 0, []

    def flush():
        split = "val" if not paths else "train"
        path = os.path.join(out_dir, f"{prefix}_{split}_{len(paths):06d}.bin")
        write_shard(path, buf[:fill])
        paths.append(path)
        print(f"wrote {path} ({fill:,} tokens)", flush=True)

    for chunk in chunks:
        chunk = np.asarray(chunk).ravel()
        if max_tokens is not None:
            chunk = chunk[:max_tokens - total]
        if len(chunk) and (chunk.min() < 0 or chunk.max() >= VOCAB):
            raise SystemExit(f"error: token {int(chunk.max())} outside GPT-2's vocabulary near token {total:,}: "
                             "not GPT-2 tokens?")
        while len(chunk):
            take = min(shard_tokens - fill, len(chunk))
            buf[fill:fill + take] = chunk[:take]
            fill, total, chunk = fill + take, total + take, chunk[take:]
            if fill == shard_tokens:
                flush()
                fill = 0
        if max_tokens is not None and total >= max_tokens:
            break
    if fill:
        flush()
    if len(paths) < 2:
        print(f"warning: only {total:,} tokens, all in the val shard: lower --shard-tokens to get train shards")
    return paths


def parquet_chunks(paths):
    """input_ids of local parquet files, a batch of rows at a time, flattened."""
    import pyarrow.parquet as pq
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=["input_ids"], batch_size=1024):
            yield batch.column(0).flatten().to_numpy()


def hub_chunks():
    """input_ids streamed from the Hugging Face hub, one row at a time."""
    from datasets import load_dataset
    for row in load_dataset(DATASET, split="train", streaming=True):
        yield np.asarray(row["input_ids"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="data/openwebtext")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--parquet", nargs="+", help="read these local parquet files instead of the hub")
    args = p.parse_args()
    if args.shard_tokens <= 0:
        p.error("--shard-tokens must be positive")
    chunks = parquet_chunks(args.parquet) if args.parquet else hub_chunks()
    write_shards(chunks, args.out_dir, args.shard_tokens, args.max_tokens)


if __name__ == "__main__":
    main()
