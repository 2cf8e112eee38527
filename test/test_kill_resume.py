#!/usr/bin/env python3
"""
test/test_kill_resume.py -- a kill at any moment loses nothing, and the resumed run is the run.

The CPU trainer, on a small random model from scripts/reference.py, saving every 2 updates with
evals and alive windows in between, is killed with SIGKILL:
  - deterministically at its k-th file write or rename (SAE_KILL_AT_FILE_OP=k, llmc/utils.h), for
    every k over its first two saves, so every point of a save is hit;
  - at seeded random times (the seed is printed; SAE_KILL_SEED=N repeats a run).
After a kill the files must come from one save (the state, cfg.json and the export agree). Then
it is resumed as a user would (--resume OUT; --overwrite when no save was made yet), again and
again until it finishes. Each time the training state, the SAELens export (weights, cfg.json,
sparsity) must equal an uninterrupted run's byte for byte, and log.jsonl line for line (tokens/s
aside).

Run from the repo root after `make train_gpt2_sae_cpu`, with a python that has torch (for the
reference model): /usr/bin/python3 test/test_kill_resume.py -v
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, "train_gpt2_sae_cpu")
SAVED = ["train_state.safetensors", "sae_weights.safetensors", "cfg.json", "sparsity.safetensors"]
OPS_PER_SAVE = 12  # file writes and renames in one save (pinned by test_counts_file_ops_per_save)


def read_log(path):
    """the log's lines with tokens/s (a timing) removed"""
    with open(path) as f:
        return [re.sub(r', "tokens_per_s": [^,}]*', "", line) for line in f]


def tensor_bytes_and_meta(path):
    """{name: raw bytes} and the __metadata__ of a safetensors file"""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}, meta


def assert_one_save(test, out, what):
    """The files a kill left, once a committed save is moved into place (as the trainer's
    save_set_recover does at its next start, done here on a copy): all from one save."""
    view = out + ".view"
    shutil.copytree(out, view)
    ready = os.path.join(view, ".save.ready")
    if os.path.isdir(ready):
        for name in os.listdir(ready):
            os.replace(os.path.join(ready, name), os.path.join(view, name))
    if os.path.exists(os.path.join(view, "train_state.safetensors")):
        for name in SAVED:
            test.assertTrue(os.path.exists(os.path.join(view, name)), f"{what}: a state without its {name}")
        state, meta = tensor_bytes_and_meta(os.path.join(view, "train_state.safetensors"))
        weights, _ = tensor_bytes_and_meta(os.path.join(view, "sae_weights.safetensors"))
        with open(os.path.join(view, "cfg.json")) as f:
            steps_done = json.load(f)["training"]["steps_done"]
        test.assertEqual(int(meta["step"]), steps_done, f"{what}: the state and cfg.json come from different saves")
        test.assertEqual(state["W_enc"], weights["W_enc"], f"{what}: the state and the export come from different saves")
    shutil.rmtree(view)


class KillResumeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_kill_resume.")
        ref = os.path.join(cls.tmp, "ref")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reference.py"), "--out", ref, "--mode", "e2e",
                            "--n-layer", "3", "--n-head", "2", "--d-model", "32", "--vocab", "97", "--max-t", "16",
                            "--layer", "1", "--dict-size", "64", "--steps", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        # 12 updates: saves at 2, 4, .., 10 and at the end; evals every 2 updates; alive windows of 2
        cls.args = ["--model", ref + "/model.safetensors", "--train", ref + "/train.bin", "--val", ref + "/val.bin",
                    "--layer", "1", "--mode", "e2e", "--batch", "2", "--seq-len", "8", "--grad-accum", "2",
                    "--dict-size", "64", "--samples", "48", "--warmup-samples", "8", "--save-every", "2",
                    "--eval-every", "8", "--eval-samples", "4", "--alive-window", "64"]
        cls.full = os.path.join(cls.tmp, "full")
        t0 = time.time()
        r = cls.train(cls.full, [])
        cls.full_seconds = time.time() - t0
        assert r.returncode == 0, r.stdout + r.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def train(cls, out, extra, env=None):
        return subprocess.run([TRAINER] + cls.args + ["--out", out] + extra, capture_output=True, text=True,
                              env=dict(os.environ, **(env or {})))

    def resume_until_done(self, out):
        """what a user does after a kill: --resume, or start over if nothing was saved yet"""
        r = self.train(out, ["--resume", out])
        if r.returncode == 1 and "no training state there" in r.stderr:
            r = self.train(out, ["--overwrite"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def assert_same_as_full(self, out, what):
        for name in SAVED:
            with open(os.path.join(self.full, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
                self.assertEqual(a.read(), b.read(), f"{what}: {name} differs from the uninterrupted run's")
        self.assertEqual(read_log(os.path.join(self.full, "log.jsonl")), read_log(os.path.join(out, "log.jsonl")),
                         f"{what}: log.jsonl differs from the uninterrupted run's")
        self.assertFalse(os.path.exists(os.path.join(out, ".save.ready")) or os.path.exists(os.path.join(out, ".save.tmp")))

    def test_counts_file_ops_per_save(self):
        # the kill points below cover whole saves only if OPS_PER_SAVE is right. A kill comes just
        # before its op: at op OPS_PER_SAVE the first save's last move is still to do; at the next
        # op that save is whole and the second one has begun
        out = os.path.join(self.tmp, "count")
        r = self.train(out, [], env={"SAE_KILL_AT_FILE_OP": str(OPS_PER_SAVE)})
        self.assertEqual(r.returncode, -signal.SIGKILL)
        self.assertTrue(os.path.exists(os.path.join(out, ".save.ready")))
        shutil.rmtree(out)
        r = self.train(out, [], env={"SAE_KILL_AT_FILE_OP": str(OPS_PER_SAVE + 1)})
        self.assertEqual(r.returncode, -signal.SIGKILL)
        self.assertFalse(os.path.exists(os.path.join(out, ".save.ready")))
        self.assertTrue(os.path.exists(os.path.join(out, ".save.tmp")))
        with open(os.path.join(out, "cfg.json")) as f:
            self.assertEqual(json.load(f)["training"]["steps_done"], 2)

    def test_kill_at_every_file_op_of_two_saves(self):
        for k in range(1, 2 * OPS_PER_SAVE + 1):
            out = os.path.join(self.tmp, f"op{k}")
            r = self.train(out, [], env={"SAE_KILL_AT_FILE_OP": str(k)})
            self.assertEqual(r.returncode, -signal.SIGKILL, f"k={k}: the run was not killed")
            assert_one_save(self, out, f"killed at file op {k}")
            self.resume_until_done(out)
            self.assert_same_as_full(out, f"killed at file op {k}")
            shutil.rmtree(out)

    def test_kill_at_random_times(self):
        seed = int(os.environ.get("SAE_KILL_SEED", random.randrange(1 << 30)))
        print(f"\nrandom kills: SAE_KILL_SEED={seed}")
        rng = random.Random(seed)
        for trial in range(8):
            out = os.path.join(self.tmp, f"random{trial}")
            kills = 0
            while True:  # kill it (again) at a random moment until a run gets through
                args = ["--resume", out] if os.path.exists(os.path.join(out, "train_state.safetensors")) or \
                    os.path.exists(os.path.join(out, ".save.ready")) else ["--overwrite"]
                p = subprocess.Popen([TRAINER] + self.args + ["--out", out] + args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                try:
                    p.wait(timeout=rng.uniform(0.0, 1.2 * self.full_seconds))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    kills += 1
                if p.returncode == 0 or kills >= 6:
                    break
            if p.returncode != 0:
                self.resume_until_done(out)
            self.assert_same_as_full(out, f"seed {seed}, trial {trial} ({kills} kills)")
            shutil.rmtree(out)


if __name__ == "__main__":
    unittest.main()
