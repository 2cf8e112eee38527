"""
Checks that the SAE export (llmc/sae_io.h, sae_export) is what SAELens 6 needs, without SAELens:
cfg.json has every field SAELens 6.54's loader reads, with the JSON type it expects, and
sparsity.safetensors is SAELens's log10 feature density over the eval tokens.

Run from the repo root with Debian's python (numpy) after `make train_gpt2_sae_cpu`:
    /usr/bin/python3 test/test_saelens_cfg.py -v
(test/test_saelens.py loads the same export with SAELens itself, where it is installed.)

Where the field list comes from (sae_lens 6.54.0): SAE.load_from_disk reads cfg.json
(loading/pretrained_sae_loaders.py, sae_lens_disk_loader), treats it as a pre-6 config unless
metadata.sae_lens_version >= 6.0.0 (handle_config_defaulting), picks the class by
"architecture", and builds StandardSAEConfig (saes/sae.py, SAEConfig: d_in, d_sae required;
dtype, device, apply_b_dec_to_input, normalize_activations, reshape_activations) plus
SAEMetadata from "metadata". ActivationsStore.from_sae requires metadata hook_name,
context_size and prepend_bos; evals.py loads the model as
HookedTransformer.from_pretrained_no_processing(metadata.model_name,
**metadata.model_from_pretrained_kwargs). The trainer's sparsity is SAELens's
_log_feature_sparsity: log10(frequency + 1e-10), tensor "sparsity", F32 [d_sae].

The run: scripts/reference.py writes a random 2-layer GPT-2 (C 32, V 97) into a folder named
tiny-gpt2-ref; ./train_gpt2_sae_cpu trains a 64-feature SAE at layer 1 for 2 updates with an
eval at the start and the end over 16 val rows of 8 tokens. A second run from a copy of the
llm.c .bin, with no eval, must name the model by the file's stem and write no sparsity file.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from report import read_safetensors  # noqa: E402  (the repo's numpy safetensors reader)

TRAINER = os.path.join(ROOT, "train_gpt2_sae_cpu")
D_SAE, LAYER, T, EVAL_ROWS = 64, 1, 8, 16


def run(args):
    r = subprocess.run([TRAINER] + args, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"train_gpt2_sae_cpu failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_export(tmp, eval_rows=EVAL_ROWS, model=None, out_name="out"):
    """the reference model in TMP/tiny-gpt2-ref (made once), then a 2-update run exporting to
    TMP/OUT_NAME; returns (reference folder, export folder)"""
    ref = os.path.join(tmp, "tiny-gpt2-ref")
    if not os.path.exists(ref):
        # Debian's torch, as in test/test_common.h; SAE_REF_PYTHON names another python with torch
        py = os.environ.get("SAE_REF_PYTHON", "/usr/bin/python3")
        r = subprocess.run([py, os.path.join(ROOT, "scripts", "reference.py"), "--out", ref, "--mode", "e2e",
                            "--n-layer", "2", "--n-head", "2", "--d-model", "32", "--vocab", "97", "--max-t", "16",
                            "--layer", str(LAYER), "--dict-size", str(D_SAE), "--batch", "2", "--seq-len", str(T),
                            "--grad-accum", "1", "--steps", "1", "--threads", "1"], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"scripts/reference.py failed with {py}:\n{r.stderr[-3000:]}")
    if not os.path.exists(TRAINER):
        raise AssertionError(f"{TRAINER} not built: run `make train_gpt2_sae_cpu` first")
    out = os.path.join(tmp, out_name)
    run(["--model", model or ref + "/model.safetensors", "--train", ref + "/train.bin", "--val", ref + "/val.bin",
         "--layer", str(LAYER), "--mode", "e2e", "--dict-size", str(D_SAE), "--batch", "2", "--seq-len", str(T),
         "--grad-accum", "1", "--lr", "1e-3", "--warmup-samples", "8", "--samples", "200", "--max-steps", "2",
         "--eval-samples", str(eval_rows), "--out", out])
    return ref, out


class SaeLensCfgTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_saelens_cfg_")
        cls.ref, cls.out = make_export(cls.tmp)
        with open(os.path.join(cls.out, "cfg.json")) as f:
            cls.cfg = json.load(f)
        with open(os.path.join(cls.out, "log.jsonl")) as f:
            cls.evals = [l for l in map(json.loads, f) if l.get("eval")]
        # the llm.c .bin under another name, and no eval: no density to write
        cls.bin = os.path.join(cls.tmp, "gpt2_tiny.bin")
        shutil.copy(cls.ref + "/model.bin", cls.bin)
        _, cls.out_noeval = make_export(cls.tmp, eval_rows=0, model=cls.bin, out_name="out_noeval")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check_type(self, obj, key, typ, where):
        self.assertIn(key, obj, f"{where} lacks '{key}'")
        # bool is an int in Python: compare exact types so true never passes for an int field
        self.assertIs(type(obj[key]), typ, f"{where}.{key} is {obj[key]!r}, SAELens expects {typ.__name__}")

    def test_top_level_fields_standard_sae_config(self):
        c = self.cfg
        self.check_type(c, "d_in", int, "cfg")
        self.check_type(c, "d_sae", int, "cfg")
        self.assertEqual((c["d_in"], c["d_sae"]), (32, D_SAE))
        self.check_type(c, "architecture", str, "cfg")
        self.assertEqual(c["architecture"], "standard")
        self.check_type(c, "dtype", str, "cfg")
        self.assertIn(c["dtype"], ("float32", "torch.float32"))  # keys of SAELens's DTYPE_MAP for fp32
        self.check_type(c, "device", str, "cfg")
        self.check_type(c, "apply_b_dec_to_input", bool, "cfg")
        self.assertFalse(c["apply_b_dec_to_input"])  # our encoder has no b_dec subtraction (SPEC §3)
        self.check_type(c, "normalize_activations", str, "cfg")
        self.assertEqual(c["normalize_activations"], "none")
        if "reshape_activations" in c:
            self.assertEqual(c["reshape_activations"], "none")

    def test_metadata_fields(self):
        m = self.cfg.get("metadata")
        self.assertIs(type(m), dict, "cfg.metadata must be an object")
        for key in ("sae_lens_version", "sae_lens_training_version", "model_name", "hook_name"):
            self.check_type(m, key, str, "metadata")
        # below 6.0.0 SAELens rewrites the config as a pre-6 one (handle_pre_6_0_config)
        self.assertGreaterEqual(tuple(int(x) for x in m["sae_lens_version"].split(".")[:3]), (6, 0, 0))
        self.assertEqual(m["hook_name"], f"blocks.{LAYER}.hook_resid_pre")
        self.check_type(m, "context_size", int, "metadata")
        self.assertEqual(m["context_size"], T)
        self.check_type(m, "prepend_bos", bool, "metadata")
        self.assertFalse(m["prepend_bos"])  # the token shards are used as they are, no BOS added
        if m.get("hook_head_index") is not None:
            self.check_type(m, "hook_head_index", int, "metadata")

    def test_model_name_is_the_folder_for_model_safetensors_and_the_stem_otherwise(self):
        self.assertEqual(self.cfg["metadata"]["model_name"], "tiny-gpt2-ref")
        with open(os.path.join(self.out_noeval, "cfg.json")) as f:
            self.assertEqual(json.load(f)["metadata"]["model_name"], "gpt2_tiny")

    def test_model_from_pretrained_kwargs_say_what_the_engine_does(self):
        # SPEC §2: writing weights centred, W_U uncentred, no LayerNorm or value-bias folding;
        # these are HookedTransformer.from_pretrained(_no_processing)'s keyword names
        kw = self.cfg["metadata"]["model_from_pretrained_kwargs"]
        self.assertEqual(kw, {"center_writing_weights": True, "center_unembed": False,
                              "fold_ln": False, "fold_value_biases": False})
        for v in kw.values():
            self.assertIs(type(v), bool)

    def test_sparsity_is_log10_density_of_the_last_eval(self):
        st, _ = read_safetensors(os.path.join(self.out, "sparsity.safetensors"))
        self.assertEqual(list(st), ["sparsity"])
        s = st["sparsity"]
        self.assertEqual((s.dtype, list(s.shape)), (np.float32, [D_SAE]))
        last = self.evals[-1]
        tokens = last["tokens"]
        self.assertEqual(tokens, EVAL_ROWS * T)
        # invert log10(count / tokens + 1e-10): counts must come out whole, within fp32 rounding
        counts = (10.0 ** s.astype(np.float64) - 1e-10) * tokens
        whole = np.round(counts)
        self.assertLess(np.abs(counts - whole).max(), 1e-3, f"not whole counts: {counts}")
        expect = np.log10(whole / tokens + 1e-10).astype(np.float32)
        np.testing.assert_array_equal(s, expect)
        # the same pass as the eval's line: alive features, and L0 = firings / tokens
        self.assertEqual(int((whole > 0).sum()), last["alive"])
        self.assertAlmostEqual(whole.sum() / tokens, last["l0"], places=9)
        self.assertTrue(np.all(s[whole == 0] == np.float32(-10.0)))

    def test_no_sparsity_without_an_eval(self):
        self.assertTrue(os.path.exists(os.path.join(self.out_noeval, "cfg.json")))
        self.assertFalse(os.path.exists(os.path.join(self.out_noeval, "sparsity.safetensors")))


if __name__ == "__main__":
    unittest.main()
