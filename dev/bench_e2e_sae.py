#!/usr/bin/env python3
"""Time the e2e_sae library's own training step (ApolloResearch/e2e_sae v2.1.1, PyTorch +
TransformerLens) at the paper shape, for the side-by-side figure against our engine on the same card.

What one timed update is, as e2e_sae/scripts/train_tlens_saes/run_train_tlens_saes.py's train() does
it with gpt2_e2e.yaml (batch 8, effective batch 16, max_grad_norm 10, cosine lr, sparsity 1.5,
logits KL 1.0, out_to_in tracked at coeff 0): two micro-batches of SAETransformer.forward_raw (clean
run with cache), SAETransformer.forward (the SAE spliced in by its hook), calc_loss, loss / 2 and
backward; then clip_grad_norm_ (with its .item()), Adam step, zero_grad, scheduler step. Left out:
data loading, logging, eval and the activation-frequency counts the loop keeps beside the step.
The model is GPT-2 small's shape with random weights (built from its config, nothing downloaded), the
tokens random; the SAE sits at blocks.6.hook_resid_pre with d_sae 60 x 768 = 46080 (the paper's).
Each update is bracketed by torch.cuda.synchronize() after the warm-up ones and timed on the wall
clock, as our trainer's "time per step" is; tokens/s counts B x T x 2 tokens per update.

Precisions (one per run, each labelled in the measured line):
  fp32  the library as shipped: no TF32, no autocast anywhere in it
  tf32  torch.set_float32_matmul_precision("high"): TF32 matmuls, a setting a user could choose
  bf16  torch.autocast(bf16) around the forwards and the loss, fp32 weights and Adam: likewise
wandb: e2e_sae imports it at load and never calls it in the step; dev/peer_pack.sh's stand-in
(.peer/stub, put first on sys.path when it exists) replaces it, and the measured line says so.

Run (on the GPU box, after dev/peer_pack.sh here; dev/gpu_peer.sh does all of this):
  tar xzf .peer/e2e_sae-2.1.1.tar.gz -C /tmp    # the source tree: the PyPI wheel lacks a module
  python3 dev/bench_e2e_sae.py --src /tmp/e2e_sae --precision fp32   [--import-only]
  python3 dev/bench_e2e_sae.py --src /tmp/e2e_sae --small --device cpu   (a 2-layer d 64 model: CPU check)
"""
import argparse, os, statistics, sys, time, traceback
from importlib.metadata import version

ap = argparse.ArgumentParser()
ap.add_argument("--src", required=True, help="root of the e2e_sae source tree (holds e2e_sae/)")
ap.add_argument("--stub", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".peer", "stub"),
                help="folder put first on sys.path when it exists (dev/peer_pack.sh's wandb stand-in)")
ap.add_argument("--device", default="cuda")
ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
ap.add_argument("--layer", type=int, default=6)
ap.add_argument("--ratio", type=float, default=60.0, help="d_sae / d_model")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq", type=int, default=1024)
ap.add_argument("--accum", type=int, default=2, help="micro-batches per update")
ap.add_argument("--warmup", type=int, default=2, help="updates before timing")
ap.add_argument("--steps", type=int, default=5, help="timed updates")
ap.add_argument("--small", action="store_true", help="a 2-layer d 64 GPT-2, T <= 128: a CPU check of the code path")
ap.add_argument("--import-only", action="store_true", help="import the library, print versions, stop")
a = ap.parse_args()

if os.path.isdir(a.stub):
    sys.path.insert(0, os.path.abspath(a.stub))
sys.path.insert(0, os.path.abspath(a.src))
try:
    import torch
    import wandb
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from e2e_sae.models.transformers import SAETransformer
    from e2e_sae.losses import LossConfigs, SparsityLoss, OutToInLoss, LogitsKLLoss, calc_loss
    from e2e_sae.utils import get_cosine_schedule_with_warmup
except Exception as e:  # the traceback, then the one line dev/gpu_peer.sh shows: which module, what error
    traceback.print_exc()
    missing = f"module {e.name!r} missing: " if isinstance(e, ImportError) and e.name else ""
    print(f"import failed: {missing}{type(e).__name__}: {e}", flush=True)
    sys.exit(3)
wandb_note = "wandb stubbed, never called in the step" if getattr(wandb, "STUB", False) else "wandb real"
versions = f"torch {torch.__version__}, transformer-lens {version('transformer-lens')}, {wandb_note}"
print(f"imported e2e_sae from {a.src}: {versions}")
if a.import_only:
    sys.exit(0)

torch.manual_seed(0)
label = {"fp32": "fp32 as shipped", "tf32": "tf32 matmuls (user setting)", "bf16": "bf16 autocast (user setting)"}[a.precision]
torch.set_float32_matmul_precision("high" if a.precision == "tf32" else "highest")
if a.small:
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=128,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN", device=a.device)
else:  # GPT-2 small's shape
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN", device=a.device)
layer = min(a.layer, cfg.n_layers - 1)
T = min(a.seq, cfg.n_ctx)
tlens = HookedTransformer(cfg)
model = SAETransformer(tlens_model=tlens, raw_sae_positions=[f"blocks.{layer}.hook_resid_pre"],
                       dict_size_to_input_ratio=a.ratio).to(a.device)
# as train() does: only the SAE trains
for name, p in model.named_parameters():
    p.requires_grad_(name.startswith("saes."))
losses = LossConfigs(sparsity=SparsityLoss(coeff=1.5), in_to_orig=None, out_to_orig=None,
                     out_to_in=OutToInLoss(coeff=0.0), logits_kl=LogitsKLLoss(coeff=1.0))
opt = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=5e-4)
# gpt2_e2e.yaml: 400k samples, 20k warm-up, effective batch 16, min lr 0.1
sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=20_000 // 16, num_training_steps=400_000 // 16, min_lr_factor=0.1)
device_type = torch.device(a.device).type
amp = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
cuda = device_type == "cuda"
batches = [torch.randint(0, cfg.d_vocab, (a.batch, T), device=a.device) for _ in range(a.accum)]


def update():
    for tokens in batches:
        with amp:
            orig_logits, orig_acts = model.forward_raw(tokens=tokens, run_entire_model=True, final_layer=None, cache_positions=None)
            new_logits, new_acts = model.forward(tokens=tokens, sae_positions=model.raw_sae_positions, cache_positions=None, orig_acts=None)
            loss, _ = calc_loss(orig_acts=orig_acts, new_acts=new_acts, orig_logits=orig_logits.detach().clone(),
                                new_logits=new_logits, loss_configs=losses, is_log_step=False)
        loss = loss / a.accum
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.saes.parameters(), 10.0).item()
    opt.step()
    opt.zero_grad()
    sched.step()
    return loss.item() * a.accum


times = []
for i in range(a.warmup + a.steps):
    if cuda: torch.cuda.synchronize()
    t0 = time.perf_counter()
    last_loss = update()
    if cuda: torch.cuda.synchronize()
    if i >= a.warmup:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
tokens_per_update = a.batch * T * a.accum
mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
shape = "small CPU check" if a.small else "GPT-2 small shape"
print(f"measured: e2e_sae {label}, e2e layer {layer} d_sae {int(a.ratio * cfg.d_model)} B {a.batch} T {T} accum {a.accum} "
      f"({shape}): median {med * 1e3:.1f} ms per update, {tokens_per_update / med:,.0f} tokens/s over {len(times)} updates "
      f"after {a.warmup} warm-up (last loss {last_loss:.4f}{mem}; {versions})", flush=True)
