/*
train_gpt2_sae: the GPU trainer of end-to-end sparse autoencoders on a frozen GPT-2.

Same flags, files and log as train_gpt2_sae_cpu (the fp32 oracle), plus --precision fp32|bf16
(default bf16), --attention materialized|flash (llmc/attention.cuh; flash in bf16 at head size 64
only, on tensor cores), --fused-backward off|on, --cuda-graph off|on (micro_batch), --sae-kernels
dense|sparse|auto (llmc/sae_sparse.cuh: the SAE's decoder and backward over c > 0) and --device N.
The math is docs/SPEC.md; the CPU trainer holds the same
operations under the same names in plain loops, and the host side of a run (loading, loaders,
saving, eval reports, the run's cadence) is shared with it through llmc/run.h. Only the work
e2e needs runs: one clean pass per micro-batch without stored activations (its residuals before
the SAE layer are the SAE input, the ones after it the e2e+ds targets), the backward through the
frozen blocks and LM head for activation gradients only, and no gradient for the SAE input.
--sweep FILE trains several SAEs in one run (llmc/sweep.h): the clean pass runs once for all of
them, then each SAE its own forward, spliced pass, losses, backward and update, alone, so each
gives the same bits as its single run. GPT-2 weights and activations are
floatX (float or bf16) with fp32 accumulation; the SAE master weights, gradients and Adam state
are always fp32.

Build and run:
    make train_gpt2_sae
    ./train_gpt2_sae --help
Every phase sits in an NVTX range, so an Nsight Systems timeline reads like this file.
Left out: multi-GPU.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>
#include <type_traits>
#include <algorithm>
#include <optional>
#include "llmc/utils.h"          // defines: die, fopenCheck, mallocCheck, now_seconds, check_finite
#include "llmc/gpt2_load.h"      // defines: GPT2, gpt2_load (HF safetensors / llm.c .bin, centring)
#include "llmc/dataloader.h"     // defines: DataLoader, dataloader_init/next_batch/get_rows
#include "llmc/schedule.h"       // defines: lr_at_step, adamw_scalars, Schedule, keep_training, is_last, should_save, should_eval
#include "llmc/train_config.h"   // defines: TrainConfig, parse_args, apply_demo_presets, check_config_against_model
#include "llmc/sae.h"            // defines: SAE (host), sae_allocate, sae_init_random
#include "llmc/sae_io.h"         // defines: sae_export, sae_load, train_state_save/load, model_name_for_export
#include "llmc/logger.h"         // defines: Logger, StepLog, print_step, EvalSums, eval_metrics_finish
#include "llmc/run.h"            // defines: load_model, load_sae, RunData, open_loaders, RunState, runs_begin, save_runs, report_eval, step_end, run_end
#ifdef MOCK_CUDA  // make train_gpt2_sae_mocked: the host code on the CPU, every kernel below a CPU loop (test/test_gpu_mocked.cpp)
#include "test/mock_cuda.h"      // defines: the CUDA runtime calls, bf16, and every launcher the .cuh files below define
#else
#ifdef HOST_EMULATION  // make train_gpt2_sae_emulated: these kernels as written, on the CPU (dev/forecast_gpu_tests.sh --emulated)
#include "test/mock_cuda_runtime.h"      // defines: the CUDA runtime calls, on the CPU
#include "test/cuda_host_emulation.h"    // defines: threads, blocks, launches, warp operations; cuBLASLt's matmul as a CPU loop
#endif
#include "llmc/cuda_common.cuh"  // defines: cudaCheck, cublasCheck, bf16, NvtxRange, EventRange, deterministic_sum, cast_copy
#include "llmc/encoder.cuh"      // defines: encoder_forward
#include "llmc/layernorm.cuh"    // defines: layernorm_forward, layernorm_backward_dinp
#include "llmc/matmul.cuh"       // defines: matmul_init, matmul_forward, matmul_forward_residual, matmul_forward_gelu, matmul_backward_dinp
#include "llmc/attention.cuh"    // defines: attention_forward/backward (materialised), flash_attention_forward/backward
#include "llmc/gelu.cuh"         // defines: gelu_forward, gelu_backward_inplace
#include "llmc/sae.cuh"          // defines: sae_encoder_forward, sae_decoder_forward, sae_decoder_backward, sae_encoder_backward, ...
#include "llmc/sae_sparse.cuh"   // defines: SaeSparse, sae_sparse_index, sae_sparse_decoder_forward, sae_sparse_backward
#include "llmc/kl.cuh"           // defines: kl_forward_backward, ce_forward, argmax_agree
#include "llmc/mse.cuh"          // defines: mse_forward_backward
#include "llmc/adamw.cuh"        // defines: global_norm_squared, adamw_update
#include "llmc/eval.cuh"         // defines: explained_variance_rows
#include "llmc/feature_dump.cuh" // defines: FeatureDumpDevice, feature_dump_add_gpu/_add_bands_gpu/_add_contexts_gpu, feature_dump_logit_effects_gpu
#endif

// ----------------------------------------------------------------------------
// the one stream all device work goes on, created by engine_init. A blocking stream (plain
// cudaStreamCreate): the few synchronous cudaMemcpy / cudaMemset calls of setup, evals, dumps and
// saves still wait for its work, while the training loop syncs once per update (run()).
static cudaStream_t main_stream = 0;

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
            for (int l = 0; l < L; l++) cast_copy(ptrs[i] + (size_t)l * layer_stride(row), staging + (size_t)l * row, row, main_stream);
        } else {
            cast_copy(ptrs[i], staging, n, main_stream);
        }
        src += n;
    }
    size_t pad = (size_t)(d->Vp - d->config.vocab_size) * d->config.channels;
    cudaCheck(cudaMemset(d->wte_unembed + (size_t)d->config.vocab_size * d->config.channels, 0, pad * sizeof(floatX)));
    cudaCheck(cudaDeviceSynchronize());
}

// ----------------------------------------------------------------------------
// what the run holds, by kind: each SAE's state and statistics (SaeRun), one micro-batch's
// activations and the clean pass every SAE shares (Activations), the --dump-features state

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

// device scalars accumulated over one update's micro-batches (or one eval), read back once
enum StatSlot { STAT_L1 = 0, STAT_L0, STAT_MSE, STAT_KL, STAT_GNORM_SQ, STAT_CE_CLEAN, STAT_CE_SPLICED, STAT_EV, STAT_DS, NUM_STATS_FIXED };

struct Stats {
    float* sums;                          // (NUM_STATS_FIXED + K), K downstream MSE slots from STAT_DS
    unsigned int *fired_train, *fired_eval;  // (D) flags: training alive window, eval (the kernel's target; counts say more)
    unsigned long long* fire_count_eval;  // (D) eval tokens each feature fired on (the export's sparsity)
    int *alive_count, *agree_count;       // scalars
};

// one SAE of the run: its flags, its state on the device and its host copies, its run on the
// host. A run trains one SAE, a --sweep several; each SAE's numbers are the same bits either way
// (SAEs share inputs, never a matmul).
template <typename floatX>
struct SaeRun {
    TrainConfig cfg;                      // the run's flags with this SAE's --sweep line
    int L = 0, D = 0, K = 0;              // layer, d_sae, downstream layers n_layer - 1 - L
    SAE sae;                              // host copy: init, --init-sae, export, state
    std::vector<float> adam_m, adam_v, fired;  // host copies of the Adam moments and alive flags, for saves
    RunState run;                         // step, log, schedule (llmc/run.h)
    bool sparse_now = false;              // this update runs its decoder and backward sparse (sae_runs_sparse)
    SaeDevice<floatX> dev;
    Stats stats;
    size_t bytes = 0;                     // its device memory
};

// what one block keeps for its backward pass: its input inp (null for blocks without a backward:
// the previous block writes it there), with materialised attention qkv's head-split copy qkvr and
// the probabilities att, with flash attention the rows' log-sum-exp lse instead
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

// one micro-batch of B rows of T tokens, N = B*T: the clean pass, kept for every SAE, and the
// scratch one SAE at a time uses, sized for the largest d_sae and the lowest layer
template <typename floatX>
struct Activations {
    int* tokens;                          // (B,T)
    int* targets;                         // (B,T) next token within the row, -1 at the end
    std::vector<floatX*> clean;           // clean[l - L_lo] (N,C): the clean resid_pre_l, l = L_lo..n_layer-1 (SAE inputs, e2e+ds targets)
    floatX *x_hat, *c, *dc;               // (N,C): the first spliced block's inp, where the decoder writes; (N,D_max), (N,D_max)
    SaeSparse sparse;                     // --sae-kernels sparse or auto: the index of c (N·D_max entries of each kind); dc holds dpre by feature
    floatX *resid, *dresid, *dx_hat_local, *lnf, *dlnf;  // (N,C) each
    float *logits_clean, *logits_spliced;                // (N,Vp) each, fp32 in both precisions (kl.cuh)
    floatX* dlogits;                                     // (N,Vp) the KL's gradient; in fp32 the spliced logits themselves
    float *lnf_mean, *lnf_rstd, *rows, *rows_clean;      // (N) each; rows: per-row KL / CE / EV; rows_clean: the eval's clean CE
    float* xsum;                          // (C) eval scratch
    BlockActs<floatX> scratch;            // blocks run without a backward
    std::vector<BlockActs<floatX>> spliced;  // blocks L..n_layer-1 of an SAE's spliced run, from spliced[0]
    BlockGrads<floatX> bg;
};

// phases of a step, timed with one CUDA event pair per (micro-batch, SAE, phase): nothing waits
// for them during the step; phase_times_collect reads them after the step's stats copy. The
// shared clean pass is timed under SAE 0: "blocks < L" are those below the lowest SAE layer.
enum Phase { PH_LOWER = 0, PH_SAE_FWD, PH_CLEAN, PH_SPLICED, PH_KL, PH_BACKWARD, PH_SAE_BWD, PH_UPDATE, NUM_PHASES };
static const char* PHASE_NAMES[NUM_PHASES] = {"blocks < L", "SAE forward", "clean blocks+head", "spliced blocks+head",
                                              "KL fused", "backward blocks+head", "SAE backward", "clip + AdamW"};

struct PhaseTimes {
    int saes = 1;
    std::vector<cudaEvent_t> ev;   // (accum, saes, NUM_PHASES, 2): start, end
    std::vector<char> recorded;    // (accum, saes, NUM_PHASES): local mode skips the downstream phases
    double ms[NUM_PHASES] = {0};   // summed over the SAEs since the last reset
};

template <typename floatX>
struct Engine {
    TrainConfig cfg;                      // the flags every SAE shares (the first SAE's config)
    GPT2 host_model;                      // loaded in place by run()
    int B = 0, T = 0, C = 0, V = 0, Vp = 0, NH = 0, n_layer = 0;
    int L_lo = 0, L_hi = 0, D_max = 0;    // the lowest and highest SAE layer, the largest d_sae
    bool train_logits = false;            // some SAE trains on the KL: the clean pass goes to the logits
    bool flash = false;                   // --attention flash: no (B,NH,T,T) matrices
    bool fused_backward = false;          // --fused-backward on: the one-pass KL and SAE backward, the DGELU epilogue (bf16)
    bool sparse = false;                  // --sae-kernels sparse or auto: the index of c is carved (sae_sparse.cuh)
    bool graphs = false;                  // --cuda-graph on: micro-batches replayed as CUDA graphs (micro_batch)
    bool timing = true;                   // time_phase records events (not while a graph is captured)
    std::vector<cudaGraphExec_t> micro_graphs;  // (grad_accum): micro-batch number a's graph, once captured
    long long capture_from = 0;           // the first update (0-based) whose micro-batches may be captured
    DeviceArena arena;
    size_t bytes_weights = 0, bytes_acts = 0, bytes_dump = 0, bytes_sparse = 0;
    GPT2Device<floatX> model;
    Activations<floatX> acts;
    FeatureDumpDevice dump;               // --dump-features state, sized for the largest SAE; null pointers without the flag
    float* staging;                       // fp32 upload buffer
    PhaseTimes phases;
    // pinned host memory for the training loop's transfers, so they are asynchronous
    int* tokens_pinned[2] = {};           // (B,T) each: token rows, double-buffered (upload_next_batch)
    cudaEvent_t tokens_copied[2] = {};    // recorded after each buffer's copy: refilled only once passed
    long long token_uploads = 0;
    float* stats_pinned = nullptr;        // every SAE's stats, read back once per update, SAE after SAE
    int* alive_pinned = nullptr;          // (number of SAEs) alive counts, read back with the stats
};

template <typename floatX>
void block_acts_carve(BlockActs<floatX>* b, DeviceArena* a, int B, int T, int C, int NH, bool flash, bool backward) {
    const size_t N = (size_t)B * T;
    b->inp = backward ? a->take<floatX>(N * C) : nullptr;  // (N,C)
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

// the engine's shape for the first k SAEs of saes: their lowest and highest layer, largest d_sae,
// and whether any trains on the KL
template <typename floatX>
void engine_shape(Engine<floatX>* e, const std::vector<SaeRun<floatX>>& saes, size_t k) {
    e->L_lo = e->n_layer; e->L_hi = 0; e->D_max = 0; e->train_logits = false;
    for (size_t i = 0; i < k; i++) {
        e->L_lo = std::min(e->L_lo, saes[i].L);
        e->L_hi = std::max(e->L_hi, saes[i].L);
        e->D_max = std::max(e->D_max, saes[i].D);
        e->train_logits = e->train_logits || saes[i].cfg.mode != MODE_LOCAL;
    }
}

// GPT-2, the activations and the dump: everything but the SAEs
template <typename floatX>
void engine_carve(Engine<floatX>* e, DeviceArena* a) {
    const size_t N = (size_t)e->B * e->T, C = e->C, D = e->D_max, Vp = e->Vp;
    size_t start = a->used;
    gpt2_device_carve(&e->model, &e->host_model, a);
    e->bytes_weights = a->used - start;

    start = a->used;
    Activations<floatX>& act = e->acts;
    act.tokens = a->take<int>(N);                        // (B,T)
    act.targets = a->take<int>(N);                       // (B,T)
    act.clean.assign(e->n_layer - e->L_lo, nullptr);
    for (floatX*& r : act.clean) r = a->take<floatX>(N * C);  // (n_layer - L_lo) x (N,C)
    act.c = a->take<floatX>(N * D);                      // (N,D)
    act.dc = a->take<floatX>(N * D);                     // (N,D)
    size_t sparse_start = a->used;
    if (e->sparse) {  // every entry of c can be indexed: no overflow, no host sync (sae_sparse.cuh)
        act.sparse.col_cnt = a->take<int>(D);            // (D)
        act.sparse.col_rows = a->take<int>(D * N);       // (D,N)
        act.sparse.col_l1 = a->take<float>(D);           // (D)
        act.sparse.row_cnt = a->take<int>(N);            // (N)
        act.sparse.row_cols = a->take<int>(N * D);       // (N,D)
        act.sparse.seg_ptr = a->take<int>(D + 1);        // (D+1)
        act.sparse.seg_info = a->take<int>(2);           // (2)
        act.sparse.part_dec = a->take<float>(2 * D * C); // (2D,C)
        act.sparse.part_enc = a->take<float>(2 * D * C); // (2D,C)
        act.sparse.part_db = a->take<float>(2 * D);      // (2D)
    }
    e->bytes_sparse = a->used - sparse_start;
    act.resid = a->take<floatX>(N * C);                  // (N,C)
    act.dresid = a->take<floatX>(N * C);                 // (N,C)
    act.dx_hat_local = a->take<floatX>(N * C);           // (N,C)
    act.lnf = a->take<floatX>(N * C);                    // (N,C)
    act.dlnf = a->take<floatX>(N * C);                   // (N,C)
    act.logits_clean = a->take<float>(N * Vp);           // (N,Vp)
    act.logits_spliced = a->take<float>(N * Vp);         // (N,Vp)
    act.dlogits = std::is_same<floatX, float>::value ? (floatX*)act.logits_spliced : a->take<floatX>(N * Vp);  // (N,Vp)
    act.lnf_mean = a->take<float>(N);                    // (N)
    act.lnf_rstd = a->take<float>(N);                    // (N)
    act.rows = a->take<float>(N);                        // (N)
    act.rows_clean = a->take<float>(N);                  // (N)
    act.xsum = a->take<float>(C);                        // (C)
    block_acts_carve(&act.scratch, a, e->B, e->T, e->C, e->NH, e->flash, false);
    act.spliced.resize(e->n_layer - e->L_lo);            // the eval splices in every mode
    for (auto& b : act.spliced) block_acts_carve(&b, a, e->B, e->T, e->C, e->NH, e->flash, true);
    act.x_hat = act.spliced[0].inp;                      // the decoder writes where the spliced pass reads
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

    size_t staging = sae_num_parameters(e->C, e->D_max);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) staging = std::max(staging, e->host_model.param_sizes[i]);
    e->staging = a->take<float>(staging);              // the largest tensor uploaded, fp32
    e->bytes_acts = a->used - start;

    start = a->used;
    if (!e->cfg.dump_features.empty()) feature_dump_device_carve(&e->dump, a, e->D_max, e->cfg.dump_topk, e->C, e->V);
    e->bytes_dump = a->used - start;
}

// one SAE's state and statistics
template <typename floatX>
void sae_carve(SaeRun<floatX>* s, int C, DeviceArena* a) {
    const size_t D = s->D, P = sae_num_parameters(C, s->D);
    const bool fp32 = std::is_same<floatX, float>::value;
    size_t start = a->used;
    SaeDevice<floatX>& d = s->dev;
    d.params = a->take<float>(P);                      // (P) W_enc, b_enc, W_dec, b_dec
    d.grads = a->take<float>(P);                       // (P)
    d.adam_m = a->take<float>(P);                      // (P)
    d.adam_v = a->take<float>(P);                      // (P)
    d.dW_dec_norm = a->take<float>(D * C);             // (D,C)
    d.inv_norm = a->take<float>(D);                    // (D)
    d.W_enc_x = fp32 ? nullptr : a->take<floatX>(C * D);  // (C,D) bf16 copy; fp32 reads the master
    // the biases are copied in fp32 too: the epilogues need 16-byte aligned biases, and the
    // masters' b_enc at C*D and b_dec at 2*C*D + D floats are not when C*D or D is not a multiple of 4
    d.b_enc_x = a->take<floatX>(D);                    // (D)
    d.b_dec_x = a->take<floatX>(C);                    // (C)
    d.W_dec_norm = a->take<floatX>(D * C);             // (D,C)
    s->stats.sums = a->take<float>(NUM_STATS_FIXED + s->K);
    s->stats.fired_train = a->take<unsigned int>(D);   // (D)
    s->stats.fired_eval = a->take<unsigned int>(D);    // (D)
    s->stats.fire_count_eval = a->take<unsigned long long>(D);  // (D)
    s->stats.alive_count = a->take<int>(1);
    s->stats.agree_count = a->take<int>(1);
    s->bytes = a->used - start;
}

// the bytes of the engine and the first k SAEs
template <typename floatX>
size_t plan_bytes(Engine<floatX>* e, std::vector<SaeRun<floatX>>& saes, size_t k) {
    engine_shape(e, saes, k);
    DeviceArena plan;
    engine_carve(e, &plan);
    for (size_t i = 0; i < k; i++) sae_carve(&saes[i], e->C, &plan);
    return plan.used;
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

// Plans the device memory of the engine and every SAE (each SaeRun's cfg and D set), prints the
// plan (per SAE in a sweep), refuses a run that does not fit (a sweep: how many of its SAEs
// would), then allocates everything in one cudaMalloc and uploads GPT-2. The SAEs' own state
// follows in sae_device_init, once each is loaded on the host. host_model must be loaded.
template <typename floatX>
void engine_init(Engine<floatX>* e, std::vector<SaeRun<floatX>>& saes, int B) {
    e->cfg = saes[0].cfg;
    const TrainConfig& cfg = e->cfg;
    const GPT2Config& mc = e->host_model.config;
    e->B = B; e->T = cfg.seq_len; e->C = mc.channels; e->V = mc.vocab_size; e->NH = mc.num_heads;
    e->n_layer = mc.num_layers;
    e->Vp = (e->V + 127) / 128 * 128;
    e->flash = cfg.attention == "flash";
    e->fused_backward = cfg.fused_backward == "on";
    e->graphs = cfg.cuda_graph == "on";
    e->sparse = cfg.sae_kernels != "dense";
    e->micro_graphs.assign(cfg.grad_accum, nullptr);
    for (SaeRun<floatX>& s : saes) { s.L = s.cfg.layer; s.K = std::max(0, e->n_layer - 1 - s.L); }
    const size_t total = plan_bytes(e, saes, saes.size());
    size_t free_b = 0, total_b = 0, sae_bytes = 0;
    for (const SaeRun<floatX>& s : saes) sae_bytes += s.bytes;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    // materialised: a (B,NH,T,T) matrix per spliced block, one for the blocks without a backward, one datt
    const int n_att = e->n_layer - e->L_lo + 2;
    char att_note[96];
    if (e->flash) snprintf(att_note, sizeof(att_note), "flash attention: no (B,NH,T,T) matrix");
    else snprintf(att_note, sizeof(att_note), "of which %d (B,NH,T,T) attention matrices %.1f MiB", n_att,
                  (double)n_att * B * e->NH * e->T * e->T * sizeof(floatX) / 1048576.0);
    printf("device memory plan (%s): GPT-2 weights %.1f MiB | %s %.1f MiB | activations %.1f MiB (%s) | "
           "total %.2f GiB of %.2f GiB free\n", std::is_same<floatX, float>::value ? "fp32" : "bf16", e->bytes_weights / 1048576.0,
           saes.size() > 1 ? "SAEs' params+grads+Adam+copies" : "SAE params+grads+Adam+copies", sae_bytes / 1048576.0,
           e->bytes_acts / 1048576.0, att_note, total / 1073741824.0, free_b / 1073741824.0);
    if (saes.size() > 1)
        for (const SaeRun<floatX>& s : saes) printf("  SAE %-16s %9.1f MiB\n", s.cfg.name.c_str(), s.bytes / 1048576.0);
    if (e->bytes_sparse)
        printf("  of which the sparse index of c %.1f MiB (--sae-kernels %s: every entry of (N,D) by feature and by row, the backward's partials)\n",
               e->bytes_sparse / 1048576.0, cfg.sae_kernels.c_str());
    if (e->bytes_dump)
        printf("  of which the feature dump %.1f MiB (top-%d, histogram, bands, contexts, logit effects of %d features, in chunks of %d)\n",
               e->bytes_dump / 1048576.0, cfg.dump_topk, e->D_max, FEATURE_DUMP_LOGIT_CHUNK);
    const size_t margin = (size_t)512 << 20;  // cuBLASLt's workspace, the CUDA context's growth
    if (total + margin > free_b) {
        if (saes.size() > 1) {
            size_t fit = 0;
            while (fit < saes.size() && plan_bytes(e, saes, fit + 1) + margin <= free_b) fit++;
            die("the sweep needs %.2f GiB of device memory but only %.2f GiB is free: %zu of its %zu SAEs would fit (in file order)",
                total / 1073741824.0, free_b / 1073741824.0, fit, saes.size());
        }
        die("the run needs %.2f GiB of device memory but only %.2f GiB is free: lower --batch, --seq-len or --dict-size",
            total / 1073741824.0, free_b / 1073741824.0);
    }
    engine_shape(e, saes, saes.size());
    e->arena.planning = false;
    cudaCheck(cudaMalloc(&e->arena.base, total));
    engine_carve(e, &e->arena);
    for (SaeRun<floatX>& s : saes) sae_carve(&s, e->C, &e->arena);
    cudaCheck(cudaStreamCreate(&main_stream));
    matmul_init();
    gpt2_device_upload(&e->model, &e->host_model, e->staging);
    size_t n_stats = 0;
    for (const SaeRun<floatX>& s : saes) n_stats += NUM_STATS_FIXED + s.K;
    for (int k = 0; k < 2; k++) {
        cudaCheck(cudaMallocHost(&e->tokens_pinned[k], (size_t)B * e->T * sizeof(int)));
        cudaCheck(cudaEventCreate(&e->tokens_copied[k]));
    }
    cudaCheck(cudaMallocHost(&e->stats_pinned, n_stats * sizeof(float)));
    cudaCheck(cudaMallocHost(&e->alive_pinned, saes.size() * sizeof(int)));
    e->phases.saes = (int)saes.size();
    e->phases.ev.resize((size_t)cfg.grad_accum * saes.size() * NUM_PHASES * 2);
    e->phases.recorded.assign((size_t)cfg.grad_accum * saes.size() * NUM_PHASES, 0);
    for (cudaEvent_t& ev : e->phases.ev) cudaCheck(cudaEventCreate(&ev));
}

// an SAE's floatX weight copies, as ranges of its parameter block: W_enc in bf16 (fp32 reads the
// master), and the biases in both precisions (aligned for the epilogues, see sae_carve). Adam
// writes them along with the masters; sae_copy_weights makes them when the masters come from the host.
template <typename floatX>
ParamCopies<floatX> sae_copies(const SaeRun<floatX>* s) {
    const SaeDevice<floatX>& d = s->dev;
    const size_t CD = (size_t)s->sae.C * s->D;
    ParamCopies<floatX> p;
    p.dst[0] = std::is_same<floatX, float>::value ? nullptr : d.W_enc_x; p.begin[0] = 0;           p.n[0] = CD;
    p.dst[1] = d.b_enc_x;                                                p.begin[1] = CD;          p.n[1] = s->D;
    p.dst[2] = d.b_dec_x;                                                p.begin[2] = 2 * CD + s->D; p.n[2] = s->sae.C;
    return p;
}

template <typename floatX>
void sae_copy_weights(SaeRun<floatX>* s) {
    const ParamCopies<floatX> p = sae_copies(s);
    for (int k = 0; k < ADAMW_MAX_COPIES; k++)
        if (p.dst[k]) cast_copy(p.dst[k], s->dev.params + p.begin[k], p.n[k], main_stream);
}

// an SAE's parameters (s->sae, loaded on the host) onto the device, its Adam moments and alive
// flags zeroed; named views into its parameter and gradient blocks, and in fp32 the encoder
// matmul reads the master W_enc
template <typename floatX>
void sae_device_init(SaeRun<floatX>* s) {
    SaeDevice<floatX>& d = s->dev;
    const SAE* host = &s->sae;
    d.W_enc = d.params; d.b_enc = d.W_enc + host->sizes[0]; d.W_dec = d.b_enc + host->sizes[1]; d.b_dec = d.W_dec + host->sizes[2];
    d.dW_enc = d.grads; d.db_enc = d.dW_enc + host->sizes[0]; d.dW_dec = d.db_enc + host->sizes[1]; d.db_dec = d.dW_dec + host->sizes[2];
    if (std::is_same<floatX, float>::value) d.W_enc_x = (floatX*)d.W_enc;
    size_t P = host->num_parameters;
    cudaCheck(cudaMemcpy(d.params, host->memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    sae_copy_weights(s);
    cudaCheck(cudaMemset(d.adam_m, 0, P * sizeof(float)));
    cudaCheck(cudaMemset(d.adam_v, 0, P * sizeof(float)));
    cudaCheck(cudaMemset(s->stats.fired_train, 0, s->D * sizeof(unsigned int)));
}

template <typename floatX>
void engine_free(Engine<floatX>* e) {
    for (cudaGraphExec_t g : e->micro_graphs)
        if (g) cudaCheck(cudaGraphExecDestroy(g));
    for (cudaEvent_t ev : e->phases.ev) cudaCheck(cudaEventDestroy(ev));
    for (int k = 0; k < 2; k++) {
        cudaCheck(cudaEventDestroy(e->tokens_copied[k]));
        cudaCheck(cudaFreeHost(e->tokens_pinned[k]));
    }
    cudaCheck(cudaFreeHost(e->stats_pinned));
    cudaCheck(cudaFreeHost(e->alive_pinned));
    matmul_destroy();
    cudaCheck(cudaFree(e->arena.base));
    cudaCheck(cudaStreamDestroy(main_stream));
    main_stream = 0;
}

// times the rest of the enclosing scope as phase p of micro-batch `micro` and SAE `sae`; nothing
// when micro < 0 (evals, dumps and tests time nothing) or while a graph is captured (an event
// recorded there adds no node to the graph)
template <typename floatX>
std::optional<EventRange> time_phase(Engine<floatX>* e, int micro, int sae, Phase p) {
    if (micro < 0 || !e->timing) return std::nullopt;
    size_t i = ((size_t)micro * e->phases.saes + sae) * NUM_PHASES + p;
    e->phases.recorded[i] = 1;
    return std::optional<EventRange>(std::in_place, e->phases.ev[2 * i], e->phases.ev[2 * i + 1], main_stream);
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
    // inp, out (B,T,C); out may alias inp. No copies: the residual adds take the residual as the
    // matmuls' C operand, and a block with a backward is given its own a->inp as inp (the previous
    // block, or the SAE decoder, wrote its output there), where the backward reads it.
    NvtxRange r("block_forward");
    if (a->inp && a->inp != inp) die("block_forward: block %d with a backward must read its input from its own inp buffer", l);
    const GPT2Device<floatX>& w = e->model;
    int C = e->C, N = B * e->T;
    layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, inp, layer_vec(w.ln1w, l, C), layer_vec(w.ln1b, l, C), N, C, main_stream);
    matmul_forward(a->qkv, a->ln1, w.qkvw + (size_t)l * 3 * C * C, layer_vec(w.qkvb, l, 3 * C), N, C, 3 * C, main_stream);
    if (e->flash) flash_attention_forward(a->atty, a->lse, a->qkv, B, e->T, C, e->NH, main_stream);
    else attention_forward(a->atty, a->qkvr, a->att, a->res2, a->qkv, B, e->T, C, e->NH, main_stream);  // res2: scratch until written below
    matmul_forward_residual(a->res2, inp, a->atty, w.attprojw + (size_t)l * C * C, layer_vec(w.attprojb, l, C), N, C, C, main_stream);  // res2 = inp + attproj(atty)
    layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, layer_vec(w.ln2w, l, C), layer_vec(w.ln2b, l, C), N, C, main_stream);
    matmul_forward_gelu(a->fch_gelu, a->fch, a->ln2, w.fcw + (size_t)l * 4 * C * C, layer_vec(w.fcb, l, 4 * C), N, C, 4 * C, main_stream);
    matmul_forward_residual(out, a->res2, a->fch_gelu, w.fcprojw + (size_t)l * C * 4 * C, layer_vec(w.fcprojb, l, C), N, 4 * C, C, main_stream);  // out = res2 + fcproj(...)
}

// final LayerNorm and the LM head on the *uncentred* wte (SPEC §2); logits (N,Vp) fp32 in both
// precisions: at real GPT-2 scale bf16's rounding of the logits biases the KL by ~2% (issue 16)
template <typename floatX>
void lm_head_forward(Engine<floatX>* e, float* logits, const floatX* resid, int N) {
    NvtxRange r("lm_head_forward");
    Activations<floatX>& act = e->acts;
    layernorm_forward(act.lnf, act.lnf_mean, act.lnf_rstd, resid, e->model.lnfw, e->model.lnfb, N, e->C, main_stream);
    matmul_forward_fp32_out(logits, act.lnf, e->model.wte_unembed, N, e->C, e->Vp, main_stream);
}

// The clean pass, once per micro-batch for every SAE, tokens already on the device: the embedding
// and blocks 0.., keeping each resid_pre_l from the lowest SAE layer on in acts.clean (the SAE
// inputs and the e2e+ds targets), then the LM head into logits_clean. to_logits false stops at
// the highest SAE layer's input (local mode needs no logits). Each block writes where the next
// reads; the blocks keep nothing for a backward. micro >= 0 times it (time_phase).
template <typename floatX>
void clean_forward(Engine<floatX>* e, int B, bool to_logits, int micro) {
    NvtxRange r("clean_forward");
    Activations<floatX>& act = e->acts;
    auto slot = [&](int l) { return l >= e->L_lo && l < e->n_layer ? act.clean[l - e->L_lo] : act.resid; };  // resid_pre_l
    const int blocks = to_logits ? e->n_layer : e->L_hi;
    {
        auto t = time_phase(e, micro, 0, PH_LOWER);
        encoder_forward(slot(0), act.tokens, e->model.wte, e->model.wpe, B, e->T, e->C, main_stream);
        for (int l = 0; l < e->L_lo; l++) block_forward(e, l, &act.scratch, slot(l), slot(l + 1), B);
    }
    if (blocks == e->L_lo && !to_logits) return;
    auto t = time_phase(e, micro, 0, PH_CLEAN);
    for (int l = e->L_lo; l < blocks; l++) block_forward(e, l, &act.scratch, slot(l), slot(l + 1), B);
    if (to_logits) lm_head_forward(e, act.logits_clean, act.resid, B * e->T);
}

// the SAE input of an SAE at layer L: the centred residual entering block L
template <typename floatX>
const floatX* sae_input(const Engine<floatX>* e, int L) { return e->acts.clean[L - e->L_lo]; }

// the normalised decoder the forward reads, from the current W_dec (once per update, and before
// evals and dumps). The other floatX copies are kept by the update itself (sae_copies).
template <typename floatX>
void sae_prepare_weights(Engine<floatX>* e, SaeRun<floatX>* s) {
    NvtxRange r("sae_prepare_weights");
    SaeDevice<floatX>& d = s->dev;
    sae_decoder_normalize(d.W_dec_norm, d.inv_norm, d.W_dec, s->D, e->C, main_stream);
}

// c = relu(x W_enc + b_enc) (N,D), x_hat = c W_dec_norm + b_dec (N,C)
template <typename floatX>
void sae_forward(Engine<floatX>* e, SaeRun<floatX>* s, int B) {
    NvtxRange r("sae_forward");
    int N = B * e->T;
    sae_encoder_forward(e->acts.c, sae_input(e, s->L), s->dev.W_enc_x, s->dev.b_enc_x, N, e->C, s->D, main_stream);
    sae_decoder_forward(e->acts.x_hat, e->acts.c, s->dev.W_dec_norm, s->dev.b_dec_x, N, e->C, s->D, main_stream);
}

// spliced run from x_hat at layer L to logits_spliced: each block writes into the next one's inp
// (block l's input, resid_pre_l, stays in acts.spliced[l-L].inp; x_hat is spliced[0]'s), the last
// into acts.resid
template <typename floatX>
void spliced_forward(Engine<floatX>* e, int L, int B) {
    NvtxRange r("spliced_forward");
    Activations<floatX>& act = e->acts;
    int N = B * e->T;
    for (int l = L; l < e->n_layer; l++) {
        floatX* out = l + 1 < e->n_layer ? act.spliced[l + 1 - L].inp : act.resid;
        block_forward(e, l, &act.spliced[l - L], act.spliced[l - L].inp, out, B);
    }
    lm_head_forward(e, act.logits_spliced, act.resid, N);
}

// ----------------------------------------------------------------------------
// backward: activation gradients through frozen GPT-2, then the SAE's parameter gradients

template <typename floatX>
void block_backward(Engine<floatX>* e, int l, const BlockActs<floatX>* a, floatX* dresid, int B) {
    // dresid (B,T,C): gradient wrt the block output in, wrt the block input out. No copies: each
    // residual path's gradient enters the LayerNorm backward that adds the other path's.
    NvtxRange r("block_backward");
    const GPT2Device<floatX>& w = e->model;
    BlockGrads<floatX>& g = e->acts.bg;
    int C = e->C, N = B * e->T;
    // MLP: out = res2 + fcproj(gelu(fc(ln2(res2)))), so dres2 = dresid + the MLP path's
    if (e->fused_backward) {
        matmul_backward_dinp_gelu(g.dfch, dresid, w.fcprojw + (size_t)l * C * 4 * C, a->fch, N, 4 * C, C, main_stream);
    } else {
        matmul_backward_dinp(g.dfch, dresid, w.fcprojw + (size_t)l * C * 4 * C, N, 4 * C, C, false, main_stream);
        gelu_backward_inplace(g.dfch, a->fch, (size_t)N * 4 * C, main_stream);
    }
    matmul_backward_dinp(g.dln, g.dfch, w.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, false, main_stream);
    layernorm_backward_dinp(g.dres2, dresid, g.dln, a->res2, layer_vec(w.ln2w, l, C), a->ln2_mean, a->ln2_rstd, N, C, main_stream);
    // attention: res2 = inp + attproj(attn(qkv(ln1(inp)))), so dinp = dres2 + the attention path's
    matmul_backward_dinp(g.datty, g.dres2, w.attprojw + (size_t)l * C * C, N, C, C, false, main_stream);
    if (e->flash) flash_attention_backward(g.dqkv, g.dsum, g.datty, a->atty, a->qkv, a->lse, B, e->T, C, e->NH, main_stream);
    else attention_backward(g.dqkv, g.dqkvr, g.datt, g.scratch, g.datty, a->qkvr, a->att, B, e->T, C, e->NH, main_stream);
    matmul_backward_dinp(g.dln, g.dqkv, w.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, false, main_stream);
    layernorm_backward_dinp(dresid, g.dres2, g.dln, a->inp, layer_vec(w.ln1w, l, C), a->ln1_mean, a->ln1_rstd, N, C, main_stream);
}

// the LM head's backward: dresid (N,C) from the KL gradient in dlogits
template <typename floatX>
void lm_head_backward(Engine<floatX>* e, int N) {
    NvtxRange r("lm_head_backward");
    Activations<floatX>& act = e->acts;
    matmul_backward_dinp(act.dlnf, act.dlogits, e->model.wte_unembed, N, e->C, e->Vp, false, main_stream);
    layernorm_backward_dinp(act.dresid, (const floatX*)nullptr, act.dlnf, act.resid, e->model.lnfw, act.lnf_mean, act.lnf_rstd, N, e->C, main_stream);
}

// SAE backward from dx_hat (N,C), accumulating over micro-batches (first = overwrite):
//   dW_dec_norm += c^T dx_hat, db_dec += colsum(dx_hat), dc = dx_hat W_dec_norm^T,
//   dpre = (dc + l1_scale) [c > 0], db_enc += colsum(dpre), dW_enc += x^T dpre.
// With --fused-backward on, one pass makes dpre and db_enc and also adds the micro-batch's Σ|c|
// and count(c > 0) to stats and sets the fired flags (micro_step's forward does that otherwise):
// c and dc read once, dpre written once. Both ways give the same dpre and db_enc bits.
// With --sae-kernels sparse, all but db_dec come from sae_sparse_backward over the index of c:
// the same terms, summed in another order (and the statistics came with the index).
// dW_dec itself comes from dW_dec_norm once per update (sae_finish_grads): the normalisation
// backward is linear in dW_dec_norm and W_dec does not change within an update.
template <typename floatX>
void sae_backward(Engine<floatX>* e, SaeRun<floatX>* s, const floatX* dx_hat, int B, float l1_scale, bool first) {
    NvtxRange r("sae_backward");
    int N = B * e->T;
    SaeDevice<floatX>& d = s->dev;
    Activations<floatX>& act = e->acts;
    if (s->sparse_now) {  // over the index micro_step's forward made; dc holds dpre by feature
        bias_grad_colsum(d.db_dec, dx_hat, N, e->C, !first, main_stream);
        sae_sparse_backward(d.dW_dec_norm, d.dW_enc, d.db_enc, act.dc, &act.sparse, act.c, dx_hat, sae_input(e, s->L), d.W_dec_norm, l1_scale,
                            N, e->C, s->D, !first, main_stream);
        return;
    }
    sae_decoder_backward(d.dW_dec_norm, d.db_dec, act.dc, dx_hat, act.c, d.W_dec_norm, N, e->C, s->D, !first, main_stream);
    if (e->fused_backward) {
        sae_l1_relu_backward_stats(act.dc, d.db_enc, s->stats.sums + STAT_L1, s->stats.sums + STAT_L0, s->stats.fired_train, act.c, l1_scale, N, s->D,
                                   !first, main_stream);
    } else {
        sae_l1_relu_backward(act.dc, act.dc, act.c, l1_scale, N, s->D, main_stream);
        bias_grad_colsum(d.db_enc, act.dc, N, s->D, !first, main_stream);
    }
    sae_encoder_backward(d.dW_enc, act.dc, sae_input(e, s->L), N, e->C, s->D, !first, main_stream);
}

// dW_dec from the dW_dec_norm the update's micro-batches accumulated
template <typename floatX>
void sae_finish_grads(Engine<floatX>* e, SaeRun<floatX>* s) {
    sae_decoder_normalize_backward(s->dev.dW_dec, s->dev.dW_dec_norm, s->dev.W_dec, s->dev.inv_norm, s->D, e->C, main_stream);
}

// one micro-batch of one SAE (SAE number si of the run), number `micro` of the update, after the
// clean pass: forward, losses into its stats, gradients accumulated (the first micro-batch
// overwrites), everything scaled by 1/accum; micro < 0 times nothing and overwrites
template <typename floatX>
void micro_step(Engine<floatX>* e, SaeRun<floatX>* s, int accum, int micro, int si) {
    const TrainConfig& cfg = s->cfg;
    Activations<floatX>& act = e->acts;
    float* stats = s->stats.sums;
    const int B = e->B, N = B * e->T, L = s->L;
    const floatX* x = sae_input(e, L);
    size_t NC = (size_t)N * e->C;
    double dN = N, dC = e->C;
    bool local = cfg.mode == MODE_LOCAL;
    {
        auto t = time_phase(e, micro, si, PH_SAE_FWD);
        if (s->sparse_now) {  // the index adds Σ|c|, L0 and the fired flags; the decoder reads it
            sae_encoder_forward(act.c, x, s->dev.W_enc_x, s->dev.b_enc_x, N, e->C, s->D, main_stream);
            sae_sparse_index(&act.sparse, stats + STAT_L1, stats + STAT_L0, s->stats.fired_train, act.c, N, s->D, main_stream);
            sae_sparse_decoder_forward(act.x_hat, &act.sparse, act.c, s->dev.W_dec_norm, s->dev.b_dec_x, N, e->C, s->D, main_stream);
        } else {
            sae_forward(e, s, B);
            if (!e->fused_backward)  // fused, sae_backward's one pass adds them
                sae_sparsity_l0(stats + STAT_L1, stats + STAT_L0, s->stats.fired_train, act.c, N, s->D, main_stream);
        }
        // MSE(x_hat, x) is logged in every mode and trained on in local mode only
        if (local) cudaCheck(cudaMemsetAsync(act.dx_hat_local, 0, NC * sizeof(floatX), main_stream));
        mse_forward_backward(stats + STAT_MSE, local ? act.dx_hat_local : (floatX*)nullptr, act.x_hat, x, NC,
                             local ? (float)(cfg.mse_coeff / (dN * dC * accum)) : 0.0f, main_stream);
    }
    const floatX* dx_hat = local ? act.dx_hat_local : act.dresid;
    if (!local) {
        {
            auto t = time_phase(e, micro, si, PH_SPLICED);
            spliced_forward(e, L, B);
        }
        {
            auto t = time_phase(e, micro, si, PH_KL);
            const float kl_scale = (float)(cfg.kl_coeff / (dN * accum));
            if (e->fused_backward)  // each row pair read once (sm_90 clusters; falls back to kl_forward_backward elsewhere)
                kl_forward_backward_onepass(act.rows, act.dlogits, act.logits_spliced, act.logits_clean, kl_scale, N, e->V, e->Vp, main_stream);
            else
                kl_forward_backward(act.rows, act.dlogits, act.logits_spliced, act.logits_clean, kl_scale, N, e->V, e->Vp, main_stream);
            deterministic_sum(stats + STAT_KL, act.rows, N, true, main_stream);
        }
        auto t = time_phase(e, micro, si, PH_BACKWARD);
        lm_head_backward(e, N);
        bool ds = cfg.mode == MODE_E2E_DS;
        float ds_scale = ds ? (float)(cfg.ds_coeff / s->K / (dN * dC * accum)) : 0.0f;
        for (int l = e->n_layer - 1; l >= L; l--) {
            block_backward(e, l, &act.spliced[l - L], act.dresid, B);
            if (ds && l > L)  // dresid is now d/d resid_pre_l, where the e2e+ds term for layer l enters (plain e2e: an eval metric only)
                mse_forward_backward(stats + STAT_DS + (l - L - 1), act.dresid, act.spliced[l - L].inp, act.clean[l - e->L_lo], NC,
                                     ds_scale, main_stream);
        }
    }
    auto t = time_phase(e, micro, si, PH_SAE_BWD);
    sae_backward(e, s, dx_hat, B, (float)(cfg.sparsity_coeff / (dN * dC * accum)), micro <= 0);
}

// --sae-kernels: whether SAE s runs update `step` (0-based) sparse. auto runs dense until an update's
// L0 (features per token) is at most d_sae / SPARSE_AUTO_FRACTION, then sparse from the next update to
// the end, a switch kept in the training state (sparse_from) so that a resumed run makes the same
// choices. The rule reads only the logged L0, so the same run switches at the same update every time.
// The fraction is an estimate, not a measurement: at the paper shape the four dense matmuls and the
// fused pass cost ~4 ms per micro-batch and the sparse path ~0.7 ms + ~8 µs per unit of L0, so the
// paths meet near L0 ~400 of 46080 (~d_sae / 110); dev/cuda/sae_sparse times both by L0 on a device.
static const int SPARSE_AUTO_FRACTION = 128;

template <typename floatX>
bool sae_runs_sparse(const SaeRun<floatX>& s, long long step) {
    if (s.cfg.sae_kernels == "sparse") return true;
    return s.cfg.sae_kernels == "auto" && s.run.ts.sparse_from >= 0 && step >= s.run.ts.sparse_from;
}

// after update `done` (1-based) of an auto SAE, logged at L0 l0: switches it to sparse from the next
// update when l0 is low enough. Returns whether it switched (the micro-batch graphs then hold the
// dense kernels: the caller drops them).
template <typename floatX>
bool sae_auto_switch(SaeRun<floatX>* s, long long done, double l0) {
    if (s->cfg.sae_kernels != "auto" || s->run.ts.sparse_from >= 0 || !(l0 <= (double)s->D / SPARSE_AUTO_FRACTION)) return false;
    s->run.ts.sparse_from = done;
    printf("--sae-kernels auto%s%s: L0 %.1f after update %lld is at most d_sae / %d = %.1f: its decoder and backward run sparse from update "
           "%lld on\n", s->cfg.name.empty() ? "" : ", SAE ", s->cfg.name.c_str(), l0, done, SPARSE_AUTO_FRACTION,
           (double)s->D / SPARSE_AUTO_FRACTION, done + 1);
    return true;
}

// One micro-batch of the update, number a, after its token upload: the clean pass, then each SAE's
// micro_step. With --cuda-graph on, from the second update of the process on (the first makes the
// matmul plans and loads the kernels outside any capture; after --sae-kernels auto switches, from
// the second sparse update: e->capture_from), number a's work is captured once as a CUDA graph and
// then launched whole: the same kernels with the same arguments (every pointer,
// shape and scale is fixed for the run; the tokens are uploaded to the same buffer before each
// launch), so the same bits, with one launch instead of hundreds. A graph's phases are not timed.
template <typename floatX>
void micro_batch(Engine<floatX>* e, std::vector<SaeRun<floatX>>& saes, int a, bool replay) {
    auto work = [&] {
        clean_forward(e, e->B, e->train_logits, a);
        for (size_t i = 0; i < saes.size(); i++) micro_step(e, &saes[i], e->cfg.grad_accum, a, (int)i);
    };
    if (!e->graphs || !replay) {
        work();
        return;
    }
    cudaGraphExec_t& exec = e->micro_graphs[a];
    if (!exec) {
        NvtxRange r("capture");
        cudaGraph_t graph;
        e->timing = false;
        cudaCheck(cudaStreamBeginCapture(main_stream, cudaStreamCaptureModeGlobal));
        work();
        cudaCheck(cudaStreamEndCapture(main_stream, &graph));
        e->timing = true;
        size_t nodes = 0;
        cudaCheck(cudaGraphGetNodes(graph, nullptr, &nodes));
        cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
        cudaCheck(cudaGraphDestroy(graph));
        printf("--cuda-graph on: micro-batch %d of the update captured as one graph of %zu nodes\n", a, nodes);
    }
    cudaCheck(cudaGraphLaunch(exec, main_stream));
}

// the update's log terms from the stats its micro-batches accumulated, st (read back after the
// step): per-token means, the loss assembled as the mode trains it (SPEC §1), the gradient norm
template <typename floatX>
StepLog step_terms(const SaeRun<floatX>* s, const std::vector<float>& st) {
    const TrainConfig& cfg = s->cfg;
    double A = cfg.grad_accum, dN = (double)cfg.batch * cfg.seq_len, C = s->sae.C;
    StepLog sl = {};
    sl.kl = cfg.mode == MODE_LOCAL ? NAN : st[STAT_KL] / dN / A;
    sl.sparsity = st[STAT_L1] / dN / C / A;
    sl.mse = st[STAT_MSE] / dN / C / A;
    sl.l0 = st[STAT_L0] / dN / A;
    sl.ds_mse = NAN;
    if (cfg.mode == MODE_E2E_DS) {  // K >= 1 there; plain e2e has the downstream MSE as an eval metric only
        sl.ds_mse = 0.0;
        for (int k = 0; k < s->K; k++) sl.ds_mse += st[STAT_DS + k] / dN / C / A;
        sl.ds_mse /= s->K;
    }
    sl.loss = cfg.sparsity_coeff * sl.sparsity;
    if (cfg.mode == MODE_LOCAL) sl.loss += cfg.mse_coeff * sl.mse;
    else sl.loss += cfg.kl_coeff * sl.kl;
    if (cfg.mode == MODE_E2E_DS) sl.loss += cfg.ds_coeff * sl.ds_mse;
    sl.grad_norm = sqrt((double)st[STAT_GNORM_SQ]);
    sl.alive = -1;
    return sl;
}

// clipping on the device (no host sync), then Adam(W) on the fp32 masters, writing the floatX
// copies along; update t (1 for the first)
template <typename floatX>
void update(SaeRun<floatX>* s, double lr, long long t) {
    NvtxRange r("update");
    size_t n = s->sae.num_parameters;
    float* norm_sq = s->stats.sums + STAT_GNORM_SQ;
    global_norm_squared(norm_sq, s->dev.grads, n, false, main_stream);
    double step_size, bc2_sqrt;
    adamw_scalars((int)t, lr, 0.9, 0.999, &step_size, &bc2_sqrt);
    adamw_update(s->dev.params, s->dev.adam_m, s->dev.adam_v, s->dev.grads, n, lr, 0.9, 0.999, step_size, bc2_sqrt, 1e-8,
                 s->cfg.weight_decay, norm_sq, s->cfg.max_grad_norm, sae_copies(s), main_stream);
}

// ----------------------------------------------------------------------------
// eval (SPEC §6) on the first eval_rows rows of the val data, for every SAE at once (one clean
// pass per batch), with the number of eval tokens each feature fired on (the export's sparsity)

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
std::vector<EvalMetrics> evaluate(Engine<floatX>* e, std::vector<SaeRun<floatX>>& saes, const DataLoader* val, int eval_rows) {
    NvtxRange r("evaluate");
    const int T = e->T, C = e->C;
    Activations<floatX>& act = e->acts;
    for (SaeRun<floatX>& s : saes) {
        Stats& st = s.stats;
        cudaCheck(cudaMemset(st.sums, 0, (NUM_STATS_FIXED + s.K) * sizeof(float)));
        cudaCheck(cudaMemset(st.fired_eval, 0, s.D * sizeof(unsigned int)));
        cudaCheck(cudaMemset(st.fire_count_eval, 0, s.D * sizeof(unsigned long long)));
        cudaCheck(cudaMemset(st.agree_count, 0, sizeof(int)));
        sae_prepare_weights(e, &s);
    }
    std::vector<int> tokens((size_t)e->B * T);
    long long tokens_seen = 0;
    for (int row = 0; row < eval_rows; row += e->B) {
        int B = std::min(e->B, eval_rows - row);
        int N = B * T;
        size_t NC = (size_t)N * C;
        dataloader_get_rows(val, row, B, tokens.data());
        upload_rows(e, tokens.data(), B);
        clean_forward(e, B, true, -1);
        ce_forward(act.rows_clean, act.logits_clean, act.targets, N, e->V, e->Vp, main_stream);
        for (SaeRun<floatX>& s : saes) {
            float* sums = s.stats.sums;
            const floatX* x = sae_input(e, s.L);
            sae_forward(e, &s, B);
            sae_sparsity_l0(sums + STAT_L1, sums + STAT_L0, s.stats.fired_eval, act.c, N, s.D, 0, s.stats.fire_count_eval);
            mse_forward_backward(sums + STAT_MSE, (floatX*)nullptr, act.x_hat, x, NC, 0.0f, main_stream);
            explained_variance_rows(act.rows, act.x_hat, x, act.xsum, N, C, main_stream);
            deterministic_sum(sums + STAT_EV, act.rows, N, true, main_stream);
            spliced_forward(e, s.L, B);
            for (int k = 0; k < s.K; k++)
                mse_forward_backward(sums + STAT_DS + k, (floatX*)nullptr, act.spliced[k + 1].inp, act.clean[s.L + 1 + k - e->L_lo], NC, 0.0f, main_stream);
            deterministic_sum(sums + STAT_CE_CLEAN, act.rows_clean, N, true, main_stream);
            ce_forward(act.rows, act.logits_spliced, act.targets, N, e->V, e->Vp, main_stream);
            deterministic_sum(sums + STAT_CE_SPLICED, act.rows, N, true, main_stream);
            argmax_agree(s.stats.agree_count, act.logits_clean, act.logits_spliced, N, e->V, e->Vp, main_stream);
            kl_forward_backward(act.rows, (floatX*)nullptr, act.logits_spliced, act.logits_clean, 0.0f, N, e->V, e->Vp, main_stream);
            deterministic_sum(sums + STAT_KL, act.rows, N, true, main_stream);
        }
        tokens_seen += N;
    }
    std::vector<EvalMetrics> out;
    for (SaeRun<floatX>& s : saes) {
        std::vector<float> st(NUM_STATS_FIXED + s.K);
        int agree = 0;
        cudaCheck(cudaMemcpy(st.data(), s.stats.sums, st.size() * sizeof(float), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(&agree, s.stats.agree_count, sizeof(int), cudaMemcpyDeviceToHost));
        EvalSums sums;
        sums.ce_clean = st[STAT_CE_CLEAN];
        sums.ce_spliced = st[STAT_CE_SPLICED];
        sums.kl = st[STAT_KL];
        sums.l0 = st[STAT_L0];
        sums.explained_variance = st[STAT_EV];
        sums.top1_agree = agree;
        sums.mse = st[STAT_MSE];
        for (int k = 0; k < s.K; k++) sums.ds_mse.push_back(st[STAT_DS + k]);
        sums.tokens = tokens_seen;
        static_assert(sizeof(unsigned long long) == sizeof(long long), "the counts are copied as they are");
        sums.fire_count.resize(s.D);
        cudaCheck(cudaMemcpy(sums.fire_count.data(), s.stats.fire_count_eval, s.D * sizeof(long long), cudaMemcpyDeviceToHost));
        out.push_back(eval_metrics_finish(sums, eval_rows, T, C, s.D, s.run.ts.last_alive));
    }
    return out;
}

// ----------------------------------------------------------------------------
// --dump-features, the ablation effect (the CPU trainer's ablation_effects): for the features that
// fire most often on the eval rows (the last eval's counts), the mean change in KL and in CE on
// the eval tokens when that feature alone is zeroed in the spliced model: its column of c set to
// 0, x_hat decoded again, the spliced pass rerun. Per batch and feature the KL and CE sums (fp32,
// deterministic_sum) come back to the host and are added there in double, so an effect below
// ~1e-6 of the KL is rounding. The column is kept in acts.rows (N floats) while it is zeroed.

template <typename floatX>
AblationEffects ablation_effects(Engine<floatX>* e, SaeRun<floatX>* s, const DataLoader* val, int eval_rows) {
    NvtxRange r("ablation_effects");
    AblationEffects ab;
    ab.features = most_frequent_features(s->run.sparsity, ABLATION_FEATURES);
    int T = e->T, D = s->D, F = (int)ab.features.size();
    Activations<floatX>& act = e->acts;
    float* sums = s->stats.sums;
    std::vector<double> kl(F, 0.0), ce(F, 0.0);
    std::vector<int> tokens((size_t)e->B * T);
    auto spliced_kl_ce = [&](int B, double* kl_sum, double* ce_sum) {  // the spliced model on x_hat
        int N = B * T;
        spliced_forward(e, s->L, B);
        ce_forward(act.rows, act.logits_spliced, act.targets, N, e->V, e->Vp, main_stream);
        deterministic_sum(sums + STAT_CE_SPLICED, act.rows, N, false, main_stream);
        kl_forward_backward(act.rows, (floatX*)nullptr, act.logits_spliced, act.logits_clean, 0.0f, N, e->V, e->Vp, main_stream);
        deterministic_sum(sums + STAT_KL, act.rows, N, false, main_stream);
        float st[NUM_STATS_FIXED];
        cudaCheck(cudaMemcpy(st, sums, sizeof(st), cudaMemcpyDeviceToHost));
        *kl_sum += st[STAT_KL];
        *ce_sum += st[STAT_CE_SPLICED];
    };
    sae_prepare_weights(e, s);
    const size_t pitch = (size_t)D * sizeof(floatX), w = sizeof(floatX);
    for (int row = 0; row < eval_rows; row += e->B) {
        int B = std::min(e->B, eval_rows - row), N = B * T;
        dataloader_get_rows(val, row, B, tokens.data());
        upload_rows(e, tokens.data(), B);
        clean_forward(e, B, true, -1);
        sae_forward(e, s, B);
        spliced_kl_ce(B, &ab.kl, &ab.ce);
        floatX* column = (floatX*)act.rows;
        for (int j = 0; j < F; j++) {
            floatX* c_f = act.c + ab.features[j];
            cudaCheck(cudaMemcpy2DAsync(column, w, c_f, pitch, w, N, cudaMemcpyDeviceToDevice, main_stream));
            cudaCheck(cudaMemset2DAsync(c_f, pitch, 0, w, N, main_stream));
            sae_decoder_forward(act.x_hat, act.c, s->dev.W_dec_norm, s->dev.b_dec_x, N, e->C, D, main_stream);
            cudaCheck(cudaMemcpy2DAsync(c_f, pitch, column, w, w, N, cudaMemcpyDeviceToDevice, main_stream));
            spliced_kl_ce(B, &kl[j], &ce[j]);
        }
        ab.tokens += N;
    }
    ablation_finish(&ab, kl, ce, eval_rows, T);
    return ab;
}

// ----------------------------------------------------------------------------
// --dump-features (llmc/feature_dump.cuh): the CPU trainer's passes on the device, the same
// results from the same activations, one SAE after another in the one device dump state (sized
// for the largest SAE; the dump runs once, after training, so its clean passes are not shared).
// Pass 1 over the first val tokens: firing counts, histograms, top-K; pass 2 over the same tokens:
// band examples and every example's context (only the encoder runs: c is all the dump reads);
// then the logit effects, in fp32 whatever --precision, from the fp32 master W_dec and the host's
// fp32 W_U, uploaded into the staging buffer (sized for the largest GPT-2 tensor, wte's V*C included)

template <typename floatX>
void dump_features(Engine<floatX>* e, SaeRun<floatX>* s, const DataLoader* val) {
    NvtxRange r("dump_features");
    double t0 = now_seconds();
    FeatureDumpDevice g = e->dump;
    g.D = s->D;  // every (D,...) buffer holds D_max >= D rows
    const TrainConfig& cfg = s->cfg;
    const int T = e->T, C = e->C;
    FeatureDump fd;
    feature_dump_begin(&fd, cfg, s->D);
    feature_dump_reset_gpu(g, fd, main_stream);
    sae_prepare_weights(e, s);
    auto encode = [&](const int* tokens, int B) {
        upload_rows(e, tokens, B);
        clean_forward(e, B, false, -1);
        sae_encoder_forward(e->acts.c, sae_input(e, s->L), s->dev.W_enc_x, s->dev.b_enc_x, B * T, C, s->D, main_stream);
    };
    long long n_tokens = feature_dump_stream(val, cfg, e->B, [&](const int* tokens, int B, long long first_pos) {
        encode(tokens, B);
        feature_dump_add_gpu(g, e->acts.c, B * T, first_pos, main_stream);
    });
    feature_dump_stream(val, cfg, e->B, [&](const int* tokens, int B, long long first_pos) {
        encode(tokens, B);
        feature_dump_add_bands_gpu(g, e->acts.c, B * T, first_pos, main_stream);
        feature_dump_add_contexts_gpu(g, e->acts.c, B * T, T, first_pos, main_stream);
    });
    const GPT2& m = e->host_model;
    std::vector<float> mean = m.unembed_mean;
    if (mean.empty()) mean.assign(C, 0.0f);  // W_U as loaded: nothing to add back
    cudaCheck(cudaMemcpy(e->staging, m.params.wte_unembed, (size_t)e->V * C * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(g.gamma, m.params.lnfw, C * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(g.unembed_mean, mean.data(), C * sizeof(float), cudaMemcpyHostToDevice));
    feature_dump_logit_effects_gpu(g, s->dev.W_dec, g.gamma, e->staging, g.unembed_mean, main_stream);
    feature_dump_download(&fd, g, n_tokens);
    feature_dump_finish(&fd, val, cfg, e->host_model.source, now_seconds() - t0);
}

// ----------------------------------------------------------------------------
// checkpointing: an SAE's device state <-> its host copies (s->sae, adam_m, adam_v, fired), which sae_io.h writes

template <typename floatX>
void download_state(SaeRun<floatX>* s) {
    size_t P = s->sae.num_parameters;
    cudaCheck(cudaMemcpy(s->sae.memory.data(), s->dev.params, P * sizeof(float), cudaMemcpyDeviceToHost));
    s->adam_m.resize(P); s->adam_v.resize(P);
    cudaCheck(cudaMemcpy(s->adam_m.data(), s->dev.adam_m, P * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(s->adam_v.data(), s->dev.adam_v, P * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<unsigned int> f(s->D);
    cudaCheck(cudaMemcpy(f.data(), s->stats.fired_train, s->D * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    s->fired.resize(s->D);
    for (int i = 0; i < s->D; i++) s->fired[i] = f[i] ? 1.0f : 0.0f;
}

template <typename floatX>
void upload_state(SaeRun<floatX>* s) {
    size_t P = s->sae.num_parameters;
    cudaCheck(cudaMemcpy(s->dev.params, s->sae.memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    sae_copy_weights(s);
    cudaCheck(cudaMemcpy(s->dev.adam_m, s->adam_m.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(s->dev.adam_v, s->adam_v.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    std::vector<unsigned int> f(s->D);
    for (int i = 0; i < s->D; i++) f[i] = s->fired[i] > 0.0f ? 1u : 0u;
    cudaCheck(cudaMemcpy(s->stats.fired_train, f.data(), s->D * sizeof(unsigned int), cudaMemcpyHostToDevice));
}

// ----------------------------------------------------------------------------
// the training loop. The host waits for the device once per update, to read back every SAE's
// stats (and alive counts) together; the token uploads in between do not wait.

// the next micro-batch's tokens to the device without a host sync: the loader fills one of two
// pinned buffers, which is copied on main_stream; a buffer is refilled only once its previous
// copy has run (in the loop that wait never blocks: the update's readback came between)
template <typename floatX>
void upload_next_batch(Engine<floatX>* e, DataLoader* loader) {
    const int k = (int)(e->token_uploads++ % 2);
    cudaCheck(cudaEventSynchronize(e->tokens_copied[k]));
    dataloader_next_batch(loader, e->tokens_pinned[k]);
    cudaCheck(cudaMemcpyAsync(e->acts.tokens, e->tokens_pinned[k], (size_t)e->B * e->T * sizeof(int), cudaMemcpyHostToDevice, main_stream));
    cudaCheck(cudaEventRecord(e->tokens_copied[k], main_stream));
}

// the time per step after warm-up, the host's share of it, and the phase breakdown (summed over a
// sweep's SAEs). enqueue_seconds: the host's time from the step's start to its one wait, in which
// it issues the whole update; the GPU waits on the host only where that nears the step's time
// (--cuda-graph on then pays; otherwise a graph saves only the gaps between kernels).
template <typename floatX>
void print_timing(Engine<floatX>* e, std::vector<double>& step_seconds, std::vector<double>& enqueue_seconds) {
    const TrainConfig& cfg = e->cfg;
    double sum = 0, total_s = 0;
    for (int p = 0; p < NUM_PHASES; p++) sum += e->phases.ms[p];
    for (double s : step_seconds) total_s += s;
    size_t n = step_seconds.size();
    std::sort(step_seconds.begin(), step_seconds.end());
    double median = step_seconds[n / 2], tps = (double)cfg.batch * cfg.seq_len * cfg.grad_accum / median;
    char sae_tps[64] = "";
    if (e->phases.saes > 1) snprintf(sae_tps, sizeof(sae_tps), ", %.0f SAE-tokens/s with %d SAEs", tps * e->phases.saes, e->phases.saes);
    printf("---- time per step over %zu steps after warm-up: median %.2f ms wall (%.0f tokens/s%s), mean %.2f ms ----\n", n,
           1000.0 * median, tps, sae_tps, 1000.0 * total_s / n);
    std::sort(enqueue_seconds.begin(), enqueue_seconds.end());
    printf("  host: median %.2f ms to issue an update before its one wait\n", 1000.0 * enqueue_seconds[n / 2]);
    if (e->graphs) printf("  (micro-batches ran as CUDA graphs, whose phases are not timed: --cuda-graph off gives the table)\n");
    else
        for (int p = 0; p < NUM_PHASES; p++)
            printf("  %-22s %8.3f ms  (%4.1f%%)\n", PHASE_NAMES[p], e->phases.ms[p] / n, 100.0 * e->phases.ms[p] / sum);
    size_t free_b, total_b;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    printf("  device memory in use: %.2f GiB of %.2f GiB\n", (total_b - free_b) / 1073741824.0, total_b / 1073741824.0);
}

// one run of the SAEs cfgs (one, or a --sweep's), raw: the flags as given
template <typename floatX>
int run(const TrainConfig& raw, const std::vector<TrainConfig>& cfgs) {
    const TrainConfig& cfg = cfgs[0];  // what the SAEs share
    Engine<floatX> e;
    load_model(&e.host_model, cfg);
    const GPT2Config& mc = e.host_model.config;
    std::vector<SaeRun<floatX>> saes(cfgs.size());
    std::vector<int> d_sae;
    double host_bytes = 0.0;
    for (size_t i = 0; i < cfgs.size(); i++) {
        saes[i].cfg = cfgs[i];
        saes[i].D = planned_d_sae(cfgs[i], mc);
        d_sae.push_back(saes[i].D);
        host_bytes += 3.0 * sizeof(float) * sae_num_parameters(mc.channels, saes[i].D);  // parameters and Adam moments
    }
    gpu_check_shapes(cfg, mc, *std::max_element(d_sae.begin(), d_sae.end()));
    RunData data;
    open_loaders(&data, cfg, mc.vocab_size);
    engine_init(&e, saes, cfg.batch);
    check_host_memory(host_bytes, cfgs.size() > 1 ? "the sweep's SAEs with their Adam moments" : "the SAE with its Adam moments");
    for (SaeRun<floatX>& s : saes) {
        load_sae(&s.sae, s.cfg, e.C);
        s.adam_m.assign(s.sae.num_parameters, 0.0f);
        s.adam_v.assign(s.sae.num_parameters, 0.0f);
        sae_device_init(&s);
    }
    if (!raw.sweep.empty()) print_sweep(cfgs, d_sae);
    print_config(cfg, e.C, saes[0].D);

    std::vector<RunState*> runs = runs_begin(saes, raw, d_sae, &data, e.host_model.source);
    if (!cfg.resume.empty())
        for (SaeRun<floatX>& s : saes) upload_state(&s);
    auto run_eval = [&](long long step) {
        if (!data.eval_rows) return;
        std::vector<EvalMetrics> ms = evaluate(&e, saes, &data.val, data.eval_rows);
        for (size_t i = 0; i < saes.size(); i++) report_eval(&saes[i].run, saes[i].cfg, step, ms[i]);
    };
    auto save = [&](long long step) {
        for (SaeRun<floatX>& s : saes) download_state(&s);
        save_runs(saes, raw.out, step, data);
    };
    if (saes[0].run.ts.step == 0 || cfg.eval_only) run_eval(0);
    long long step = saes[0].run.ts.step;
    e.capture_from = saes[0].run.start_step + 1;  // the first update makes the matmul plans and loads the kernels uncaptured
    const long long update_tokens = (long long)cfg.batch * cfg.seq_len * cfg.grad_accum;
    std::vector<double> step_seconds, enqueue_seconds;  // after warm-up, for the medians
    while (keep_training(saes[0].run.sched, cfg, step)) {
        NvtxRange r("step");
        double t0 = now_seconds();
        double lr = lr_at_step(cfg.lr, step, saes[0].run.sched.W, saes[0].run.sched.S, cfg.min_lr_factor);
        for (SaeRun<floatX>& s : saes) {
            cudaCheck(cudaMemsetAsync(s.stats.sums, 0, (NUM_STATS_FIXED + s.K) * sizeof(float), main_stream));
            sae_prepare_weights(&e, &s);
            s.sparse_now = sae_runs_sparse(s, step);
        }
        for (int a = 0; a < cfg.grad_accum; a++) {
            upload_next_batch(&e, &data.train);
            micro_batch(&e, saes, a, step >= e.capture_from);
        }
        for (size_t i = 0; i < saes.size(); i++) {
            auto t = time_phase(&e, 0, (int)i, PH_UPDATE);
            sae_finish_grads(&e, &saes[i]);
            update(&saes[i], lr, step + 1);
        }
        step++;
        // the update's one host sync: every SAE's stats, and where an alive window ends its alive
        // count (its fired flags then cleared for the next window), come back together
        std::vector<char> window_ends(saes.size());
        for (size_t i = 0, at = 0; i < saes.size(); i++) {
            SaeRun<floatX>& s = saes[i];
            const size_t n = NUM_STATS_FIXED + s.K;
            cudaCheck(cudaMemcpyAsync(e.stats_pinned + at, s.stats.sums, n * sizeof(float), cudaMemcpyDeviceToHost, main_stream));
            at += n;
            s.run.ts.alive_tokens += update_tokens;
            window_ends[i] = s.run.ts.alive_tokens >= cfg.alive_window;
            if (window_ends[i]) {
                sae_count_alive(s.stats.alive_count, s.stats.fired_train, s.D, main_stream);
                cudaCheck(cudaMemcpyAsync(e.alive_pinned + i, s.stats.alive_count, sizeof(int), cudaMemcpyDeviceToHost, main_stream));
                cudaCheck(cudaMemsetAsync(s.stats.fired_train, 0, s.D * sizeof(unsigned int), main_stream));
            }
        }
        const double enqueued = now_seconds() - t0;
        cudaCheck(cudaStreamSynchronize(main_stream));
        std::vector<StepLog> sls;
        for (size_t i = 0, at = 0; i < saes.size(); i++) {
            SaeRun<floatX>& s = saes[i];
            const size_t n = NUM_STATS_FIXED + s.K;
            StepLog sl = step_terms(&s, std::vector<float>(e.stats_pinned + at, e.stats_pinned + at + n));
            at += n;
            die_context() = sweep_context(s.cfg);
            check_finite(sl.loss, sl.grad_norm, step);
            die_context().clear();
            if (window_ends[i]) {
                sl.alive = s.run.ts.last_alive = e.alive_pinned[i];
                s.run.ts.alive_tokens = 0;
            }
            sl.step = step;
            sl.lr = lr;
            sls.push_back(sl);
            if (sae_auto_switch(&s, step, sl.l0) && e.graphs) {  // the next update runs uncaptured, the one after captures anew
                for (cudaGraphExec_t& g : e.micro_graphs)
                    if (g) cudaCheck(cudaGraphExecDestroy(g));
                std::fill(e.micro_graphs.begin(), e.micro_graphs.end(), nullptr);
                e.capture_from = step + 1;
            }
        }
        double dt = now_seconds() - t0;
        phase_times_collect(&e);
        if (step - saes[0].run.start_step > 3) {  // after warm-up
            step_seconds.push_back(dt);
            enqueue_seconds.push_back(enqueued);
        } else {
            std::fill(e.phases.ms, e.phases.ms + NUM_PHASES, 0.0);
        }
        for (StepLog& sl : sls) sl.tokens_per_s = update_tokens / dt;
        step_end(runs, cfg, sls, save, run_eval);
    }
    if (!step_seconds.empty()) print_timing(&e, step_seconds, enqueue_seconds);
    run_end(runs, cfg, &data, step, save, run_eval, [&] {
        for (SaeRun<floatX>& s : saes) {
            dump_features(&e, &s, &data.val);
            if (data.eval_rows && !s.run.sparsity.empty())
                ablation_write(ablation_effects(&e, &s, &data.val, data.eval_rows), s.cfg.dump_features);
        }
    });
    engine_free(&e);
    gpt2_free(&e.host_model);
    return 0;
}

// picks the device, then runs in the chosen precision
int train_main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // step lines appear as they happen, also in a log file
    TrainConfig raw = parse_flags(argc, argv, true);
    if (raw.attention == "flash" && raw.precision == "fp32")
        die("--attention flash is for --precision bf16: fp32 is the reference precision and keeps the materialized attention");
    apply_demo_presets(raw, true);
    std::vector<TrainConfig> cfgs = run_configs(raw, true);  // one per SAE
    int ndev = 0;
    cudaError_t err = cudaGetDeviceCount(&ndev);
    if (err != cudaSuccess || ndev == 0) die("no CUDA device available (%s): use train_gpt2_sae_cpu on machines without a GPU", cudaGetErrorString(err));
    if (raw.device >= ndev) die("--device %d is out of range: %d CUDA device(s) present", raw.device, ndev);
    cudaCheck(cudaSetDevice(raw.device));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, raw.device));
    printf("device %d: %s, %d SMs, %.1f GiB\n", raw.device, prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    return raw.precision == "fp32" ? run<float>(raw, cfgs) : run<bf16>(raw, cfgs);
}

#ifndef TESTING
int main(int argc, char** argv) { return run_main(train_main, argc, argv); }
#endif
