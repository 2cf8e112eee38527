"""
Loads the SAE export with SAELens itself (SAE.load_from_disk) and checks that its features are
ours: encode, decode and forward on random inputs against a numpy forward of the exported
tensors (c = relu(x W_enc + b_enc), x_hat = c W_dec + b_dec, SPEC §3 with W_dec normalised at
export), and that sparsity.safetensors loads the way SAELens reads it.

Run from the repo root, with the python that has sae_lens (skips without it, as in CI), after
`make train_gpt2_sae_cpu`:
    python3 test/test_saelens.py -v
The export is made as in test/test_saelens_cfg.py (scripts/reference.py runs under
SAE_REF_PYTHON, default Debian's /usr/bin/python3 with torch).

Tolerance: SAELens computes in fp32 (torch matmuls), the numpy forward in fp64 from the same
fp32 tensors, so they differ by fp32 rounding of sums over d_in = 32 or d_sae = 64 terms: a
few 1e-7 relative. 1e-5 of the scale catches any wrong layout, transpose or missing bias.
"""
import json
import os
import shutil
import sys
import tempfile
import unittest

try:
    from sae_lens import SAE, __version__ as SAE_LENS_VERSION
    import numpy as np
    import torch
    from safetensors import safe_open
    from test_saelens_cfg import D_SAE, EVAL_ROWS, LAYER, T, make_export, read_safetensors
    IMPORT_ERROR = None
except Exception as e:  # ImportError, or a broken install that fails while importing
    # without quotes: test/run_tests.sh finds the reason in unittest's "skipped '...'" line
    IMPORT_ERROR = f"{type(e).__name__}: {e}".replace("'", "")

TOL = 1e-5


@unittest.skipIf(IMPORT_ERROR is not None, f"sae_lens not importable: {IMPORT_ERROR}")
class SaeLensLoadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_saelens_")
        _, cls.out = make_export(cls.tmp)
        st = read_safetensors(os.path.join(cls.out, "sae_weights.safetensors"))
        cls.W = {k: v[2].astype(np.float64) for k, v in st.items()}
        cls.sae = SAE.load_from_disk(cls.out, device="cpu")
        print(f"\nsae_lens {SAE_LENS_VERSION}, torch {torch.__version__}", file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def ours(self, x):
        c = np.maximum(x @ self.W["W_enc"] + self.W["b_enc"], 0.0)
        return c, c @ self.W["W_dec"] + self.W["b_dec"]

    def max_err(self, theirs, ours, what):
        err = np.abs(theirs.astype(np.float64) - ours).max()
        scale = np.abs(ours).max()
        print(f"{what}: max |sae_lens - numpy| = {err:.3g} (scale {scale:.3g})", file=sys.stderr)
        self.assertLessEqual(err, TOL * scale, what)

    def test_config_as_sae_lens_reads_it(self):
        cfg = self.sae.cfg
        self.assertEqual(type(self.sae).__name__, "StandardSAE")
        self.assertEqual((cfg.d_in, cfg.d_sae, cfg.dtype, cfg.apply_b_dec_to_input), (32, D_SAE, "float32", False))
        self.assertEqual(cfg.metadata.hook_name, f"blocks.{LAYER}.hook_resid_pre")
        self.assertEqual(cfg.metadata.model_name, "tiny-gpt2-ref")
        self.assertEqual(cfg.metadata.context_size, T)
        self.assertIs(cfg.metadata.prepend_bos, False)
        self.assertEqual(cfg.metadata.model_from_pretrained_kwargs,
                         {"center_writing_weights": True, "center_unembed": False, "fold_ln": False, "fold_value_biases": False})

    def test_encode_decode_forward_match_ours(self):
        rng = np.random.default_rng(0)
        # about half the features fire at this scale, so both sides of the ReLU are exercised
        x = rng.standard_normal((512, 32)).astype(np.float32)
        c, x_hat = self.ours(x.astype(np.float64))
        fired = (c > 0).mean()
        self.assertTrue(0.05 < fired < 0.95, f"fraction firing {fired}")
        with torch.no_grad():
            xt = torch.from_numpy(x)
            feats = self.sae.encode(xt)
            recon = self.sae.decode(feats)
            fwd = self.sae(xt)
        self.max_err(feats.numpy(), c, "encode")
        self.max_err(recon.numpy(), x_hat, "decode")
        self.max_err(fwd.numpy(), x_hat, "forward")
        # same features fire (a value within rounding of 0 could flip; none does at this seed)
        np.testing.assert_array_equal(feats.numpy() > 0, c > 0)

    def test_decoder_rows_are_unit_norm_so_folding_changes_nothing(self):
        folded = SAE.load_from_disk(self.out, device="cpu", fold_W_dec_norm=True)
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32))
        with torch.no_grad():
            a, b = self.sae(x).numpy(), folded(x).numpy()
        err = np.abs(a - b).max()
        print(f"fold_W_dec_norm: max |folded - as loaded| = {err:.3g}", file=sys.stderr)
        self.assertLessEqual(err, TOL * np.abs(a).max())

    def test_sparsity_loads_as_sae_lens_reads_it(self):
        # SAELens's loaders: safe_open(path, framework="pt").get_tensor("sparsity")
        with safe_open(os.path.join(self.out, "sparsity.safetensors"), framework="pt", device="cpu") as f:
            s = f.get_tensor("sparsity")
        self.assertEqual((s.dtype, tuple(s.shape)), (torch.float32, (D_SAE,)))
        with open(os.path.join(self.out, "log.jsonl")) as f:
            last = [l for l in map(json.loads, f) if l.get("eval")][-1]
        self.assertEqual(last["tokens"], EVAL_ROWS * T)
        alive = int((s > -10.0 + 1e-3).sum())  # log10(0 + 1e-10) = -10 for a feature that never fired
        print(f"sparsity: {alive} of {D_SAE} features fired over {last['tokens']} eval tokens "
              f"(eval says alive {last['alive']}); log10 density in [{s.min():.3f}, {s.max():.3f}]", file=sys.stderr)
        self.assertEqual(alive, last["alive"])


if __name__ == "__main__":
    unittest.main()
