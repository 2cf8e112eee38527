#!/usr/bin/python3
"""
Offline test of dev/data/openwebtext.py's shard writing, on fake token rows (the real dataset
needs the network). Checks file names (val first), the llm.c header, that the shards concatenate
back to the input exactly, --max-tokens, the vocabulary check, no *.tmp left behind, and the
refusal to mix with old shards; with pyarrow installed, also the parquet reader.

    /usr/bin/python3 test/test_openwebtext.py      (needs numpy; ends with a Catch2-style summary)
"""
import glob
import importlib.util
import os
import sys
import tempfile
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("openwebtext", os.path.join(HERE, "..", "dev", "data", "openwebtext.py"))
owt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(owt)


def read_shard(path):
    data = open(path, "rb").read()
    header = np.frombuffer(data[:1024], dtype="<i4")
    tokens = np.frombuffer(data[1024:], dtype="<u2")
    assert header[0] == 20240520 and header[1] == 1, header[:3]
    assert header[2] == len(tokens), (header[2], len(tokens))
    assert not header[3:].any()
    return tokens


def fake_rows(n_rows, seed=0):
    # rows of 1024 tokens like the dataset's, int64 like a parquet column read by numpy
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50257, size=1024, dtype=np.int64) for _ in range(n_rows)]


def test_shards_concatenate_back():
    rows = fake_rows(7)  # 7168 tokens in shards of 2500: 2500, 2500, 2168
    with tempfile.TemporaryDirectory() as d:
        paths = owt.write_shards(iter(rows), d, shard_tokens=2500)
        names = [os.path.basename(p) for p in paths]
        assert names == ["owt_val_000000.bin", "owt_train_000001.bin", "owt_train_000002.bin"], names
        assert sorted(glob.glob(os.path.join(d, "*"))) == sorted(paths)  # no .tmp left
        lengths = [len(read_shard(p)) for p in paths]
        assert lengths == [2500, 2500, 2168], lengths
        got = np.concatenate([read_shard(p) for p in paths])
        assert np.array_equal(got, np.concatenate(rows))


def test_max_tokens_and_exact_fill():
    rows = fake_rows(5, seed=1)
    with tempfile.TemporaryDirectory() as d:
        paths = owt.write_shards(iter(rows), d, shard_tokens=1000, max_tokens=3000)
        assert [len(read_shard(p)) for p in paths] == [1000, 1000, 1000]  # no empty fourth shard
        assert np.array_equal(np.concatenate([read_shard(p) for p in paths]), np.concatenate(rows)[:3000])


def test_rejects_non_gpt2_tokens():
    with tempfile.TemporaryDirectory() as d:
        try:
            owt.write_shards(iter([np.array([1, 2, 50257])]), d, shard_tokens=10)
        except SystemExit as e:
            assert "outside GPT-2's vocabulary" in str(e), e
        else:
            raise AssertionError("token 50257 was accepted")
        assert not os.listdir(d)


def test_refuses_existing_shards():
    with tempfile.TemporaryDirectory() as d:
        owt.write_shards(iter(fake_rows(1)), d, shard_tokens=4096)
        try:
            owt.write_shards(iter(fake_rows(1)), d, shard_tokens=4096)
        except SystemExit as e:
            assert "already has" in str(e), e
        else:
            raise AssertionError("wrote over existing shards")


def test_parquet_reader():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        print("  (pyarrow not installed: parquet reader not exercised)")
        return
    rows = fake_rows(3, seed=2)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "train-00000-of-00001.parquet")
        pq.write_table(pa.table({"input_ids": [r.tolist() for r in rows]}), src, row_group_size=2)
        out = os.path.join(d, "out")
        paths = owt.write_shards(owt.parquet_chunks([src, src]), out, shard_tokens=4000)
        got = np.concatenate([read_shard(p) for p in paths])
        assert np.array_equal(got, np.concatenate(rows + rows))


def main():
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    failed = 0
    for t in tests:
        try:
            t()
            print(f"PASS {t.__name__}")
        except BaseException:  # SystemExit from the module counts as a failure too
            failed += 1
            print(f"FAIL {t.__name__}")
            traceback.print_exc()
    # Catch2's closing lines, which test/run_tests.sh counts
    if failed:
        print(f"test cases: {len(tests)} | {len(tests) - failed} passed | {failed} failed")
    else:
        print(f"All tests passed ({len(tests)} assertions in {len(tests)} test cases)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
