/*
train_gpt2_sae: the GPU trainer of end-to-end sparse autoencoders on a frozen GPT-2.

Same flags, files and log as train_gpt2_sae_cpu (the fp32 oracle), plus --precision fp32|bf16
(default bf16), --attention materialized|flash (llmc/attention.cuh; flash in bf16 at head size 64
only) and --device N. The math is docs/SPEC.md; the CPU trainer holds the same
operations under the same names in plain loops, and the host side of a run (loading, loaders,
saving, eval reports, the run's cadence) is shared with it through llmc/run.h. Only the work
e2e needs runs: blocks below the SAE layer once per batch for both branches, the clean branch
above it without stored activations, the backward through the frozen blocks and LM head for
activation gradients only, and no gradient for the SAE input. GPT-2 weights and activations are
floatX (float or bf16) with fp32 accumulation; the SAE master weights, gradients and Adam state
are always fp32.

Build and run:
    make train_gpt2_sae
    ./train_gpt2_sae --help
Every phase sits in an NVTX range, so an Nsight Systems timeline reads like this file.
Left out: several SAEs at once, multi-GPU, sparse SAE backward (the dense one is exact).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>
#include <type_traits>
#include <algorithm>
#include "llmc/utils.h"          // defines: die, fopenCheck, mallocCheck, now_seconds, check_finite
#include "llmc/gpt2_load.h"      // defines: GPT2, gpt2_load (HF safetensors / llm.c .bin, centring)
#include "llmc/dataloader.h"     // defines: DataLoader, dataloader_init/next_batch/get_rows
#include "llmc/schedule.h"       // defines: lr_at_step, adamw_scalars, Schedule, keep_training, is_last, should_save, should_eval
#include "llmc/train_config.h"   // defines: TrainConfig, parse_args, apply_demo_presets, check_config_against_model
#include "llmc/sae.h"            // defines: SAE (host), sae_allocate, sae_init_random
#include "llmc/sae_io.h"         // defines: sae_export, sae_load, train_state_save/load, model_name_for_export
#include "llmc/logger.h"         // defines: Logger, StepLog, print_step, EvalSums, eval_metrics_finish
#include "llmc/run.h"            // defines: load_model_and_sae, RunData, open_loaders, RunState, run_begin, save_run, report_eval, step_end, run_end
#include "llmc/cuda_common.cuh"  // defines: cudaCheck, cublasCheck, bf16, NvtxRange, EventRange, deterministic_sum, cast_copy
#include "llmc/encoder.cuh"      // defines: encoder_forward
#include "llmc/layernorm.cuh"    // defines: layernorm_forward, layernorm_backward_dinp
#include "llmc/matmul.cuh"       // defines: matmul_init, matmul_forward, matmul_forward_residual, matmul_forward_gelu, matmul_backward_dinp
#include "llmc/attention.cuh"    // defines: attention_forward/backward (materialised), flash_attention_forward/backward
#include "llmc/gelu.cuh"         // defines: gelu_forward, gelu_backward_inplace
#include "llmc/sae.cuh"          // defines: sae_encoder_forward, sae_decoder_forward, sae_decoder_backward, sae_encoder_backward, ...
#include "llmc/kl.cuh"           // defines: kl_forward_backward, ce_forward, argmax_agree
#include "llmc/mse.cuh"          // defines: mse_forward_backward
#include "llmc/adamw.cuh"        // defines: global_norm_squared, adamw_update
#include "llmc/eval.cuh"         // defines: explained_variance_rows
#include "llmc/feature_dump.cuh" // defines: FeatureDumpDevice, feature_dump_add_gpu/_add_bands_gpu/_add_contexts_gpu, feature_dump_logit_effects_gpu

// ----------------------------------------------------------------------------
// one-block device allocation: a plan pass counts the bytes, then every pointer is carved out

struct DeviceArena {
    char* base = nullptr;
    size_t used = 0;
    bool planning = true;
    template <typename T>
    T* take(size_t count) {
        size_t bytes = (count * sizeof(T) + 255) / 256 * 256;  // 256-byte aligned for vector loads and cuBLASLt
        T* p = planning ? nullptr : (T*)(base + used);
        used += bytes;
        return p;
    }
};

// ----------------------------------------------------------------------------
// GPT-2 weights on the device, floatX, llm.c layout; the LM head padded to Vp rows of zeros

// The per-layer vectors (LayerNorm parameters and biases, (L,n) on the host) are held with a
// layer stride of n rounded up to 8 elements, so every layer's slice starts 16-byte aligned in
// fp32 and bf16: cuBLASLt's bias epilogues need that (matmul.cuh checks it), and l*n is not
// (C = 100 in bf16: 200 bytes). layer_vec(w.qkvb, l, 3 * C) is layer l's (3C) slice.
inline size_t layer_stride(size_t n) { return (n + 7) / 8 * 8; }
inline bool is_layer_vector(int i) { return i == 3 || i == 4 || i == 6 || i == 8 || i == 9 || i == 10 || i == 12 || i == 14; }
template <typename floatX>
const floatX* layer_vec(const floatX* base, int l, int n) { return base + (size_t)l * layer_stride(n); }

template <typename floatX>
struct GPT2Device {
    GPT2Config config;
    int Vp = 0;
    floatX *wte, *wte_unembed, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb,
        *fcprojw, *fcprojb, *lnfw, *lnfb;
};

template <typename floatX>
void gpt2_device_carve(GPT2Device<floatX>* d, const GPT2* host, DeviceArena* a) {
    const GPT2Config& c = host->config;
    d->config = c;
    d->Vp = (c.vocab_size + 127) / 128 * 128;  // aligned rows keep the LM-head matmul on the fast path
    floatX** ptrs[NUM_PARAMETER_TENSORS] = {&d->wte, &d->wte_unembed, &d->wpe, &d->ln1w, &d->ln1b, &d->qkvw, &d->qkvb,
        &d->attprojw, &d->attprojb, &d->ln2w, &d->ln2b, &d->fcw, &d->fcb, &d->fcprojw, &d->fcprojb, &d->lnfw, &d->lnfb};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = i == 1 ? (size_t)d->Vp * c.channels : host->param_sizes[i];
        if (is_layer_vector(i)) n = (size_t)c.num_layers * layer_stride(n / c.num_layers);
        *ptrs[i] = a->take<floatX>(n);
    }
}

template <typename floatX>
void gpt2_device_upload(GPT2Device<floatX>* d, const GPT2* host, float* staging) {
    floatX* ptrs[NUM_PARAMETER_TENSORS] = {d->wte, d->wte_unembed, d->wpe, d->ln1w, d->ln1b, d->qkvw, d->qkvb, d->attprojw,
        d->attprojb, d->ln2w, d->ln2b, d->fcw, d->fcb, d->fcprojw, d->fcprojb, d->lnfw, d->lnfb};
    const float* src = host->params_memory;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = host->param_sizes[i];
        cudaCheck(cudaMemcpy(staging, src, n * sizeof(float), cudaMemcpyHostToDevice));
        if (is_layer_vector(i)) {  // layer by layer into the padded layout (the padding is never read)
            const int L = d->config.num_layers;
            const size_t row = n / L;
            for (int l = 0; l < L; l++) cast_copy(ptrs[i] + (size_t)l * layer_stride(row), staging + (size_t)l * row, row, 0);
        } else {
            cast_copy(ptrs[i], staging, n, 0);
        }
        src += n;
    }
    size_t pad = (size_t)(d->Vp - d->config.vocab_size) * d->config.channels;
    cudaCheck(cudaMemset(d->wte_unembed + (size_t)d->config.vocab_size * d->config.channels, 0, pad * sizeof(floatX)));
    cudaCheck(cudaDeviceSynchronize());
}

// ----------------------------------------------------------------------------
// what the engine holds, by kind: the SAE's state, one micro-batch's activations, the device
// statistics, and the --dump-features state

// the SAE on the device: fp32 masters, gradients and Adam moments, each one block laid out as
// the host SAE's (W_enc, b_enc, W_dec, b_dec), and the floatX copies the matmuls read
template <typename floatX>
struct SaeDevice {
    float *params, *grads, *adam_m, *adam_v;
    float *W_enc, *b_enc, *W_dec, *b_dec;      // into params
    float *dW_enc, *db_enc, *dW_dec, *db_dec;  // into grads
    float *dW_dec_norm, *inv_norm;             // (D,C) accumulated over an update's micro-batches, (D)
    floatX *W_enc_x, *b_enc_x, *W_dec_norm, *b_dec_x;  // in fp32, W_enc_x aliases the master
};

// what one block keeps for its backward pass: with materialised attention qkv's head-split copy
// qkvr and the probabilities att, with flash attention the rows' log-sum-exp lse instead
template <typename floatX>
struct BlockActs {
    floatX *inp, *ln1, *qkv, *qkvr, *atty, *att, *res2, *ln2, *fch, *fch_gelu;
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *lse;
};

// scratch of the block backward (dqkvr, datt, scratch: materialised attention; dsum: flash)
template <typename floatX>
struct BlockGrads {
    floatX *dres2, *dfch, *dln, *datty, *dqkv, *dqkvr, *datt, *scratch;
    float* dsum;
};

// one micro-batch of B rows of T tokens, N = B*T
template <typename floatX>
struct Activations {
    int* tokens;                          // (B,T)
    int* targets;                         // (B,T) next token within the row, -1 at the end
    floatX *x, *x_hat, *c, *dc;           // (N,C), (N,C), (N,D), (N,D)
    floatX *resid, *dresid, *dx_hat_local, *lnf, *dlnf;  // (N,C) each
    floatX *logits_clean, *logits_spliced;               // (N,Vp) each
    float *lnf_mean, *lnf_rstd, *rows;    // (N) each; rows: per-row KL / CE / EV
    float* xsum;                          // (C) eval scratch
    std::vector<floatX*> ds_clean;        // K of (N,C): clean resid_pre_k, k = L+1..n_layer-1
    BlockActs<floatX> scratch;            // blocks run without a backward
    std::vector<BlockActs<floatX>> spliced;  // blocks L..n_layer-1 of the spliced run
    BlockGrads<floatX> bg;
};

// device scalars accumulated over one update's micro-batches (or one eval), read back once
enum StatSlot { STAT_L1 = 0, STAT_L0, STAT_MSE, STAT_KL, STAT_GNORM_SQ, STAT_CE_CLEAN, STAT_CE_SPLICED, STAT_EV, STAT_DS, NUM_STATS_FIXED };

struct Stats {
    float* sums;                          // (NUM_STATS_FIXED + K), K downstream MSE slots from STAT_DS
    unsigned int *fired_train, *fired_eval;  // (D) flags: training alive window, eval (the kernel's target; counts say more)
    unsigned long long* fire_count_eval;  // (D) eval tokens each feature fired on (the export's sparsity)
    int *alive_count, *agree_count;       // scalars
};

// phases of a step, timed with one CUDA event pair per (micro-batch, phase): nothing waits for
// them during the step; phase_times_collect reads them after the step's stats copy
enum Phase { PH_LOWER = 0, PH_SAE_FWD, PH_CLEAN, PH_SPLICED, PH_KL, PH_BACKWARD, PH_SAE_BWD, PH_UPDATE, NUM_PHASES };
static const char* PHASE_NAMES[NUM_PHASES] = {"blocks < L", "SAE forward", "clean blocks+head", "spliced blocks+head",
                                              "KL fused", "backward blocks+head", "SAE backward", "clip + AdamW"};

struct PhaseTimes {
    std::vector<cudaEvent_t> ev;   // (accum, NUM_PHASES, 2): start, end
    std::vector<char> recorded;    // (accum, NUM_PHASES): local mode skips the downstream phases
    double ms[NUM_PHASES] = {0};   // summed since the last reset
};

template <typename floatX>
struct Engine {
    TrainConfig cfg;
    GPT2 host_model;                      // loaded in place by run()
    SAE host_sae;                         // the SAE on the host: init, --init-sae, export, state
    int B = 0, T = 0, C = 0, V = 0, Vp = 0, NH = 0, D = 0, L = 0, n_layer = 0, K = 0;
    bool flash = false;                   // --attention flash: no (B,NH,T,T) matrices
    DeviceArena arena;
    size_t bytes_weights = 0, bytes_sae = 0, bytes_acts = 0, bytes_dump = 0;
    GPT2Device<floatX> model;
    SaeDevice<floatX> sae;
    Activations<floatX> acts;
    Stats stats;
    FeatureDumpDevice dump;               // --dump-features state; null pointers without the flag
    float* staging;                       // fp32 upload buffer
    PhaseTimes phases;
};

template <typename floatX>
void block_acts_carve(BlockActs<floatX>* b, DeviceArena* a, int B, int T, int C, int NH, bool flash) {
    const size_t N = (size_t)B * T;
    b->inp = a->take<floatX>(N * C);                   // (N,C)
    b->ln1 = a->take<floatX>(N * C);                   // (N,C)
    b->qkv = a->take<floatX>(N * 3 * C);               // (N,3C)
    b->atty = a->take<floatX>(N * C);                  // (N,C)
    // materialised attention keeps the split heads and the probabilities, flash the rows' log-sum-exp
    b->qkvr = flash ? nullptr : a->take<floatX>(N * 3 * C);              // (3,B,NH,T,hs)
    b->att = flash ? nullptr : a->take<floatX>((size_t)B * NH * T * T);  // (B,NH,T,T)
    b->lse = flash ? a->take<float>((size_t)B * NH * T) : nullptr;       // (B,NH,T)
    b->res2 = a->take<floatX>(N * C);                  // (N,C)
    b->ln2 = a->take<floatX>(N * C);                   // (N,C)
    b->fch = a->take<floatX>(N * 4 * C);               // (N,4C)
    b->fch_gelu = a->take<floatX>(N * 4 * C);          // (N,4C)
    b->ln1_mean = a->take<float>(N);                   // (N)
    b->ln1_rstd = a->take<float>(N);                   // (N)
    b->ln2_mean = a->take<float>(N);                   // (N)
    b->ln2_rstd = a->take<float>(N);                   // (N)
}

template <typename floatX>
void engine_carve(Engine<floatX>* e, DeviceArena* a) {
    const size_t N = (size_t)e->B * e->T, C = e->C, D = e->D, Vp = e->Vp, P = e->host_sae.num_parameters;
    const bool fp32 = std::is_same<floatX, float>::value;
    size_t start = a->used;
    gpt2_device_carve(&e->model, &e->host_model, a);
    e->bytes_weights = a->used - start;

    start = a->used;
    SaeDevice<floatX>& s = e->sae;
    s.params = a->take<float>(P);                      // (P) W_enc, b_enc, W_dec, b_dec
    s.grads = a->take<float>(P);                       // (P)
    s.adam_m = a->take<float>(P);                      // (P)
    s.adam_v = a->take<float>(P);                      // (P)
    s.dW_dec_norm = a->take<float>(D * C);             // (D,C)
    s.inv_norm = a->take<float>(D);                    // (D)
    s.W_enc_x = fp32 ? nullptr : a->take<floatX>(C * D);  // (C,D) bf16 copy; fp32 reads the master
    // the biases are copied in fp32 too: the epilogues need 16-byte aligned biases, and the
    // masters' b_enc at C*D and b_dec at 2*C*D + D floats are not when C*D or D is not a multiple of 4
    s.b_enc_x = a->take<floatX>(D);                    // (D)
    s.b_dec_x = a->take<floatX>(C);                    // (C)
    s.W_dec_norm = a->take<floatX>(D * C);             // (D,C)
    e->bytes_sae = a->used - start;

    start = a->used;
    Activations<floatX>& act = e->acts;
    act.tokens = a->take<int>(N);                        // (B,T)
    act.targets = a->take<int>(N);                       // (B,T)
    act.x = a->take<floatX>(N * C);                      // (N,C)
    act.x_hat = a->take<floatX>(N * C);                  // (N,C)
    act.c = a->take<floatX>(N * D);                      // (N,D)
    act.dc = a->take<floatX>(N * D);                     // (N,D)
    act.resid = a->take<floatX>(N * C);                  // (N,C)
    act.dresid = a->take<floatX>(N * C);                 // (N,C)
    act.dx_hat_local = a->take<floatX>(N * C);           // (N,C)
    act.lnf = a->take<floatX>(N * C);                    // (N,C)
    act.dlnf = a->take<floatX>(N * C);                   // (N,C)
    act.logits_clean = a->take<floatX>(N * Vp);          // (N,Vp)
    act.logits_spliced = a->take<floatX>(N * Vp);        // (N,Vp)
    act.lnf_mean = a->take<float>(N);                    // (N)
    act.lnf_rstd = a->take<float>(N);                    // (N)
    act.rows = a->take<float>(N);                        // (N)
    act.xsum = a->take<float>(C);                        // (C)
    act.ds_clean.assign(e->K, nullptr);
    for (int k = 0; k < e->K; k++) act.ds_clean[k] = a->take<floatX>(N * C);  // K x (N,C)
    block_acts_carve(&act.scratch, a, e->B, e->T, e->C, e->NH, e->flash);
    act.spliced.resize(e->n_layer - e->L);
    for (auto& b : act.spliced) block_acts_carve(&b, a, e->B, e->T, e->C, e->NH, e->flash);
    BlockGrads<floatX>& g = act.bg;
    g.dres2 = a->take<floatX>(N * C);                  // (N,C)
    g.dfch = a->take<floatX>(N * 4 * C);               // (N,4C)
    g.dln = a->take<floatX>(N * C);                    // (N,C)
    g.datty = a->take<floatX>(N * C);                  // (N,C)
    g.dqkv = a->take<floatX>(N * 3 * C);               // (N,3C)
    // the attention backward's scratch: materialised, the split heads, datt and dy; flash, D = dy·y per row
    const bool flash = e->flash;
    g.dqkvr = flash ? nullptr : a->take<floatX>(N * 3 * C);                          // (N,3C)
    g.datt = flash ? nullptr : a->take<floatX>((size_t)e->B * e->NH * e->T * e->T);  // (B,NH,T,T)
    g.scratch = flash ? nullptr : a->take<floatX>(N * C);                            // (N,C)
    g.dsum = flash ? a->take<float>((size_t)e->B * e->NH * e->T) : nullptr;          // (B,NH,T)

    e->stats.sums = a->take<float>(NUM_STATS_FIXED + e->K);
    e->stats.fired_train = a->take<unsigned int>(D);   // (D)
    e->stats.fired_eval = a->take<unsigned int>(D);    // (D)
    e->stats.fire_count_eval = a->take<unsigned long long>(D);  // (D)
    e->stats.alive_count = a->take<int>(1);
    e->stats.agree_count = a->take<int>(1);

    size_t staging = P;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) staging = std::max(staging, e->host_model.param_sizes[i]);
    e->staging = a->take<float>(staging);              // the largest tensor uploaded, fp32
    e->bytes_acts = a->used - start;

    start = a->used;
    if (!e->cfg.dump_features.empty()) feature_dump_device_carve(&e->dump, a, e->D, e->cfg.dump_topk, e->C, e->V);
    e->bytes_dump = a->used - start;
}

// named views into the SAE's parameter and gradient blocks; in fp32 the encoder matmul reads the master W_enc
template <typename floatX>
void sae_device_bind(SaeDevice<floatX>* s, const SAE* host) {
    s->W_enc = s->params; s->b_enc = s->W_enc + host->sizes[0]; s->W_dec = s->b_enc + host->sizes[1]; s->b_dec = s->W_dec + host->sizes[2];
    s->dW_enc = s->grads; s->db_enc = s->dW_enc + host->sizes[0]; s->dW_dec = s->db_enc + host->sizes[1]; s->db_dec = s->dW_dec + host->sizes[2];
    if (std::is_same<floatX, float>::value) s->W_enc_x = (floatX*)s->W_enc;
}

// Refuses, before anything is allocated, --attention flash where the flash kernels do not serve
// the model's head size, and a run whose largest cuBLASLt operands reach 2^31 elements: c and dc
// (N,D), the logits (N,Vp), the attention matrices (B,NH,T,T) (materialised only). matmul.cuh
// passes each dimension as an int and the sizes and strides to cuBLASLt in 64 bits, so nothing
// wraps on our side, but cuBLAS has failed at that span before (pytorch#17897, raft#3097) and no
// run this large has been checked. N < 2^31 / Vp also keeps every int N = B*T in range.
inline void gpu_check_shapes(const TrainConfig& cfg, const GPT2Config& mc, int D) {
    const long long B = cfg.batch, T = cfg.seq_len, N = B * T, Vp = (mc.vocab_size + 127) / 128 * 128, limit = 1LL << 31;
    const char* why = "cuBLASLt operands this large are untested";
    const bool flash = cfg.attention == "flash";
    if (flash && !flash_attention_supported(mc.channels, mc.num_heads))
        die("--attention flash serves head size %d only, and this model's is %d (d_model %d / %d heads): use --attention materialized",
            FLASH_HS, mc.num_heads > 0 ? mc.channels / mc.num_heads : 0, mc.channels, mc.num_heads);
    if (N * D >= limit)
        die("--batch %lld x --seq-len %lld x d_sae %d = %lld elements (>= 2^31) in the SAE activations (N,D): %s; lower --batch, --seq-len or --dict-size",
            B, T, D, N * D, why);
    if (N * Vp >= limit)
        die("--batch %lld x --seq-len %lld x padded vocabulary %lld = %lld elements (>= 2^31) in the logits (N,Vp): %s; lower --batch or --seq-len",
            B, T, Vp, N * Vp, why);
    if (!flash && B * mc.num_heads * T * T >= limit)
        die("--batch %lld x %d heads x --seq-len %lld squared = %lld elements (>= 2^31) in the attention matrices: %s; lower --batch or --seq-len "
            "(or use --attention flash, which has none)", B, mc.num_heads, T, B * mc.num_heads * T * T, why);
}

// allocates everything in one cudaMalloc and prints the plan; host_model and host_sae must be loaded
template <typename floatX>
void engine_init(Engine<floatX>* e, const TrainConfig& cfg, int B) {
    e->cfg = cfg;
    const GPT2Config& mc = e->host_model.config;
    e->B = B; e->T = cfg.seq_len; e->C = mc.channels; e->V = mc.vocab_size; e->NH = mc.num_heads;
    e->n_layer = mc.num_layers; e->L = cfg.layer; e->D = e->host_sae.D; e->K = std::max(0, e->n_layer - 1 - e->L);
    e->Vp = (e->V + 127) / 128 * 128;
    e->flash = cfg.attention == "flash";
    DeviceArena plan;
    engine_carve(e, &plan);
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    // materialised: a (B,NH,T,T) matrix per spliced block, one for the blocks without a backward, one datt
    const int n_att = e->n_layer - e->L + 2;
    char att_note[96];
    if (e->flash) snprintf(att_note, sizeof(att_note), "flash attention: no (B,NH,T,T) matrix");
    else snprintf(att_note, sizeof(att_note), "of which %d (B,NH,T,T) attention matrices %.1f MiB", n_att,
                  (double)n_att * B * e->NH * e->T * e->T * sizeof(floatX) / 1048576.0);
    printf("device memory plan (%s): GPT-2 weights %.1f MiB | SAE params+grads+Adam+copies %.1f MiB | activations %.1f MiB (%s) | "
           "total %.2f GiB of %.2f GiB free\n", std::is_same<floatX, float>::value ? "fp32" : "bf16",
           e->bytes_weights / 1048576.0, e->bytes_sae / 1048576.0, e->bytes_acts / 1048576.0, att_note, plan.used / 1073741824.0, free_b / 1073741824.0);
    if (e->bytes_dump)
        printf("  of which the feature dump %.1f MiB (top-%d, histogram, bands, contexts, logit effects of %d features, in chunks of %d)\n",
               e->bytes_dump / 1048576.0, cfg.dump_topk, e->D, FEATURE_DUMP_LOGIT_CHUNK);
    if (plan.used + (size_t)(512u << 20) > free_b)
        die("the run needs %.2f GiB of device memory but only %.2f GiB is free: lower --batch, --seq-len or --dict-size",
            plan.used / 1073741824.0, free_b / 1073741824.0);
    e->arena.planning = false;
    cudaCheck(cudaMalloc(&e->arena.base, plan.used));
    engine_carve(e, &e->arena);
    sae_device_bind(&e->sae, &e->host_sae);
    matmul_init();
    gpt2_device_upload(&e->model, &e->host_model, e->staging);
    size_t P = e->host_sae.num_parameters;
    cudaCheck(cudaMemcpy(e->sae.params, e->host_sae.memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(e->sae.adam_m, 0, P * sizeof(float)));
    cudaCheck(cudaMemset(e->sae.adam_v, 0, P * sizeof(float)));
    cudaCheck(cudaMemset(e->stats.fired_train, 0, e->D * sizeof(unsigned int)));
    e->phases.ev.resize((size_t)cfg.grad_accum * NUM_PHASES * 2);
    e->phases.recorded.assign((size_t)cfg.grad_accum * NUM_PHASES, 0);
    for (cudaEvent_t& ev : e->phases.ev) cudaCheck(cudaEventCreate(&ev));
}

template <typename floatX>
void engine_free(Engine<floatX>* e) {
    for (cudaEvent_t ev : e->phases.ev) cudaCheck(cudaEventDestroy(ev));
    matmul_destroy();
    cudaCheck(cudaFree(e->arena.base));
}

// times the rest of the enclosing scope as phase p of micro-batch `micro`
template <typename floatX>
EventRange time_phase(Engine<floatX>* e, int micro, Phase p) {
    size_t i = (size_t)micro * NUM_PHASES + p;
    e->phases.recorded[i] = 1;
    return EventRange(e->phases.ev[2 * i], e->phases.ev[2 * i + 1], 0);
}

// adds the phases the step recorded to e->phases.ms; call after the step's sync
template <typename floatX>
void phase_times_collect(Engine<floatX>* e) {
    for (size_t i = 0; i < e->phases.recorded.size(); i++) {
        if (!e->phases.recorded[i]) continue;
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, e->phases.ev[2 * i], e->phases.ev[2 * i + 1]));
        e->phases.ms[i % NUM_PHASES] += ms;
        e->phases.recorded[i] = 0;
    }
}

// ----------------------------------------------------------------------------
// forward

template <typename floatX>
void block_forward(Engine<floatX>* e, int l, BlockActs<floatX>* a, const floatX* inp, floatX* out, int B) {
    // inp, out (B,T,C); out may alias inp (the input is copied into a->inp first)
    NvtxRange r("block_forward");
    const GPT2Device<floatX>& w = e->model;
    int C = e->C, N = B * e->T;
    size_t NC = (size_t)N * C;
    if (a->inp != inp) cudaCheck(cudaMemcpyAsync(a->inp, inp, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, a->inp, layer_vec(w.ln1w, l, C), layer_vec(w.ln1b, l, C), N, C, 0);
    matmul_forward(a->qkv, a->ln1, w.qkvw + (size_t)l * 3 * C * C, layer_vec(w.qkvb, l, 3 * C), N, C, 3 * C, 0);
    if (e->flash) flash_attention_forward(a->atty, a->lse, a->qkv, B, e->T, C, e->NH, 0);
    else attention_forward(a->atty, a->qkvr, a->att, a->res2, a->qkv, B, e->T, C, e->NH, 0);  // res2: scratch until written below
    cudaCheck(cudaMemcpyAsync(a->res2, a->inp, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    matmul_forward_residual(a->res2, a->atty, w.attprojw + (size_t)l * C * C, layer_vec(w.attprojb, l, C), N, C, C, 0);  // res2 = inp + attproj(atty)
    layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, layer_vec(w.ln2w, l, C), layer_vec(w.ln2b, l, C), N, C, 0);
    matmul_forward_gelu(a->fch_gelu, a->fch, a->ln2, w.fcw + (size_t)l * 4 * C * C, layer_vec(w.fcb, l, 4 * C), N, C, 4 * C, 0);
    cudaCheck(cudaMemcpyAsync(out, a->res2, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    matmul_forward_residual(out, a->fch_gelu, w.fcprojw + (size_t)l * C * 4 * C, layer_vec(w.fcprojb, l, C), N, 4 * C, C, 0);  // out = res2 + fcproj(...)
}

// final LayerNorm and the LM head on the *uncentred* wte (SPEC §2); logits (N,Vp)
template <typename floatX>
void lm_head_forward(Engine<floatX>* e, floatX* logits, const floatX* resid, int N) {
    NvtxRange r("lm_head_forward");
    Activations<floatX>& act = e->acts;
    layernorm_forward(act.lnf, act.lnf_mean, act.lnf_rstd, resid, e->model.lnfw, e->model.lnfb, N, e->C, 0);
    matmul_forward(logits, act.lnf, e->model.wte_unembed, (const floatX*)nullptr, N, e->C, e->Vp, 0);
}

// the SAE input: the centred residual entering block L
template <typename floatX>
void forward_to_sae(Engine<floatX>* e, int B) {
    NvtxRange r("blocks_below_L");
    encoder_forward(e->acts.x, e->acts.tokens, e->model.wte, e->model.wpe, B, e->T, e->C, 0);
    for (int l = 0; l < e->L; l++) block_forward(e, l, &e->acts.scratch, e->acts.x, e->acts.x, B);
}

// refreshes the floatX copies of the SAE weights and the normalised decoder (once per update);
// the bias copies in both precisions (aligned for the epilogues, see engine_carve)
template <typename floatX>
void sae_prepare_weights(Engine<floatX>* e) {
    NvtxRange r("sae_prepare_weights");
    SaeDevice<floatX>& s = e->sae;
    sae_decoder_normalize(s.W_dec_norm, s.inv_norm, s.W_dec, e->D, e->C, 0);
    if (!std::is_same<floatX, float>::value) cast_copy(s.W_enc_x, s.W_enc, (size_t)e->C * e->D, 0);
    cast_copy(s.b_enc_x, s.b_enc, (size_t)e->D, 0);
    cast_copy(s.b_dec_x, s.b_dec, (size_t)e->C, 0);
}

// c = relu(x W_enc + b_enc) (N,D), x_hat = c W_dec_norm + b_dec (N,C)
template <typename floatX>
void sae_forward(Engine<floatX>* e, int B) {
    NvtxRange r("sae_forward");
    int N = B * e->T;
    sae_encoder_forward(e->acts.c, e->acts.x, e->sae.W_enc_x, e->sae.b_enc_x, N, e->C, e->D, 0);
    sae_decoder_forward(e->acts.x_hat, e->acts.c, e->sae.W_dec_norm, e->sae.b_dec_x, N, e->C, e->D, 0);
}

// clean run from x to logits_clean without stored activations, keeping the clean resid_pre_k
template <typename floatX>
void clean_forward(Engine<floatX>* e, int B) {
    NvtxRange r("clean_forward");
    Activations<floatX>& act = e->acts;
    int N = B * e->T;
    size_t NC = (size_t)N * e->C;
    cudaCheck(cudaMemcpyAsync(act.resid, act.x, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    for (int l = e->L; l < e->n_layer; l++) {
        if (l > e->L) cudaCheck(cudaMemcpyAsync(act.ds_clean[l - e->L - 1], act.resid, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
        block_forward(e, l, &act.scratch, act.resid, act.resid, B);
    }
    lm_head_forward(e, act.logits_clean, act.resid, N);
}

// spliced run from x_hat to logits_spliced; block l's input (resid_pre_l) stays in acts.spliced[l-L].inp
template <typename floatX>
void spliced_forward(Engine<floatX>* e, int B) {
    NvtxRange r("spliced_forward");
    Activations<floatX>& act = e->acts;
    int N = B * e->T;
    const floatX* inp = act.x_hat;
    for (int l = e->L; l < e->n_layer; l++) {
        block_forward(e, l, &act.spliced[l - e->L], inp, act.resid, B);
        inp = act.resid;
    }
    lm_head_forward(e, act.logits_spliced, act.resid, N);
}

// ----------------------------------------------------------------------------
// backward: activation gradients through frozen GPT-2, then the SAE's parameter gradients

template <typename floatX>
void block_backward(Engine<floatX>* e, int l, const BlockActs<floatX>* a, floatX* dresid, int B) {
    // dresid (B,T,C): gradient wrt the block output in, wrt the block input out
    NvtxRange r("block_backward");
    const GPT2Device<floatX>& w = e->model;
    BlockGrads<floatX>& g = e->acts.bg;
    int C = e->C, N = B * e->T;
    size_t NC = (size_t)N * C;
    cudaCheck(cudaMemcpyAsync(g.dres2, dresid, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    // MLP: out = res2 + fcproj(gelu(fc(ln2(res2))))
    matmul_backward_dinp(g.dfch, g.dres2, w.fcprojw + (size_t)l * C * 4 * C, N, 4 * C, C, false, 0);
    gelu_backward_inplace(g.dfch, a->fch, (size_t)N * 4 * C, 0);
    matmul_backward_dinp(g.dln, g.dfch, w.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, false, 0);
    layernorm_backward_dinp(g.dres2, g.dln, a->res2, layer_vec(w.ln2w, l, C), a->ln2_mean, a->ln2_rstd, N, C, true, 0);
    // attention: res2 = inp + attproj(attn(qkv(ln1(inp))))
    matmul_backward_dinp(g.datty, g.dres2, w.attprojw + (size_t)l * C * C, N, C, C, false, 0);
    if (e->flash) flash_attention_backward(g.dqkv, g.dsum, g.datty, a->atty, a->qkv, a->lse, B, e->T, C, e->NH, 0);
    else attention_backward(g.dqkv, g.dqkvr, g.datt, g.scratch, g.datty, a->qkvr, a->att, B, e->T, C, e->NH, 0);
    matmul_backward_dinp(g.dln, g.dqkv, w.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, false, 0);
    cudaCheck(cudaMemcpyAsync(dresid, g.dres2, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    layernorm_backward_dinp(dresid, g.dln, a->inp, layer_vec(w.ln1w, l, C), a->ln1_mean, a->ln1_rstd, N, C, true, 0);
}

// the LM head's backward: dresid (N,C) from the KL gradient left in logits_spliced
template <typename floatX>
void lm_head_backward(Engine<floatX>* e, int N) {
    NvtxRange r("lm_head_backward");
    Activations<floatX>& act = e->acts;
    matmul_backward_dinp(act.dlnf, act.logits_spliced, e->model.wte_unembed, N, e->C, e->Vp, false, 0);
    layernorm_backward_dinp(act.dresid, act.dlnf, act.resid, e->model.lnfw, act.lnf_mean, act.lnf_rstd, N, e->C, false, 0);
}

// SAE backward from dx_hat (N,C), accumulating over micro-batches (first = overwrite):
//   dW_dec_norm += c^T dx_hat, db_dec += colsum(dx_hat), dc = dx_hat W_dec_norm^T,
//   dpre = (dc + l1_scale) [c > 0], db_enc += colsum(dpre), dW_enc += x^T dpre.
// dW_dec itself comes from dW_dec_norm once per update (sae_finish_grads): the normalisation
// backward is linear in dW_dec_norm and W_dec does not change within an update.
template <typename floatX>
void sae_backward(Engine<floatX>* e, const floatX* dx_hat, int B, float l1_scale, bool first) {
    NvtxRange r("sae_backward");
    int N = B * e->T;
    SaeDevice<floatX>& s = e->sae;
    Activations<floatX>& act = e->acts;
    sae_decoder_backward(s.dW_dec_norm, s.db_dec, act.dc, dx_hat, act.c, s.W_dec_norm, N, e->C, e->D, !first, 0);
    sae_l1_relu_backward(act.dc, act.dc, act.c, l1_scale, N, e->D, 0);
    sae_encoder_backward(s.dW_enc, s.db_enc, act.dc, act.x, N, e->C, e->D, !first, 0);
}

// dW_dec from the dW_dec_norm the update's micro-batches accumulated
template <typename floatX>
void sae_finish_grads(Engine<floatX>* e) {
    sae_decoder_normalize_backward(e->sae.dW_dec, e->sae.dW_dec_norm, e->sae.W_dec, e->sae.inv_norm, e->D, e->C, 0);
}

// one micro-batch (tokens already on the device), number `micro` of the update: forward, losses
// into the stats, gradients accumulated (the first micro-batch overwrites), everything scaled by
// 1/accum
template <typename floatX>
void micro_step(Engine<floatX>* e, int accum, int micro) {
    const TrainConfig& cfg = e->cfg;
    Activations<floatX>& act = e->acts;
    float* stats = e->stats.sums;
    int B = e->B, N = B * e->T;
    size_t NC = (size_t)N * e->C;
    double dN = N, dC = e->C;
    {
        auto t = time_phase(e, micro, PH_LOWER);
        forward_to_sae(e, B);
    }
    bool local = cfg.mode == MODE_LOCAL;
    {
        auto t = time_phase(e, micro, PH_SAE_FWD);
        sae_forward(e, B);
        sae_sparsity_l0(stats + STAT_L1, stats + STAT_L0, e->stats.fired_train, act.c, N, e->D, 0);
        // MSE(x_hat, x) is logged in every mode and trained on in local mode only
        if (local) cudaCheck(cudaMemsetAsync(act.dx_hat_local, 0, NC * sizeof(floatX), 0));
        mse_forward_backward(stats + STAT_MSE, local ? act.dx_hat_local : (floatX*)nullptr, act.x_hat, act.x, NC,
                             local ? (float)(cfg.mse_coeff / (dN * dC * accum)) : 0.0f, 0);
    }
    const floatX* dx_hat = local ? act.dx_hat_local : act.dresid;
    if (!local) {
        {
            auto t = time_phase(e, micro, PH_CLEAN);
            clean_forward(e, B);
        }
        {
            auto t = time_phase(e, micro, PH_SPLICED);
            spliced_forward(e, B);
        }
        {
            auto t = time_phase(e, micro, PH_KL);
            kl_forward_backward(act.rows, act.logits_spliced, act.logits_clean, (float)(cfg.kl_coeff / (dN * accum)), N, e->V, e->Vp, 0);
            deterministic_sum(stats + STAT_KL, act.rows, N, true, 0);
        }
        auto t = time_phase(e, micro, PH_BACKWARD);
        lm_head_backward(e, N);
        bool ds = cfg.mode == MODE_E2E_DS;
        float ds_scale = ds ? (float)(cfg.ds_coeff / e->K / (dN * dC * accum)) : 0.0f;
        for (int l = e->n_layer - 1; l >= e->L; l--) {
            block_backward(e, l, &act.spliced[l - e->L], act.dresid, B);
            if (ds && l > e->L)  // dresid is now d/d resid_pre_l, where the e2e+ds term for layer l enters (plain e2e: an eval metric only)
                mse_forward_backward(stats + STAT_DS + (l - e->L - 1), act.dresid, act.spliced[l - e->L].inp, act.ds_clean[l - e->L - 1], NC,
                                     ds_scale, 0);
        }
    }
    auto t = time_phase(e, micro, PH_SAE_BWD);
    sae_backward(e, dx_hat, B, (float)(cfg.sparsity_coeff / (dN * dC * accum)), micro == 0);
}

// the update's log terms from the stats its micro-batches accumulated, s (read back after the
// step): per-token means, the loss assembled as the mode trains it (SPEC §1), the gradient norm
template <typename floatX>
StepLog step_terms(const Engine<floatX>* e, const std::vector<float>& s) {
    const TrainConfig& cfg = e->cfg;
    double A = cfg.grad_accum, dN = (double)cfg.batch * cfg.seq_len, C = e->C;
    StepLog sl = {};
    sl.kl = cfg.mode == MODE_LOCAL ? NAN : s[STAT_KL] / dN / A;
    sl.sparsity = s[STAT_L1] / dN / C / A;
    sl.mse = s[STAT_MSE] / dN / C / A;
    sl.l0 = s[STAT_L0] / dN / A;
    sl.ds_mse = NAN;
    if (cfg.mode == MODE_E2E_DS) {  // K >= 1 there; plain e2e has the downstream MSE as an eval metric only
        sl.ds_mse = 0.0;
        for (int k = 0; k < e->K; k++) sl.ds_mse += s[STAT_DS + k] / dN / C / A;
        sl.ds_mse /= e->K;
    }
    sl.loss = cfg.sparsity_coeff * sl.sparsity;
    if (cfg.mode == MODE_LOCAL) sl.loss += cfg.mse_coeff * sl.mse;
    else sl.loss += cfg.kl_coeff * sl.kl;
    if (cfg.mode == MODE_E2E_DS) sl.loss += cfg.ds_coeff * sl.ds_mse;
    sl.grad_norm = sqrt((double)s[STAT_GNORM_SQ]);
    sl.alive = -1;
    return sl;
}

// clipping on the device (no host sync), then Adam(W) on the fp32 masters; update t (1 for the first)
template <typename floatX>
void update(Engine<floatX>* e, double lr, long long t) {
    NvtxRange r("update");
    size_t n = e->host_sae.num_parameters;
    float* norm_sq = e->stats.sums + STAT_GNORM_SQ;
    global_norm_squared(norm_sq, e->sae.grads, n, false, 0);
    double step_size, bc2_sqrt;
    adamw_scalars((int)t, lr, 0.9, 0.999, &step_size, &bc2_sqrt);
    adamw_update(e->sae.params, e->sae.adam_m, e->sae.adam_v, e->sae.grads, n, lr, 0.9, 0.999, step_size, bc2_sqrt, 1e-8,
                 e->cfg.weight_decay, norm_sq, e->cfg.max_grad_norm, 0);
}

// ----------------------------------------------------------------------------
// eval (SPEC §6) on the first eval_rows rows of the val data, with the number of eval tokens
// each feature fired on (the export's sparsity.safetensors)

template <typename floatX>
void upload_rows(Engine<floatX>* e, const int* tokens, int B) {
    int T = e->T;
    std::vector<int> targets((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) targets[(size_t)b * T + t] = t + 1 < T ? tokens[(size_t)b * T + t + 1] : -1;
    cudaCheck(cudaMemcpy(e->acts.tokens, tokens, (size_t)B * T * sizeof(int), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(e->acts.targets, targets.data(), (size_t)B * T * sizeof(int), cudaMemcpyHostToDevice));
}

template <typename floatX>
EvalMetrics evaluate(Engine<floatX>* e, const DataLoader* val, int eval_rows, long long alive_train) {
    NvtxRange r("evaluate");
    int T = e->T, C = e->C, D = e->D, K = e->K;
    Activations<floatX>& act = e->acts;
    Stats& st = e->stats;
    std::vector<float> zeros(NUM_STATS_FIXED + K, 0.0f);
    cudaCheck(cudaMemcpy(st.sums, zeros.data(), zeros.size() * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(st.fired_eval, 0, D * sizeof(unsigned int)));
    cudaCheck(cudaMemset(st.fire_count_eval, 0, D * sizeof(unsigned long long)));
    cudaCheck(cudaMemset(st.agree_count, 0, sizeof(int)));
    std::vector<int> tokens((size_t)e->B * T);
    sae_prepare_weights(e);
    long long tokens_seen = 0;
    for (int row = 0; row < eval_rows; row += e->B) {
        int B = std::min(e->B, eval_rows - row);
        int N = B * T;
        size_t NC = (size_t)N * C;
        dataloader_get_rows(val, row, B, tokens.data());
        upload_rows(e, tokens.data(), B);
        forward_to_sae(e, B);
        sae_forward(e, B);
        sae_sparsity_l0(st.sums + STAT_L1, st.sums + STAT_L0, st.fired_eval, act.c, N, D, 0, st.fire_count_eval);
        mse_forward_backward(st.sums + STAT_MSE, (floatX*)nullptr, act.x_hat, act.x, NC, 0.0f, 0);
        explained_variance_rows(act.rows, act.x_hat, act.x, act.xsum, N, C, 0);
        deterministic_sum(st.sums + STAT_EV, act.rows, N, true, 0);
        clean_forward(e, B);
        spliced_forward(e, B);
        for (int k = 0; k < K; k++)
            mse_forward_backward(st.sums + STAT_DS + k, (floatX*)nullptr, act.spliced[k + 1].inp, act.ds_clean[k], NC, 0.0f, 0);
        ce_forward(act.rows, act.logits_clean, act.targets, N, e->V, e->Vp, 0);
        deterministic_sum(st.sums + STAT_CE_CLEAN, act.rows, N, true, 0);
        ce_forward(act.rows, act.logits_spliced, act.targets, N, e->V, e->Vp, 0);
        deterministic_sum(st.sums + STAT_CE_SPLICED, act.rows, N, true, 0);
        argmax_agree(st.agree_count, act.logits_clean, act.logits_spliced, N, e->V, e->Vp, 0);
        kl_forward_backward(act.rows, act.logits_spliced, act.logits_clean, 0.0f, N, e->V, e->Vp, 0);
        deterministic_sum(st.sums + STAT_KL, act.rows, N, true, 0);
        tokens_seen += N;
    }
    std::vector<float> s(NUM_STATS_FIXED + K);
    int agree = 0;
    cudaCheck(cudaMemcpy(s.data(), st.sums, s.size() * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(&agree, st.agree_count, sizeof(int), cudaMemcpyDeviceToHost));
    EvalSums sums;
    sums.ce_clean = s[STAT_CE_CLEAN];
    sums.ce_spliced = s[STAT_CE_SPLICED];
    sums.kl = s[STAT_KL];
    sums.l0 = s[STAT_L0];
    sums.explained_variance = s[STAT_EV];
    sums.top1_agree = agree;
    sums.mse = s[STAT_MSE];
    for (int k = 0; k < K; k++) sums.ds_mse.push_back(s[STAT_DS + k]);
    sums.tokens = tokens_seen;
    static_assert(sizeof(unsigned long long) == sizeof(long long), "the counts are copied as they are");
    sums.fire_count.resize(D);
    cudaCheck(cudaMemcpy(sums.fire_count.data(), st.fire_count_eval, D * sizeof(long long), cudaMemcpyDeviceToHost));
    return eval_metrics_finish(sums, eval_rows, T, C, D, alive_train);
}

// ----------------------------------------------------------------------------
// --dump-features, the ablation effect (the CPU trainer's ablation_effects): for the features that
// fire most often on the eval rows (the last eval's counts), the mean change in KL and in CE on
// the eval tokens when that feature alone is zeroed in the spliced model: its column of c set to
// 0, x_hat decoded again, the spliced pass rerun. Per batch and feature the KL and CE sums (fp32,
// deterministic_sum) come back to the host and are added there in double, so an effect below
// ~1e-6 of the KL is rounding. The column is kept in acts.rows (N floats) while it is zeroed.

template <typename floatX>
AblationEffects ablation_effects(Engine<floatX>* e, const DataLoader* val, int eval_rows, const std::vector<float>& log10_freq) {
    NvtxRange r("ablation_effects");
    AblationEffects ab;
    ab.features = most_frequent_features(log10_freq, ABLATION_FEATURES);
    int T = e->T, D = e->D, F = (int)ab.features.size();
    Activations<floatX>& act = e->acts;
    float* sums = e->stats.sums;
    std::vector<double> kl(F, 0.0), ce(F, 0.0);
    std::vector<int> tokens((size_t)e->B * T);
    auto spliced_kl_ce = [&](int B, double* kl_sum, double* ce_sum) {  // the spliced model on x_hat
        int N = B * T;
        spliced_forward(e, B);
        ce_forward(act.rows, act.logits_spliced, act.targets, N, e->V, e->Vp, 0);
        deterministic_sum(sums + STAT_CE_SPLICED, act.rows, N, false, 0);
        kl_forward_backward(act.rows, act.logits_spliced, act.logits_clean, 0.0f, N, e->V, e->Vp, 0);
        deterministic_sum(sums + STAT_KL, act.rows, N, false, 0);
        float s[NUM_STATS_FIXED];
        cudaCheck(cudaMemcpy(s, sums, sizeof(s), cudaMemcpyDeviceToHost));
        *kl_sum += s[STAT_KL];
        *ce_sum += s[STAT_CE_SPLICED];
    };
    sae_prepare_weights(e);
    const size_t pitch = (size_t)D * sizeof(floatX), w = sizeof(floatX);
    for (int row = 0; row < eval_rows; row += e->B) {
        int B = std::min(e->B, eval_rows - row), N = B * T;
        dataloader_get_rows(val, row, B, tokens.data());
        upload_rows(e, tokens.data(), B);
        forward_to_sae(e, B);
        sae_forward(e, B);
        clean_forward(e, B);
        spliced_kl_ce(B, &ab.kl, &ab.ce);
        floatX* column = (floatX*)act.rows;
        for (int j = 0; j < F; j++) {
            floatX* c_f = act.c + ab.features[j];
            cudaCheck(cudaMemcpy2DAsync(column, w, c_f, pitch, w, N, cudaMemcpyDeviceToDevice, 0));
            cudaCheck(cudaMemset2DAsync(c_f, pitch, 0, w, N, 0));
            sae_decoder_forward(act.x_hat, act.c, e->sae.W_dec_norm, e->sae.b_dec_x, N, e->C, D, 0);
            cudaCheck(cudaMemcpy2DAsync(c_f, pitch, column, w, w, N, cudaMemcpyDeviceToDevice, 0));
            spliced_kl_ce(B, &kl[j], &ce[j]);
        }
        ab.tokens += N;
    }
    ablation_finish(&ab, kl, ce, eval_rows, T);
    return ab;
}

// ----------------------------------------------------------------------------
// --dump-features (llmc/feature_dump.cuh): the CPU trainer's passes on the device, the same
// results from the same activations. Pass 1 over the first val tokens: firing counts, histograms,
// top-K; pass 2 over the same tokens: band examples and every example's context (only the encoder
// runs: c is all the dump reads); then the logit effects, in fp32 whatever --precision, from the
// fp32 master W_dec and the host's fp32 W_U, uploaded into the staging buffer (sized for the
// largest GPT-2 tensor, wte's V*C included)

template <typename floatX>
void dump_features(Engine<floatX>* e, const DataLoader* val, const TrainConfig& cfg) {
    NvtxRange r("dump_features");
    double t0 = now_seconds();
    const FeatureDumpDevice& g = e->dump;
    const int T = e->T, C = e->C;
    FeatureDump fd;
    feature_dump_begin(&fd, cfg, e->D);
    feature_dump_reset_gpu(g, fd, 0);
    sae_prepare_weights(e);
    auto encode = [&](const int* tokens, int B) {
        upload_rows(e, tokens, B);
        forward_to_sae(e, B);
        sae_encoder_forward(e->acts.c, e->acts.x, e->sae.W_enc_x, e->sae.b_enc_x, B * T, C, e->D, 0);
    };
    long long n_tokens = feature_dump_stream(val, cfg, e->B, [&](const int* tokens, int B, long long first_pos) {
        encode(tokens, B);
        feature_dump_add_gpu(g, e->acts.c, B * T, first_pos, 0);
    });
    feature_dump_stream(val, cfg, e->B, [&](const int* tokens, int B, long long first_pos) {
        encode(tokens, B);
        feature_dump_add_bands_gpu(g, e->acts.c, B * T, first_pos, 0);
        feature_dump_add_contexts_gpu(g, e->acts.c, B * T, T, first_pos, 0);
    });
    const GPT2& m = e->host_model;
    std::vector<float> mean = m.unembed_mean;
    if (mean.empty()) mean.assign(C, 0.0f);  // W_U as loaded: nothing to add back
    cudaCheck(cudaMemcpy(e->staging, m.params.wte_unembed, (size_t)e->V * C * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(g.gamma, m.params.lnfw, C * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(g.unembed_mean, mean.data(), C * sizeof(float), cudaMemcpyHostToDevice));
    feature_dump_logit_effects_gpu(g, e->sae.W_dec, g.gamma, e->staging, g.unembed_mean, 0);
    feature_dump_download(&fd, g, n_tokens);
    feature_dump_finish(&fd, val, cfg, e->host_model.source, now_seconds() - t0);
}

// ----------------------------------------------------------------------------
// checkpointing: device state <-> the host structures sae_io.h writes

template <typename floatX>
void download_state(Engine<floatX>* e, std::vector<float>& m, std::vector<float>& v, std::vector<float>& fired) {
    size_t P = e->host_sae.num_parameters;
    cudaCheck(cudaMemcpy(e->host_sae.memory.data(), e->sae.params, P * sizeof(float), cudaMemcpyDeviceToHost));
    m.resize(P); v.resize(P);
    cudaCheck(cudaMemcpy(m.data(), e->sae.adam_m, P * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(v.data(), e->sae.adam_v, P * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<unsigned int> f(e->D);
    cudaCheck(cudaMemcpy(f.data(), e->stats.fired_train, e->D * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    fired.resize(e->D);
    for (int i = 0; i < e->D; i++) fired[i] = f[i] ? 1.0f : 0.0f;
}

template <typename floatX>
void upload_state(Engine<floatX>* e, const std::vector<float>& m, const std::vector<float>& v, const std::vector<float>& fired) {
    size_t P = e->host_sae.num_parameters;
    cudaCheck(cudaMemcpy(e->sae.params, e->host_sae.memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(e->sae.adam_m, m.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(e->sae.adam_v, v.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    std::vector<unsigned int> f(e->D);
    for (int i = 0; i < e->D; i++) f[i] = fired[i] > 0.0f ? 1u : 0u;
    cudaCheck(cudaMemcpy(e->stats.fired_train, f.data(), e->D * sizeof(unsigned int), cudaMemcpyHostToDevice));
}

// ----------------------------------------------------------------------------
// the training loop. The host waits for the device at each micro-batch's token upload (a
// cudaMemcpy from pageable memory synchronises), and once per step to read back the stats.

// the time per step after warm-up, and the phase breakdown
template <typename floatX>
void print_timing(Engine<floatX>* e, std::vector<double>& step_seconds) {
    const TrainConfig& cfg = e->cfg;
    double sum = 0, total_s = 0;
    for (int p = 0; p < NUM_PHASES; p++) sum += e->phases.ms[p];
    for (double s : step_seconds) total_s += s;
    size_t n = step_seconds.size();
    std::sort(step_seconds.begin(), step_seconds.end());
    double median = step_seconds[n / 2];
    printf("---- time per step over %zu steps after warm-up: median %.2f ms wall (%.0f tokens/s), mean %.2f ms ----\n", n,
           1000.0 * median, (double)cfg.batch * cfg.seq_len * cfg.grad_accum / median, 1000.0 * total_s / n);
    for (int p = 0; p < NUM_PHASES; p++)
        printf("  %-22s %8.3f ms  (%4.1f%%)\n", PHASE_NAMES[p], e->phases.ms[p] / n, 100.0 * e->phases.ms[p] / sum);
    size_t free_b, total_b;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    printf("  device memory in use: %.2f GiB of %.2f GiB\n", (total_b - free_b) / 1073741824.0, total_b / 1073741824.0);
}

template <typename floatX>
int run(const TrainConfig& cfg) {
    Engine<floatX> e;
    load_model_and_sae(&e.host_model, &e.host_sae, cfg);
    gpu_check_shapes(cfg, e.host_model.config, e.host_sae.D);
    RunData data;
    open_loaders(&data, cfg, e.host_model.config.vocab_size);
    engine_init(&e, cfg, cfg.batch);

    RunState run;
    std::vector<float> hm(e.host_sae.num_parameters, 0.0f), hv(e.host_sae.num_parameters, 0.0f);  // host Adam m, v
    run_begin(&run, cfg, &e.host_sae, hm.data(), hv.data(), &data, e.host_model.source);
    if (!cfg.resume.empty()) upload_state(&e, hm, hv, run.ts.alive_fired);
    auto run_eval = [&](long long step) {
        if (data.eval_rows) report_eval(&run, cfg, step, evaluate(&e, &data.val, data.eval_rows, run.ts.last_alive));
    };
    auto save = [&](long long step) {
        download_state(&e, hm, hv, run.ts.alive_fired);
        save_run(&run, cfg, &e.host_sae, hm.data(), hv.data(), step, data);
    };
    if (run.ts.step == 0 || cfg.eval_only) run_eval(0);
    std::vector<int> tokens((size_t)cfg.batch * cfg.seq_len);
    std::vector<float> s(NUM_STATS_FIXED + e.K);
    std::vector<float> zeros(NUM_STATS_FIXED + e.K, 0.0f);
    long long step = run.ts.step;
    std::vector<double> step_seconds;  // after warm-up, for the median
    while (keep_training(run.sched, cfg, step)) {
        NvtxRange r("step");
        double t0 = now_seconds();
        double lr = lr_at_step(cfg.lr, step, run.sched.W, run.sched.S, cfg.min_lr_factor);
        cudaCheck(cudaMemcpyAsync(e.stats.sums, zeros.data(), zeros.size() * sizeof(float), cudaMemcpyHostToDevice, 0));
        sae_prepare_weights(&e);
        for (int a = 0; a < cfg.grad_accum; a++) {
            dataloader_next_batch(&data.train, tokens.data());
            cudaCheck(cudaMemcpy(e.acts.tokens, tokens.data(), tokens.size() * sizeof(int), cudaMemcpyHostToDevice));
            micro_step(&e, cfg.grad_accum, a);
        }
        {
            auto t = time_phase(&e, 0, PH_UPDATE);
            sae_finish_grads(&e);
            update(&e, lr, step + 1);
        }
        cudaCheck(cudaMemcpy(s.data(), e.stats.sums, s.size() * sizeof(float), cudaMemcpyDeviceToHost));
        step++;
        StepLog sl = step_terms(&e, s);
        check_finite(sl.loss, sl.grad_norm, step);
        run.ts.alive_tokens += (long long)cfg.batch * cfg.seq_len * cfg.grad_accum;
        if (run.ts.alive_tokens >= cfg.alive_window) {
            int alive = 0;
            sae_count_alive(e.stats.alive_count, e.stats.fired_train, e.D, 0);
            cudaCheck(cudaMemcpy(&alive, e.stats.alive_count, sizeof(int), cudaMemcpyDeviceToHost));
            cudaCheck(cudaMemset(e.stats.fired_train, 0, e.D * sizeof(unsigned int)));
            sl.alive = run.ts.last_alive = alive;
            run.ts.alive_tokens = 0;
        }
        double dt = now_seconds() - t0;
        phase_times_collect(&e);
        if (step - run.ts.step > 3) step_seconds.push_back(dt);  // after warm-up
        else std::fill(e.phases.ms, e.phases.ms + NUM_PHASES, 0.0);
        sl.step = step;
        sl.lr = lr;
        sl.tokens_per_s = (double)cfg.batch * cfg.seq_len * cfg.grad_accum / dt;
        step_end(&run, cfg, sl, save, run_eval);
    }
    if (!step_seconds.empty()) print_timing(&e, step_seconds);
    run_end(&run, cfg, &data, step, save, run_eval, [&] {
        dump_features(&e, &data.val, cfg);
        if (data.eval_rows && !run.sparsity.empty())
            ablation_write(ablation_effects(&e, &data.val, data.eval_rows, run.sparsity), cfg.dump_features);
    });
    engine_free(&e);
    gpt2_free(&e.host_model);
    return 0;
}

// picks the device, then runs in the chosen precision
int train_main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // step lines appear as they happen, also in a log file
    TrainConfig cfg = parse_args(argc, argv, true);
    if (cfg.attention == "flash" && cfg.precision == "fp32")
        die("--attention flash is for --precision bf16: fp32 is the reference precision and keeps the materialized attention");
    apply_demo_presets(cfg, true);
    int ndev = 0;
    cudaError_t err = cudaGetDeviceCount(&ndev);
    if (err != cudaSuccess || ndev == 0) die("no CUDA device available (%s): use train_gpt2_sae_cpu on machines without a GPU", cudaGetErrorString(err));
    if (cfg.device >= ndev) die("--device %d is out of range: %d CUDA device(s) present", cfg.device, ndev);
    cudaCheck(cudaSetDevice(cfg.device));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, cfg.device));
    printf("device %d: %s, %d SMs, %.1f GiB\n", cfg.device, prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    return cfg.precision == "fp32" ? run<float>(cfg) : run<bf16>(cfg);
}

#ifndef TESTING
int main(int argc, char** argv) { return run_main(train_main, argc, argv); }
#endif
