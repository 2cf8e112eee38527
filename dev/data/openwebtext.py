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

Each shard is written to PATH.tmp, and the .tmp files are renamed only once every token is in:
a run that fails (a token outside the vocabulary, an unreadable file, Ctrl-C) leaves nothing
behind. It refuses to write into a folder that already has owt_*.bin shards, so a stale shard
from an earlier run can never join the training glob. Bad input ends with one "error:" line and
exit code 1.
"""
import argparse
import glob
import os

import numpy as np

DATASET = "apollo-research/Skylion007-openwebtext-tokenizer-gpt2"
MAGIC, VERSION, VOCAB = 20240520, 1, 50257
MAX_SHARD_TOKENS = 2**31 - 1  # the header's token count is an int32


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
    shard_tokens (the last one may be shorter); shard 0 is val. Returns the paths written.
    All or nothing: each shard is written as PATH.tmp and the .tmp files are renamed only once
    the whole stream is in; on any failure (a bad token, an unreadable file, a full disk, Ctrl-C)
    the files and folders this call made are removed, and nothing that was there before."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SystemExit(f"error: --out-dir '{out_dir}' is a file, not a folder")
    existing = sorted(glob.glob(os.path.join(out_dir, f"{prefix}_*.bin")))
    if existing:
        raise SystemExit(f"error: {out_dir} already has {len(existing)} {prefix}_*.bin shards ({existing[0]}, ...): "
                         "remove them first, or pick another --out-dir")
    try:
        buf = np.empty(shard_tokens, dtype=np.uint16)
    except MemoryError:
        raise SystemExit(f"error: --shard-tokens {shard_tokens}: no memory for a shard of {2 * shard_tokens:,} bytes") from None
    made = []  # the folders makedirs will create, deepest first: removed again on failure
    d = os.path.abspath(out_dir)
    while not os.path.exists(d):
        made.append(d)
        d = os.path.dirname(d)
    fill, total, paths = 0, 0, []

    def flush():
        split = "val" if not paths else "train"
        path = os.path.join(out_dir, f"{prefix}_{split}_{len(paths):06d}.bin")
        paths.append(path)
        write_shard(path + ".tmp", buf[:fill])
        print(f"wrote {path}.tmp ({fill:,} tokens)", flush=True)

    try:
        os.makedirs(out_dir, exist_ok=True)
        for chunk in chunks:
            chunk = np.asarray(chunk).ravel()
            if max_tokens is not None:
                chunk = chunk[:max_tokens - total]
            if len(chunk) and (chunk.min() < 0 or chunk.max() >= VOCAB):
                bad = int(chunk.min()) if chunk.min() < 0 else int(chunk.max())
                raise SystemExit(f"error: token {bad} outside GPT-2's vocabulary near token {total:,}: "
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
        if not total:
            raise SystemExit("error: the input holds no tokens")
        for path in paths:
            os.replace(path + ".tmp", path)
    except BaseException as e:
        for path in paths:  # each is this call's: there were no shards before it
            for f in (path, path + ".tmp"):
                if os.path.exists(f):
                    os.remove(f)
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise SystemExit(f"error: could not write '{e.filename or out_dir}': {e.strerror}") from None
        raise
    print(f"done: {len(paths)} shard(s), {total:,} tokens, in {out_dir}")
    if len(paths) < 2:
        print(f"warning: only {total:,} tokens, all in the val shard: lower --shard-tokens to get train shards")
    return paths


def parquet_chunks(paths):
    """input_ids of local parquet files, a batch of rows at a time, flattened."""
    import pyarrow.parquet as pq
    for path in paths:
        try:
            for batch in pq.ParquetFile(path).iter_batches(columns=["input_ids"], batch_size=1024):
                yield batch.column(0).flatten().to_numpy()
        except (OSError, ValueError, KeyError) as e:  # pyarrow's ArrowIOError, ArrowInvalid, ArrowKeyError
            msg = " ".join(str(e).split()) or type(e).__name__
            raise SystemExit(f"error: --parquet '{path}' is not a parquet file with an input_ids column: {msg}") from None


def hub_chunks():
    """input_ids streamed from the Hugging Face hub, one row at a time."""
    from datasets import load_dataset
    for row in load_dataset(DATASET, split="train", streaming=True):
        yield np.asarray(row["input_ids"])


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one "error:" line and exit 1, like every other bad input"""

    def error(self, message):
        raise SystemExit(f"error: {self.prog}: {message}")


def main():
    p = ArgParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="data/openwebtext")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--parquet", nargs="+", help="read these local parquet files instead of the hub")
    args = p.parse_args()
    # everything checked before anything is created
    if not 0 < args.shard_tokens <= MAX_SHARD_TOKENS:
        p.error(f"--shard-tokens must be in 1..{MAX_SHARD_TOKENS} (the header's int32 count), got {args.shard_tokens}")
    if args.max_tokens is not None and args.max_tokens <= 0:
        p.error(f"--max-tokens must be positive, got {args.max_tokens}")
    if args.parquet:
        for path in args.parquet:
            if not os.path.isfile(path):
                p.error(f"--parquet '{path}' not found")
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise SystemExit("error: --parquet needs pyarrow, which this python lacks: pip install pyarrow") from None
        chunks = parquet_chunks(args.parquet)
    else:
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise SystemExit("error: streaming from the hub needs the datasets package: pip install datasets "
                             "(or give local files with --parquet)") from None
        chunks = hub_chunks()
    write_shards(chunks, args.out_dir, args.shard_tokens, args.max_tokens)


if __name__ == "__main__":
    main()
