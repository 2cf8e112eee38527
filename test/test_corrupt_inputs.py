#!/usr/bin/env python3
"""
test/test_corrupt_inputs.py -- generated corrupt inputs never get in.

From valid files (a small random GPT-2, its token shards and SAE from scripts/reference.py, and a
training state the CPU trainer saves), seeded generators make malformed ones of every class the
loaders must refuse: truncated files, corrupt safetensors headers (lengths, JSON, shapes, offsets,
dtypes, duplicate or missing tensors, trailing bytes), token shards with a bad magic, version or
count and tokens past the vocabulary, SAEs of the wrong shape or with NaN, training states with a
changed byte, value or metadata field, and llm.c checkpoints with hostile headers. Each one must end
the trainer with exit code 1, one line naming the file, and no file written. Then bad output paths,
logs and states met by --resume, --overwrite, --log, --dump-features and --sweep: refused in one
line before anything is written or deleted. The seed is printed;
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
    # a NaN and an Inf among the weights: caught at load, not as a NaN loss after the run has begun writing
    t = header[name]
    bits = {"F32": [struct.pack("<f", float("nan")), struct.pack("<f", float("inf"))],
            "F16": [struct.pack("<H", 0x7e00), struct.pack("<H", 0x7c00)],
            "BF16": [struct.pack("<H", 0x7fc0), struct.pack("<H", 0x7f80)]}[t["dtype"]]
    for what, value in zip(["NaN", "Inf"], bits):
        at = t["data_offsets"][0] + len(value) * rng.randrange((t["data_offsets"][1] - t["data_offsets"][0]) // len(value))
        out.append((f"{what} in {name} at data byte {at}", data[:len(data) - len(body)] + body[:at] + value + body[at + len(value):]))
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


def tree(path):
    """every folder and file under path, with the files' bytes; None if path does not exist"""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        with open(path, "rb") as f:
            return f.read()
    out = {}
    for d, _, names in os.walk(path):
        out[os.path.relpath(d, path) + "/"] = None
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), path)] = f.read()
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
        # beside the config.json that gives n_head (d_model 32 does not), so a file is read as far as its weights
        models = os.path.join(self.tmp, "models")
        os.makedirs(models, exist_ok=True)
        shutil.copy(self.ref + "/config.json", models)
        self.check_refused(cases, lambda i: os.path.join(models, f"model{i}.safetensors"),
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


    # A run checks every output path, folder, saved state and log before it writes anything: a
    # refused run leaves every file and folder as it was (no --out made, no run deleted by
    # --overwrite, no log cut, no sweep.json).
    def setUp(self):
        self.w = tempfile.mkdtemp(dir=self.tmp)

    def copy_saved(self, name="run"):
        shutil.copytree(self.saved, os.path.join(self.w, name))
        return os.path.join(self.w, name)

    def run_trainer(self, extra):
        return subprocess.run([TRAINER] + self.base + self.files() + extra, capture_output=True, text=True)

    def assert_refused(self, extra, named, paths):
        """the trainer with extra flags: exit 1, one line holding `named`, and every path in `paths` as it was"""
        before = {p: tree(p) for p in paths}
        r = self.run_trainer(extra)
        msg = f"{extra}: exit {r.returncode}\n{r.stdout}{r.stderr}"
        self.assertEqual(r.returncode, 1, msg)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, msg)
        self.assertTrue(lines[0].startswith("error: "), msg)
        self.assertIn(named, lines[0], msg)
        for p in paths:
            self.assertTrue(tree(p) == before[p], f"{p} was changed: {msg}")

    def test_resume_with_a_log_that_is_not_a_log(self):
        run, victim = self.copy_saved(), os.path.join(self.w, "victim.txt")
        with open(victim, "w") as f:
            f.write("First Citizen:\nBefore we proceed any further, hear me speak.\n")
        self.assert_refused(["--resume", run, "--out", run, "--max-steps", "4", "--log", victim], "victim.txt' line 1", [run, victim])

    def test_resume_with_a_damaged_log_line(self):
        run = self.copy_saved()
        log = os.path.join(run, "log.jsonl")
        with open(log) as f:
            lines = f.read().splitlines(keepends=True)
        self.assertGreaterEqual(len(lines), 3)
        for i in (0, 1):  # the first line, and one between two good ones
            damaged = lines[:i] + ["X" + lines[i][1:]] + lines[i + 1:]
            with open(log, "w") as f:
                f.write("".join(damaged))
            self.assert_refused(["--resume", run, "--out", run, "--max-steps", "4"], f"log.jsonl' line {i + 1} ", [run])
        # a last line a kill left half-written (no newline) is the one line dropped
        with open(log, "w") as f:
            f.write("".join(lines) + '{"step": 3, "lr')
        r = self.run_trainer(["--resume", run, "--out", run, "--max-steps", "4"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(log) as f:
            steps = [json.loads(l)["step"] for l in f.read().splitlines() if "eval" not in json.loads(l)]
        self.assertEqual(steps, [1, 2, 3, 4])

    def test_overwrite_deletes_nothing_when_an_output_path_is_bad(self):
        run, afile = self.copy_saved(), os.path.join(self.w, "afile")
        open(afile, "w").close()
        self.assert_refused(["--out", run, "--overwrite", "--log", os.path.join(self.w, "nodir", "l")], "--log", [run])
        self.assert_refused(["--out", run, "--overwrite", "--log", run], "--log", [run])  # a folder
        self.assert_refused(["--out", run, "--overwrite", "--dump-features", afile], "--dump-features", [run, afile])

    def test_dump_features_is_checked_before_training(self):
        out, afile = os.path.join(self.w, "o"), os.path.join(self.w, "afile")
        open(afile, "w").close()
        for dump in (afile, os.path.join(afile, "x")):
            self.assert_refused(["--out", out, "--dump-features", dump], "--dump-features", [out, afile])
            self.assert_refused(["--out", out, "--dump-features", dump, "--eval-only", "--init-sae", self.ref + "/init_sae"],
                                "--dump-features", [out, afile])

    def test_a_refused_run_makes_no_out_folder(self):
        out, src = os.path.join(self.w, "o"), self.copy_saved("src")
        self.assert_refused(["--out", out, "--resume", os.path.join(self.w, "nope")], "no training state there", [out])
        self.assert_refused(["--out", out, "--resume", src, "--max-steps", "4", "--lr", "2e-3"], "was saved with lr", [out, src])
        self.assert_refused(["--out", out, "--log", os.path.join(self.w, "nodir", "x.jsonl")], "--log", [out])
        os.truncate(os.path.join(src, "train_state.safetensors"), 1000)
        self.assert_refused(["--out", out, "--resume", src, "--max-steps", "4"], "train_state.safetensors", [out, src])

    def test_a_refused_sweep_writes_nothing(self):
        sweep, long_name, out = os.path.join(self.w, "ok.jsonl"), os.path.join(self.w, "long.jsonl"), os.path.join(self.w, "o")
        with open(sweep, "w") as f:
            f.write('{"name": "a", "mode": "local"}\n{"name": "b"}\n')
        with open(long_name, "w") as f:
            f.write(json.dumps({"name": "a" * 300}) + "\n")
        self.assert_refused(["--sweep", long_name, "--out", out], "long.jsonl line 1: \"name\" is 300 characters long", [out])
        first = os.path.join(self.w, "first")
        r = self.run_trainer(["--sweep", sweep, "--out", first])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        os.truncate(os.path.join(first, "b", "train_state.safetensors"), 1000)
        self.assert_refused(["--sweep", sweep, "--resume", first, "--out", out, "--max-steps", "4"], "line 2: ", [out, first])


if __name__ == "__main__":
    unittest.main()
