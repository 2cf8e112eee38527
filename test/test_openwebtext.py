#!/usr/bin/python3
"""
Offline test of dev/data/openwebtext.py's shard writing, on fake token rows (the real dataset
needs the network). Checks file names (val first), the llm.c header, that the shards concatenate
back to the input exactly, --max-tokens, the vocabulary check, no *.tmp left behind, the
refusal to mix with old shards, that a failed run leaves nothing (no shard, no .tmp, no folder
it made) and keeps what was there, and that each bad flag or file is one "error:" line and exit
1 with nothing created (the command line run with a stand-in for pyarrow.parquet that reads .npy
files, and one that is missing); with pyarrow installed, also the parquet reader.

    /usr/bin/python3 test/test_openwebtext.py      (needs numpy; ends with a Catch2-style summary)
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "dev", "data", "openwebtext.py")
spec = importlib.util.spec_from_file_location("openwebtext", SCRIPT)
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


def test_failure_leaves_nothing():
    # a token outside the vocabulary after four full shards: no shard or .tmp stays, nor the folders the
    # call made; a file that was there before stays
    rows = fake_rows(5, seed=3)
    rows[4][400] = 60000
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "keep.txt"), "w") as f:
            f.write("mine")
        for out in (d, os.path.join(d, "new", "sub")):
            try:
                owt.write_shards(iter(rows), out, shard_tokens=1000)
            except SystemExit as e:
                assert "token 60000 outside GPT-2's vocabulary" in str(e), e
            else:
                raise AssertionError("token 60000 was accepted")
            assert os.listdir(d) == ["keep.txt"], os.listdir(d)


# a stand-in for pyarrow.parquet, so the command line is tested without pyarrow: a "parquet" file is a
# .npy of tokens; np.load raises FileNotFoundError or ValueError where pyarrow raises OSError or ArrowInvalid
STUB = """
import numpy as np
class ParquetFile:
    def __init__(self, path):
        self.a = np.load(path)
    def iter_batches(self, columns, batch_size):
        for i in range(0, len(self.a), batch_size):
            yield Batch(self.a[i:i + batch_size])
class Batch:
    def __init__(self, a):
        self.a = a
    def column(self, i):
        return self
    def flatten(self):
        return self
    def to_numpy(self):
        return self.a
"""


def run_cli(args, pyarrow_init=""):
    """dev/data/openwebtext.py ARGS with pyarrow.parquet replaced by STUB (and pyarrow/__init__.py by pyarrow_init)"""
    with tempfile.TemporaryDirectory() as stub:
        os.makedirs(os.path.join(stub, "pyarrow"))
        with open(os.path.join(stub, "pyarrow", "__init__.py"), "w") as f:
            f.write(pyarrow_init)
        with open(os.path.join(stub, "pyarrow", "parquet.py"), "w") as f:
            f.write(STUB)
        env = dict(os.environ, PYTHONPATH=stub)
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=120)


def expect_error(r, fragment):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def test_command_line():
    with tempfile.TemporaryDirectory() as d:
        good, bad, text = (os.path.join(d, n) for n in ("good.npy", "bad.npy", "text.parquet"))
        tokens = np.concatenate(fake_rows(5, seed=4))
        np.save(good, tokens)
        tokens[4500] = 60000
        np.save(bad, tokens)
        with open(text, "w") as f:
            f.write("not parquet\n")
        out = os.path.join(d, "out", "owt")
        r = run_cli(["--parquet", good, "--out-dir", out, "--shard-tokens", "2000"])
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(out)) == ["owt_train_000001.bin", "owt_train_000002.bin", "owt_val_000000.bin"]
        names = sorted(os.listdir(out), key=lambda n: n[-10:])  # by shard number: val first
        assert np.array_equal(np.concatenate([read_shard(os.path.join(out, n)) for n in names]), np.load(good))
        shutil.rmtree(os.path.join(d, "out"))
        a_file = os.path.join(d, "a_file")
        with open(a_file, "w") as f:
            f.write("x")
        for args, fragment, *pyarrow_init in [
                (["--parquet", bad, "--shard-tokens", "1000"], "token 60000 outside GPT-2's vocabulary"),
                (["--parquet", os.path.join(d, "nope.parquet")], "--parquet '" + os.path.join(d, "nope.parquet") + "' not found"),
                (["--parquet", text], f"--parquet '{text}' is not a parquet file"),
                (["--parquet", good], "--parquet needs pyarrow", "raise ImportError('No module named pyarrow')"),
                (["--parquet", good, "--shard-tokens", "0"], "--shard-tokens must be in 1..2147483647"),
                (["--parquet", good, "--shard-tokens", "100000000000000"], "--shard-tokens must be in 1..2147483647"),
                (["--parquet", good, "--shard-tokens", "1.5"], "argument --shard-tokens: invalid int value: '1.5'"),
                (["--parquet", good, "--max-tokens", "-5"], "--max-tokens must be positive, got -5"),
                (["--parquet", good, "--max-tokens", "0"], "--max-tokens must be positive, got 0"),
                (["--parquet", good, "--bogus"], "unrecognized arguments: --bogus")]:
            expect_error(run_cli(args + ["--out-dir", out], *pyarrow_init), fragment)
            assert sorted(os.listdir(d)) == ["a_file", "bad.npy", "good.npy", "text.parquet"], (args, os.listdir(d))
        expect_error(run_cli(["--parquet", good, "--out-dir", a_file]), f"--out-dir '{a_file}' is a file, not a folder")
        r = run_cli(["--help"])
        assert r.returncode == 0 and "usage: openwebtext.py" in r.stdout, r.stderr


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
