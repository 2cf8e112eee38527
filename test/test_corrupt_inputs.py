#!/usr/bin/env python3
"""
test/test_corrupt_inputs.py -- generated corrupt inputs never get in.

From valid files (a small random GPT-2, its token shards and SAE from scripts/reference.py, and a
training state the CPU trainer saves), seeded generators make malformed ones of every class the
loaders must refuse: truncated files, corrupt safetensors headers (lengths, JSON, shapes, offsets,
dtypes, duplicate or missing tensors, trailing bytes), token shards with a bad magic, version or
count and tokens past the vocabulary, SAEs of the wrong shape or with NaN, training states with a
changed byte, value or metadata field, and llm.c checkpoints with hostile headers. Each one must end
the trainer with exit code 1, one line naming the file, and no file written. The seed is printed;
SAE_CORRUPT_SEED=N repeats a run.

Run from the repo root after `make train_gpt2_sae_cpu`, with a python that has torch (for the
reference files): /usr/bin/python3 test/test_corrupt_inputs.py -v
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, "train_gpt2_sae_cpu")


def split_safetensors(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header, body):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def truncations(data, rng, n, start):
    """n copies of data cut at random lengths in [start, len(data))"""
    return [(f"truncated to {cut} bytes", data[:cut]) for cut in (rng.randrange(start, len(data)) for _ in range(n))]


def model_mutations(data, rng):
    """(what, bytes) pairs, each a model file the loader must refuse"""
    header, body = split_safetensors(data)
    out = truncations(data, rng, 4, 8)
    out.append(("header length past the end", struct.pack("<Q", len(data)) + data[8:]))
    out.append(("header length 0", struct.pack("<Q", 0) + data[8:]))
    out.append(("header not JSON", data[:8] + b"#" + data[9:]))
    out.append(("trailing bytes", data + b"\0" * 8))
    name = first_tensor(header)
    for what, change in [
        ("shape 1e30", lambda t: t.update(shape=[1e30] + t["shape"][1:])),
        ("fractional shape", lambda t: t.update(shape=[t["shape"][0] + 0.5] + t["shape"][1:])),
        ("negative shape", lambda t: t.update(shape=[-t["shape"][0]] + t["shape"][1:])),
        ("shape that overflows", lambda t: t.update(shape=[2 ** 40, 2 ** 40])),
        ("offsets 1e30", lambda t: t.update(data_offsets=[0, 1e30])),
        ("offsets reversed", lambda t: t.update(data_offsets=t["data_offsets"][::-1])),
        ("unknown dtype", lambda t: t.update(dtype="Q7")),
        ("shape that does not match the offsets", lambda t: t.update(shape=[t["shape"][0] + 1] + t["shape"][1:])),
    ]:
        h = json.loads(json.dumps(header))
        change(h[name])
        out.append((f"{name}: {what}", join_safetensors(h, body)))
    h = json.loads(json.dumps(header))
    del h[name]
    out.append((f"{name} missing", join_safetensors(h, body)))
    # a duplicate name: two entries under one key, written by hand (json.dumps cannot)
    text = json.dumps(header)
    dup = text[:-1] + ", " + json.dumps(name) + ": " + json.dumps(header[name]) + "}"
    dup_b = dup.encode() + b" " * (-len(dup) % 8)
    out.append((f"{name} twice", struct.pack("<Q", len(dup_b)) + dup_b + body))
    return out


def shard_mutations(data, vocab, rng):
    n = len(data) // 2 - 512
    out = truncations(data, rng, 3, 0)
    out.append(("bad magic", struct.pack("<i", 1234) + data[4:]))
    out.append(("bad version", data[:4] + struct.pack("<i", 9) + data[8:]))
    out.append(("count larger than the file", data[:8] + struct.pack("<i", n + 10) + data[12:]))
    out.append(("negative count", data[:8] + struct.pack("<i", -5) + data[12:]))
    pos = 1024 + 2 * rng.randrange(0, n)
    out.append((f"token {vocab + 7} at byte {pos}", data[:pos] + struct.pack("<H", vocab + 7) + data[pos + 2:]))
    return out


def state_mutations(data, rng):
    header, body = split_safetensors(data)
    out = truncations(data, rng, 3, 8)
    for _ in range(4):  # any changed byte of tensor data breaks that tensor's checksum
        pos = rng.randrange(0, len(body))
        b = bytearray(body)
        b[pos] ^= 1 << rng.randrange(8)
        out.append((f"bit flipped at data byte {pos}", join_safetensors(header, bytes(b))))
    for key, value in [("step", "4junk"), ("step", "-1"), ("rows_consumed", "99999999999999999999"),
                       ("alive_tokens", ""), ("rows_consumed", "3"), ("last_eval_samples", "1000000"), ("batch", "3"),
                       ("lr", "1"), ("inputs", "0123456789abcdef"), ("sparse_from", "1"), ("sparse_from", "7")]:
        h = json.loads(json.dumps(header))
        h["__metadata__"][key] = value
        out.append((f"metadata {key} = {value!r}", join_safetensors(h, body)))
    h = json.loads(json.dumps(header))
    del h["__metadata__"]["step"]
    out.append(("metadata step missing", join_safetensors(h, body)))
    return out


class CorruptInputsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.seed = int(os.environ.get("SAE_CORRUPT_SEED", random.randrange(1 << 30)))
        print(f"\ncorrupt inputs: SAE_CORRUPT_SEED={cls.seed}")
        cls.rng = random.Random(cls.seed)
        cls.tmp = tempfile.mkdtemp(prefix="test_corrupt_inputs.")
        cls.ref = os.path.join(cls.tmp, "ref")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reference.py"), "--out", cls.ref, "--mode", "e2e",
                            "--n-layer", "3", "--n-head", "2", "--d-model", "32", "--vocab", "97", "--max-t", "16",
                            "--layer", "1", "--dict-size", "64", "--steps", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        cls.base = ["--layer", "1", "--batch", "2", "--seq-len", "8", "--grad-accum", "2", "--dict-size", "64",
                    "--samples", "64", "--eval-samples", "2", "--max-steps", "2"]
        cls.saved = os.path.join(cls.tmp, "saved")
        r = cls.train(cls.saved, cls.files())
        assert r.returncode == 0, r.stdout + r.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def files(cls, **swap):
        f = {"--model": cls.ref + "/model.safetensors", "--train": cls.ref + "/train.bin", "--val": cls.ref + "/val.bin"}
        f.update(swap)
        return [x for kv in f.items() for x in kv]

    @classmethod
    def train(cls, out, args):
        return subprocess.run([TRAINER] + cls.base + args + ["--out", out], capture_output=True, text=True)

    def check_refused(self, cases, write_to, args_for):
        for i, (what, data) in enumerate(cases):
            path = write_to(i)
            with open(path, "wb") as f:
                f.write(data)
            out = os.path.join(self.tmp, f"out{i}")
            shutil.rmtree(out, ignore_errors=True)
            r = self.train(out, args_for(path, out))
            msg = f"{what} (seed {self.seed}): exit {r.returncode}\n{r.stdout}{r.stderr}"
            self.assertEqual(r.returncode, 1, msg)
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            self.assertEqual(len(lines), 1, msg)
            self.assertTrue(lines[0].startswith("error: "), msg)
            self.assertIn(os.path.basename(path), lines[0], msg)
            if os.environ.get("SAE_CORRUPT_VERBOSE"):
                print(f"  {what}: {lines[0][:150]}")
            written = [n for n in (os.listdir(out) if os.path.isdir(out) else []) if not n.startswith(".")]
            self.assertEqual(written, [], msg)

    def test_models(self):
        with open(self.ref + "/model.safetensors", "rb") as f:
            cases = model_mutations(f.read(), self.rng)
        self.check_refused(cases, lambda i: os.path.join(self.tmp, f"model{i}.safetensors"),
                           lambda p, out: self.files(**{"--model": p}))

    def test_llmc_checkpoints(self):
        with open(self.ref + "/model.bin", "rb") as f:
            data = f.read()
        hdr = list(struct.unpack("<256i", data[:1024]))
        cases = truncations(data, self.rng, 3, 1024)
        for slot, value, what in [(2, 0, "maxT 0"), (3, -1, "V -1"), (4, 1 << 30, "2^30 layers"), (5, 3, "n_head not dividing C"),
                                  (6, 1 << 20, "C 2^20"), (7, 5, "padded V below V"), (1, 4, "version 4")]:
            h = list(hdr)
            h[slot] = value
            cases.append((what, struct.pack("<256i", *h) + data[1024:]))
        self.check_refused(cases, lambda i: os.path.join(self.tmp, f"model{i}.bin"), lambda p, out: self.files(**{"--model": p}))

    def test_shards(self):
        with open(self.ref + "/train.bin", "rb") as f:
            cases = shard_mutations(f.read(), 97, self.rng)
        self.check_refused(cases, lambda i: os.path.join(self.tmp, f"shard{i}.bin"), lambda p, out: self.files(**{"--train": p}))

    def test_saes(self):
        with open(self.ref + "/init_sae/sae_weights.safetensors", "rb") as f:
            data = f.read()
        header, body = split_safetensors(data)
        cases = [(c[0], c[1]) for c in model_mutations(data, self.rng)]
        b = bytearray(body)
        start = header["W_dec"]["data_offsets"][0]
        b[start:start + 4] = struct.pack("<f", float("nan"))
        cases.append(("NaN in W_dec", join_safetensors(header, bytes(b))))

        def write_sae(i):
            d = os.path.join(self.tmp, f"sae{i}")
            os.makedirs(d, exist_ok=True)
            return os.path.join(d, "sae_weights.safetensors")
        self.check_refused(cases, write_sae, lambda p, out: self.files() + ["--init-sae", os.path.dirname(p)])

    def test_training_states(self):
        with open(os.path.join(self.saved, "train_state.safetensors"), "rb") as f:
            cases = state_mutations(f.read(), self.rng)

        def write_state(i):
            d = os.path.join(self.tmp, f"state{i}")
            os.makedirs(d, exist_ok=True)
            return os.path.join(d, "train_state.safetensors")
        self.check_refused(cases, write_state, lambda p, out: self.files() + ["--resume", os.path.dirname(p), "--max-steps", "4"])


if __name__ == "__main__":
    unittest.main()
