/*
train_gpt2_sae: the GPU trainer of end-to-end sparse autoencoders on a frozen GPT-2.

Same flags, files and log as train_gpt2_sae_cpu (the fp32 oracle), plus --precision fp32|bf16
(default bf16) and --device N. The math is docs/SPEC.md; the CPU trainer holds the same
functions in plain loops. Only the work e2e needs runs: blocks below the SAE layer once per
batch for both branches, the clean branch above it without stored activations, the backward
through the frozen blocks and LM head for activation gradients only, and no gradient for the
SAE input. GPT-2 weights and activations are floatX (float or bf16) with fp32 accumulation;
the SAE master weights, gradients and Adam state are always fp32.

Build and run:
    make train_gpt2_sae
    ./train_gpt2_sae --help
Every phase sits in an NVTX range, so an Nsight Systems timeline reads like this file.
Left out: several SAEs at once, multi-GPU, sparse SAE backward (the dense one is exact).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <string>
#include <vector>
#include <type_traits>
#include <algorithm>
#include "llmc/utils.h"          // defines: die, fopenCheck, mallocCheck
#include "llmc/gpt2_load.h"      // defines: GPT2, gpt2_load (HF safetensors / llm.c .bin, centring)
#include "llmc/dataloader.h"     // defines: DataLoader, dataloader_init/next_batch/get_rows
#include "llmc/schedule.h"       // defines: lr_at_step
#include "llmc/train_config.h"   // defines: TrainConfig, parse_args, apply_demo_presets, check_config_against_model
#include "llmc/sae_io.h"         // defines: SAE (host), sae_init_random, sae_export, sae_load, train_state_save/load
#include "llmc/logger.h"         // defines: Logger, StepLog, EvalMetrics, print_eval
#include "llmc/cuda_common.cuh"  // defines: cudaCheck, cublasCheck, bf16, NvtxRange, deterministic_sum
#include "llmc/encoder.cuh"      // defines: encoder_forward
#include "llmc/layernorm.cuh"    // defines: layernorm_forward, layernorm_backward_dinp
#include "llmc/matmul.cuh"       // defines: matmul_init, matmul_cublaslt, matmul_forward, matmul_backward_dinp
#include "llmc/attention.cuh"    // defines: attention_forward, attention_backward
#include "llmc/gelu.cuh"         // defines: gelu_forward, gelu_backward_inplace
#include "llmc/residual.cuh"     // defines: residual_forward, add_inplace, cast_copy
#include "llmc/sae.cuh"          // defines: sae_decoder_normalize(_backward), sae_l1_relu_backward, bias_grad_colsum, sae_sparsity_l0, sae_count_alive
#include "llmc/kl.cuh"           // defines: kl_fused_forward_backward, ce_forward, argmax_agree
#include "llmc/mse.cuh"          // defines: mse_forward_backward
#include "llmc/adamw.cuh"        // defines: global_norm_squared, adamw_scalars, adamw_update
#include "llmc/eval.cuh"         // defines: explained_variance_rows
#include "llmc/feature_dump.h"   // defines: FeatureDump (host), feature_dump_write
#include "llmc/feature_dump.cuh" // defines: feature_dump_add_gpu, feature_dump_reset_gpu, feature_dump_download

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
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        *ptrs[i] = a->take<floatX>(i == 1 ? (size_t)d->Vp * c.channels : host->param_sizes[i]);
}

template <typename floatX>
void gpt2_device_upload(GPT2Device<floatX>* d, const GPT2* host, float* staging) {
    floatX* ptrs[NUM_PARAMETER_TENSORS] = {d->wte, d->wte_unembed, d->wpe, d->ln1w, d->ln1b, d->qkvw, d->qkvb, d->attprojw,
        d->attprojb, d->ln2w, d->ln2b, d->fcw, d->fcb, d->fcprojw, d->fcprojb, d->lnfw, d->lnfb};
    const float* src = host->params_memory;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        size_t n = host->param_sizes[i];
        cudaCheck(cudaMemcpy(staging, src, n * sizeof(float), cudaMemcpyHostToDevice));
        cast_copy(ptrs[i], staging, n, 0);
        src += n;
    }
    size_t pad = (size_t)(d->Vp - d->config.vocab_size) * d->config.channels;
    cudaCheck(cudaMemset(d->wte_unembed + (size_t)d->config.vocab_size * d->config.channels, 0, pad * sizeof(floatX)));
    cudaCheck(cudaDeviceSynchronize());
}

// ----------------------------------------------------------------------------
// activations

// what one block keeps for its backward pass (qkv's head-split copy and the attention probabilities included)
template <typename floatX>
struct BlockActs {
    floatX *inp, *ln1, *qkv, *qkvr, *atty, *att, *res2, *ln2, *fch, *fch_gelu;
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;
};

template <typename floatX>
void block_acts_carve(BlockActs<floatX>* b, DeviceArena* a, int B, int T, int C, int NH) {
    size_t N = (size_t)B * T;
    b->inp = a->take<floatX>(N * C); b->ln1 = a->take<floatX>(N * C); b->qkv = a->take<floatX>(N * 3 * C);
    b->qkvr = a->take<floatX>(N * 3 * C); b->atty = a->take<floatX>(N * C); b->att = a->take<floatX>((size_t)B * NH * T * T);
    b->res2 = a->take<floatX>(N * C); b->ln2 = a->take<floatX>(N * C); b->fch = a->take<floatX>(N * 4 * C);
    b->fch_gelu = a->take<floatX>(N * 4 * C);
    b->ln1_mean = a->take<float>(N); b->ln1_rstd = a->take<float>(N); b->ln2_mean = a->take<float>(N); b->ln2_rstd = a->take<float>(N);
}

// scratch of the block backward
template <typename floatX>
struct BlockGrads {
    floatX *dres2, *dfch, *dln, *datty, *dqkv, *dqkvr, *datt, *scratch;
};

// device scalars accumulated over one update's micro-batches, read back once per step
enum StatSlot { STAT_L1 = 0, STAT_L0, STAT_MSE, STAT_KL, STAT_GNORM_SQ, STAT_CE_CLEAN, STAT_CE_SPLICED, STAT_EV, STAT_DS, NUM_STATS_FIXED };

// phases timed with CUDA events (no host sync: read after the step's one sync)
enum Phase { PH_LOWER = 0, PH_SAE_FWD, PH_CLEAN, PH_SPLICED, PH_KL, PH_BACKWARD, PH_SAE_BWD, PH_UPDATE, NUM_PHASES };
static const char* PHASE_NAMES[NUM_PHASES] = {"blocks < L", "SAE forward", "clean blocks+head", "spliced blocks+head",
                                              "KL fused", "backward blocks+head", "SAE backward", "clip + AdamW"};

template <typename floatX>
struct Engine {
    TrainConfig cfg;
    GPT2 host_model;
    GPT2Device<floatX> model;
    SAE host_sae;                 // host copy, for init / export / state
    int B = 0, T = 0, C = 0, V = 0, Vp = 0, NH = 0, D = 0, L = 0, n_layer = 0, K = 0;
    DeviceArena arena;
    size_t bytes_weights = 0, bytes_sae = 0, bytes_acts = 0;
    // SAE, fp32 masters: one block each (W_enc, b_enc, W_dec, b_dec as in SAE)
    float *params, *grads, *adam_m, *adam_v;
    float *W_enc, *b_enc, *W_dec, *b_dec, *dW_enc, *db_enc, *dW_dec, *db_dec;
    float *dW_dec_norm, *inv_norm;        // (D,C) accumulated over micro-batches, (D)
    floatX *W_enc_x, *b_enc_x, *W_dec_norm, *b_dec_x;  // floatX copies the matmuls read (aliases in fp32)
    // activations
    int* tokens;                          // (B,T)
    int* targets;                         // (B,T) next token within the row, -1 at the end
    floatX *x, *x_hat, *c, *dc, *resid, *dresid, *dx_hat_local, *lnf, *dlnf, *logits_clean, *logits_spliced;
    float *lnf_mean, *lnf_rstd, *rows;    // rows (N): per-row KL / CE / EV
    float* xsum;                          // (C) eval scratch
    std::vector<floatX*> ds_clean_v;      // K device pointers (N,C): clean resid_pre_k
    BlockActs<floatX> scratch_acts;
    std::vector<BlockActs<floatX>> spliced_acts;
    BlockGrads<floatX> bg;
    float* stats;                         // device (NUM_STATS_FIXED + K)
    unsigned int *fired_train, *fired_eval;  // (D)
    unsigned long long* fire_count_eval;  // (D) eval tokens each feature fired on (sparsity.safetensors)
    int *alive_count, *agree_count;
    unsigned long long* dump_fire_count;  // --dump-features state: (D), (D,K), (D,K); null without the flag
    float* dump_top_values;
    long long* dump_top_pos;
    float* staging;                       // fp32 upload buffer
    cudaEvent_t ev[NUM_PHASES + 1];
    bool time_phases = true;
};

template <typename floatX>
void engine_carve(Engine<floatX>* e, DeviceArena* a) {
    size_t N = (size_t)e->B * e->T, C = e->C, D = e->D;
    size_t start = a->used;
    gpt2_device_carve(&e->model, &e->host_model, a);
    e->bytes_weights = a->used - start;
    start = a->used;
    size_t P = e->host_sae.num_parameters;
    e->params = a->take<float>(P); e->grads = a->take<float>(P); e->adam_m = a->take<float>(P); e->adam_v = a->take<float>(P);
    e->dW_dec_norm = a->take<float>(D * C); e->inv_norm = a->take<float>(D);
    bool is_fp32 = std::is_same<floatX, float>::value;
    e->W_enc_x = is_fp32 ? nullptr : a->take<floatX>(C * D);
    e->b_enc_x = is_fp32 ? nullptr : a->take<floatX>(D);
    e->b_dec_x = is_fp32 ? nullptr : a->take<floatX>(C);
    e->W_dec_norm = a->take<floatX>(D * C);
    e->bytes_sae = a->used - start;
    start = a->used;
    e->tokens = a->take<int>(N); e->targets = a->take<int>(N);
    e->x = a->take<floatX>(N * C); e->x_hat = a->take<floatX>(N * C); e->c = a->take<floatX>(N * D); e->dc = a->take<floatX>(N * D);
    e->resid = a->take<floatX>(N * C); e->dresid = a->take<floatX>(N * C); e->dx_hat_local = a->take<floatX>(N * C);
    e->lnf = a->take<floatX>(N * C); e->dlnf = a->take<floatX>(N * C);
    e->logits_clean = a->take<floatX>(N * e->Vp); e->logits_spliced = a->take<floatX>(N * e->Vp);
    e->lnf_mean = a->take<float>(N); e->lnf_rstd = a->take<float>(N); e->rows = a->take<float>(N);
    e->xsum = a->take<float>(C);
    e->ds_clean_v.assign(e->K, nullptr);
    for (int k = 0; k < e->K; k++) e->ds_clean_v[k] = a->take<floatX>(N * C);
    block_acts_carve(&e->scratch_acts, a, e->B, e->T, e->C, e->NH);
    e->spliced_acts.resize(e->n_layer - e->L);
    for (auto& b : e->spliced_acts) block_acts_carve(&b, a, e->B, e->T, e->C, e->NH);
    e->bg.dres2 = a->take<floatX>(N * C); e->bg.dfch = a->take<floatX>(N * 4 * C); e->bg.dln = a->take<floatX>(N * C);
    e->bg.datty = a->take<floatX>(N * C); e->bg.dqkv = a->take<floatX>(N * 3 * C); e->bg.dqkvr = a->take<floatX>(N * 3 * C);
    e->bg.datt = a->take<floatX>((size_t)e->B * e->NH * e->T * e->T); e->bg.scratch = a->take<floatX>(N * C);
    e->stats = a->take<float>(NUM_STATS_FIXED + e->K);
    e->fired_train = a->take<unsigned int>(D); e->fired_eval = a->take<unsigned int>(D);
    e->fire_count_eval = a->take<unsigned long long>(D);
    e->alive_count = a->take<int>(1); e->agree_count = a->take<int>(1);
    size_t K = e->cfg.dump_features.empty() ? 0 : (size_t)e->cfg.dump_topk;
    e->dump_fire_count = K ? a->take<unsigned long long>(D) : nullptr;
    e->dump_top_values = K ? a->take<float>(D * K) : nullptr;
    e->dump_top_pos = K ? a->take<long long>(D * K) : nullptr;
    size_t staging = P;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) staging = std::max(staging, e->host_model.param_sizes[i]);
    e->staging = a->take<float>(staging);
    e->bytes_acts = a->used - start;
    if (!a->planning) {
        e->W_enc = e->params; e->b_enc = e->W_enc + e->host_sae.sizes[0]; e->W_dec = e->b_enc + e->host_sae.sizes[1]; e->b_dec = e->W_dec + e->host_sae.sizes[2];
        e->dW_enc = e->grads; e->db_enc = e->dW_enc + e->host_sae.sizes[0]; e->dW_dec = e->db_enc + e->host_sae.sizes[1]; e->db_dec = e->dW_dec + e->host_sae.sizes[2];
        if (is_fp32) {  // fp32: the matmuls read the masters directly
            e->W_enc_x = (floatX*)e->W_enc; e->b_enc_x = (floatX*)e->b_enc; e->b_dec_x = (floatX*)e->b_dec;
        }
    }
}

// allocates everything in one cudaMalloc and prints the plan; host_model and host_sae must be loaded
template <typename floatX>
void engine_init(Engine<floatX>* e, const TrainConfig& cfg, int B) {
    e->cfg = cfg;
    const GPT2Config& mc = e->host_model.config;
    e->B = B; e->T = cfg.seq_len; e->C = mc.channels; e->V = mc.vocab_size; e->NH = mc.num_heads;
    e->n_layer = mc.num_layers; e->L = cfg.layer; e->D = e->host_sae.D; e->K = std::max(0, e->n_layer - 1 - e->L);
    e->Vp = (e->V + 127) / 128 * 128;
    DeviceArena plan;
    engine_carve(e, &plan);
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    printf("device memory plan (%s): GPT-2 weights %.1f MiB | SAE params+grads+Adam+copies %.1f MiB | activations %.1f MiB | "
           "total %.2f GiB of %.2f GiB free\n", std::is_same<floatX, float>::value ? "fp32" : "bf16",
           e->bytes_weights / 1048576.0, e->bytes_sae / 1048576.0, e->bytes_acts / 1048576.0, plan.used / 1073741824.0, free_b / 1073741824.0);
    if (plan.used + (size_t)(512u << 20) > free_b)
        die("the run needs %.2f GiB of device memory but only %.2f GiB is free: lower --batch, --seq-len or --dict-size",
            plan.used / 1073741824.0, free_b / 1073741824.0);
    e->arena.planning = false;
    cudaCheck(cudaMalloc(&e->arena.base, plan.used));
    engine_carve(e, &e->arena);
    matmul_init();
    gpt2_device_upload(&e->model, &e->host_model, e->staging);
    cudaCheck(cudaMemcpy(e->params, e->host_sae.memory.data(), e->host_sae.num_parameters * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(e->adam_m, 0, e->host_sae.num_parameters * sizeof(float)));
    cudaCheck(cudaMemset(e->adam_v, 0, e->host_sae.num_parameters * sizeof(float)));
    cudaCheck(cudaMemset(e->fired_train, 0, e->D * sizeof(unsigned int)));
    for (int i = 0; i <= NUM_PHASES; i++) cudaCheck(cudaEventCreate(&e->ev[i]));
}

template <typename floatX>
void engine_free(Engine<floatX>* e) {
    for (int i = 0; i <= NUM_PHASES; i++) cudaCheck(cudaEventDestroy(e->ev[i]));
    matmul_destroy();
    cudaCheck(cudaFree(e->arena.base));
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
    layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, a->inp, w.ln1w + l * C, w.ln1b + l * C, N, C, 0);
    matmul_forward(a->qkv, a->ln1, w.qkvw + (size_t)l * 3 * C * C, w.qkvb + l * 3 * C, N, C, 3 * C, 0);
    attention_forward(a->atty, a->qkvr, a->att, a->res2, a->qkv, B, e->T, C, e->NH, 0);  // res2: scratch until written below
    // res2 = inp + attproj(atty): the residual add rides on the matmul's accumulate
    cudaCheck(cudaMemcpyAsync(a->res2, a->inp, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    matmul_cublaslt(a->res2, a->atty, w.attprojw + (size_t)l * C * C, w.attprojb + l * C, N, C, C, false, true,
                    cuda_dtype<floatX>(), cuda_dtype<floatX>(), true, CUBLASLT_EPILOGUE_BIAS, nullptr, 0);
    layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, w.ln2w + l * C, w.ln2b + l * C, N, C, 0);
    matmul_forward(a->fch_gelu, a->ln2, w.fcw + (size_t)l * 4 * C * C, w.fcb + l * 4 * C, N, C, 4 * C, 0, a->fch);
    cudaCheck(cudaMemcpyAsync(out, a->res2, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    matmul_cublaslt(out, a->fch_gelu, w.fcprojw + (size_t)l * C * 4 * C, w.fcprojb + l * C, N, C, 4 * C, false, true,
                    cuda_dtype<floatX>(), cuda_dtype<floatX>(), true, CUBLASLT_EPILOGUE_BIAS, nullptr, 0);
}

// final LayerNorm and the LM head on the *uncentred* wte (SPEC §2); logits (N,Vp)
template <typename floatX>
void lm_head_forward(Engine<floatX>* e, floatX* logits, const floatX* resid, int N) {
    NvtxRange r("lm_head_forward");
    layernorm_forward(e->lnf, e->lnf_mean, e->lnf_rstd, resid, e->model.lnfw, e->model.lnfb, N, e->C, 0);
    matmul_forward(logits, e->lnf, e->model.wte_unembed, (const floatX*)nullptr, N, e->C, e->Vp, 0);
}

template <typename floatX>
void phase_mark(Engine<floatX>* e, int phase) {
    if (e->time_phases) cudaCheck(cudaEventRecord(e->ev[phase], 0));
}

// phase times are kept per micro-batch as (start, end) event pairs; see micro_step
struct PhaseTimes { double ms[NUM_PHASES] = {0}; };

template <typename floatX>
void forward_to_sae(Engine<floatX>* e, int B) {
    NvtxRange r("blocks_below_L");
    encoder_forward(e->x, e->tokens, e->model.wte, e->model.wpe, B, e->T, e->C, 0);
    for (int l = 0; l < e->L; l++) block_forward(e, l, &e->scratch_acts, e->x, e->x, B);
}

// refreshes the floatX copies of the SAE weights and the normalised decoder (once per update)
template <typename floatX>
void sae_prepare_weights(Engine<floatX>* e) {
    NvtxRange r("sae_prepare_weights");
    sae_decoder_normalize(e->W_dec_norm, e->inv_norm, e->W_dec, e->D, e->C, 0);
    if (!std::is_same<floatX, float>::value) {
        cast_copy(e->W_enc_x, e->W_enc, (size_t)e->C * e->D, 0);
        cast_copy(e->b_enc_x, e->b_enc, (size_t)e->D, 0);
        cast_copy(e->b_dec_x, e->b_dec, (size_t)e->C, 0);
    }
}

// c = relu(x W_enc + b_enc) (N,D), x_hat = c W_dec_norm + b_dec (N,C)
template <typename floatX>
void sae_forward(Engine<floatX>* e, int B) {
    NvtxRange r("sae_forward");
    int N = B * e->T;
    cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt(e->c, e->x, e->W_enc_x, e->b_enc_x, N, e->D, e->C, false, false, t, t, false, CUBLASLT_EPILOGUE_RELU_BIAS, nullptr, 0);
    matmul_cublaslt(e->x_hat, e->c, e->W_dec_norm, e->b_dec_x, N, e->C, e->D, false, false, t, t, false, CUBLASLT_EPILOGUE_BIAS, nullptr, 0);
}

// clean run from x to logits_clean without stored activations, keeping the clean resid_pre_k
template <typename floatX>
void clean_forward(Engine<floatX>* e, int B) {
    NvtxRange r("clean_forward");
    int N = B * e->T;
    size_t NC = (size_t)N * e->C;
    cudaCheck(cudaMemcpyAsync(e->resid, e->x, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    for (int l = e->L; l < e->n_layer; l++) {
        if (l > e->L) cudaCheck(cudaMemcpyAsync(e->ds_clean_v[l - e->L - 1], e->resid, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
        block_forward(e, l, &e->scratch_acts, e->resid, e->resid, B);
    }
    lm_head_forward(e, e->logits_clean, e->resid, N);
}

// spliced run from x_hat to logits_spliced; block l's input (resid_pre_l) stays in spliced_acts[l-L].inp
template <typename floatX>
void spliced_forward(Engine<floatX>* e, int B) {
    NvtxRange r("spliced_forward");
    int N = B * e->T;
    const floatX* inp = e->x_hat;
    for (int l = e->L; l < e->n_layer; l++) {
        block_forward(e, l, &e->spliced_acts[l - e->L], inp, e->resid, B);
        inp = e->resid;
    }
    lm_head_forward(e, e->logits_spliced, e->resid, N);
}

// ----------------------------------------------------------------------------
// backward: activation gradients through frozen GPT-2, then the SAE's parameter gradients

template <typename floatX>
void block_backward(Engine<floatX>* e, int l, const BlockActs<floatX>* a, floatX* dresid, int B) {
    // dresid (B,T,C): gradient wrt the block output in, wrt the block input out
    NvtxRange r("block_backward");
    const GPT2Device<floatX>& w = e->model;
    BlockGrads<floatX>& g = e->bg;
    int C = e->C, N = B * e->T;
    size_t NC = (size_t)N * C;
    cudaCheck(cudaMemcpyAsync(g.dres2, dresid, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    // MLP: out = res2 + fcproj(gelu(fc(ln2(res2))))
    matmul_backward_dinp(g.dfch, g.dres2, w.fcprojw + (size_t)l * C * 4 * C, N, 4 * C, C, false, 0);
    gelu_backward_inplace(g.dfch, a->fch, (size_t)N * 4 * C, 0);
    matmul_backward_dinp(g.dln, g.dfch, w.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, false, 0);
    layernorm_backward_dinp(g.dres2, g.dln, a->res2, w.ln2w + l * C, a->ln2_mean, a->ln2_rstd, N, C, true, 0);
    // attention: res2 = inp + attproj(attn(qkv(ln1(inp))))
    matmul_backward_dinp(g.datty, g.dres2, w.attprojw + (size_t)l * C * C, N, C, C, false, 0);
    attention_backward(g.dqkv, g.dqkvr, g.datt, g.scratch, g.datty, a->qkvr, a->att, B, e->T, C, e->NH, 0);
    matmul_backward_dinp(g.dln, g.dqkv, w.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, false, 0);
    cudaCheck(cudaMemcpyAsync(dresid, g.dres2, NC * sizeof(floatX), cudaMemcpyDeviceToDevice, 0));
    layernorm_backward_dinp(dresid, g.dln, a->inp, w.ln1w + l * C, a->ln1_mean, a->ln1_rstd, N, C, true, 0);
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
    cudaDataType_t t = cuda_dtype<floatX>();
    bias_grad_colsum(e->db_dec, dx_hat, N, e->C, !first, 0);
    matmul_cublaslt(e->dW_dec_norm, e->c, dx_hat, nullptr, e->D, e->C, N, true, false, t, CUDA_R_32F, !first, CUBLASLT_EPILOGUE_DEFAULT, nullptr, 0);
    matmul_cublaslt(e->dc, dx_hat, e->W_dec_norm, nullptr, N, e->D, e->C, false, true, t, t, false, CUBLASLT_EPILOGUE_DEFAULT, nullptr, 0);
    sae_l1_relu_backward(e->dc, e->dc, e->c, l1_scale, N, e->D, 0);
    bias_grad_colsum(e->db_enc, e->dc, N, e->D, !first, 0);
    matmul_cublaslt(e->dW_enc, e->x, e->dc, nullptr, e->C, e->D, N, true, false, t, CUDA_R_32F, !first, CUBLASLT_EPILOGUE_DEFAULT, nullptr, 0);
}

template <typename floatX>
void sae_finish_grads(Engine<floatX>* e) {
    sae_decoder_normalize_backward(e->dW_dec, e->dW_dec_norm, e->W_dec, e->inv_norm, e->D, e->C, 0);
}

// one micro-batch (tokens already on the device): forward, losses into e->stats, gradients
// accumulated (first = overwrite), everything scaled by 1/accum
template <typename floatX>
void micro_step(Engine<floatX>* e, int accum, bool first) {
    const TrainConfig& cfg = e->cfg;
    int B = e->B, N = B * e->T;
    size_t NC = (size_t)N * e->C;
    double dN = N, dC = e->C;
    phase_mark(e, PH_LOWER);
    forward_to_sae(e, B);
    phase_mark(e, PH_SAE_FWD);
    sae_forward(e, B);
    sae_sparsity_l0(e->stats + STAT_L1, e->stats + STAT_L0, e->fired_train, e->c, N, e->D, 0);
    const floatX* dx_hat = e->dresid;
    if (cfg.mode == MODE_LOCAL) {
        cudaCheck(cudaMemsetAsync(e->dx_hat_local, 0, NC * sizeof(floatX), 0));
        mse_forward_backward(e->stats + STAT_MSE, e->dx_hat_local, e->x_hat, e->x, NC, (float)(cfg.mse_coeff / (dN * dC * accum)), 0);
        dx_hat = e->dx_hat_local;
        for (int p = PH_CLEAN; p <= PH_BACKWARD; p++) phase_mark(e, p);  // empty phases in local mode
    } else {
        mse_forward_backward(e->stats + STAT_MSE, (floatX*)nullptr, e->x_hat, e->x, NC, 0.0f, 0);  // logged, not trained on
        phase_mark(e, PH_CLEAN);
        clean_forward(e, B);
        phase_mark(e, PH_SPLICED);
        spliced_forward(e, B);
        phase_mark(e, PH_KL);
        kl_fused_forward_backward(e->rows, e->logits_spliced, e->logits_clean, (float)(cfg.kl_coeff / (dN * accum)), N, e->V, e->Vp, 0);
        deterministic_sum(e->stats + STAT_KL, e->rows, N, true, 0);
        phase_mark(e, PH_BACKWARD);
        {
            NvtxRange r("lm_head_backward");
            matmul_backward_dinp(e->dlnf, e->logits_spliced, e->model.wte_unembed, N, e->C, e->Vp, false, 0);
            layernorm_backward_dinp(e->dresid, e->dlnf, e->resid, e->model.lnfw, e->lnf_mean, e->lnf_rstd, N, e->C, false, 0);
        }
        bool ds = cfg.mode == MODE_E2E_DS;
        float ds_scale = ds ? (float)(cfg.ds_coeff / e->K / (dN * dC * accum)) : 0.0f;
        for (int l = e->n_layer - 1; l >= e->L; l--) {
            block_backward(e, l, &e->spliced_acts[l - e->L], e->dresid, B);
            if (l > e->L)  // dresid is now d/d resid_pre_l, where the e2e+ds term for layer l enters
                mse_forward_backward(e->stats + STAT_DS + (l - e->L - 1), ds ? e->dresid : (floatX*)nullptr,
                                     e->spliced_acts[l - e->L].inp, e->ds_clean_v[l - e->L - 1], NC, ds_scale, 0);
        }
    }
    phase_mark(e, PH_SAE_BWD);
    sae_backward(e, dx_hat, B, (float)(cfg.sparsity_coeff / (dN * dC * accum)), first);
    phase_mark(e, PH_UPDATE);
}

// reads the phase events of the micro-batch just run (after a sync) into pt
template <typename floatX>
void collect_phases(Engine<floatX>* e, PhaseTimes* pt, bool with_update) {
    if (!e->time_phases) return;
    for (int p = 0; p < NUM_PHASES - 1; p++) {
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, e->ev[p], e->ev[p + 1]));
        pt->ms[p] += ms;
    }
    if (with_update) {
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, e->ev[PH_UPDATE], e->ev[NUM_PHASES]));
        pt->ms[PH_UPDATE] += ms;
    }
}

// clipping on the device (no host sync), then Adam(W) on the fp32 masters
template <typename floatX>
void update(Engine<floatX>* e, double lr, long long t) {
    NvtxRange r("update");
    sae_finish_grads(e);
    size_t n = e->host_sae.num_parameters;
    global_norm_squared(e->stats + STAT_GNORM_SQ, e->grads, n, false, 0);
    double step_size, bc2_sqrt;
    adamw_scalars((int)t, lr, 0.9, 0.999, &step_size, &bc2_sqrt);
    adamw_update(e->params, e->adam_m, e->adam_v, e->grads, n, lr, 0.9, 0.999, step_size, bc2_sqrt, 1e-8, e->cfg.weight_decay,
                 e->stats + STAT_GNORM_SQ, e->cfg.max_grad_norm, 0);
    if (e->time_phases) cudaCheck(cudaEventRecord(e->ev[NUM_PHASES], 0));
}

// ----------------------------------------------------------------------------
// eval (SPEC §6) on the first eval_rows rows of the val data; fire_count (D), if given, gets
// the number of eval tokens each feature fired on (the export's sparsity.safetensors)

template <typename floatX>
void upload_rows(Engine<floatX>* e, const int* tokens, int B) {
    int T = e->T;
    std::vector<int> targets((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) targets[(size_t)b * T + t] = t + 1 < T ? tokens[(size_t)b * T + t + 1] : -1;
    cudaCheck(cudaMemcpy(e->tokens, tokens, (size_t)B * T * sizeof(int), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(e->targets, targets.data(), (size_t)B * T * sizeof(int), cudaMemcpyHostToDevice));
}

template <typename floatX>
EvalMetrics evaluate(Engine<floatX>* e, const DataLoader* val, int eval_rows, long long alive_train,
                     std::vector<long long>* fire_count = nullptr) {
    NvtxRange r("evaluate");
    int T = e->T, C = e->C, D = e->D, K = e->K;
    std::vector<float> zeros(NUM_STATS_FIXED + K, 0.0f);
    cudaCheck(cudaMemcpy(e->stats, zeros.data(), zeros.size() * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(e->fired_eval, 0, D * sizeof(unsigned int)));
    cudaCheck(cudaMemset(e->fire_count_eval, 0, D * sizeof(unsigned long long)));
    cudaCheck(cudaMemset(e->agree_count, 0, sizeof(int)));
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
        sae_sparsity_l0(e->stats + STAT_L1, e->stats + STAT_L0, e->fired_eval, e->c, N, D, 0, e->fire_count_eval);
        mse_forward_backward(e->stats + STAT_MSE, (floatX*)nullptr, e->x_hat, e->x, NC, 0.0f, 0);
        explained_variance_rows(e->rows, e->x_hat, e->x, e->xsum, N, C, 0);
        deterministic_sum(e->stats + STAT_EV, e->rows, N, true, 0);
        clean_forward(e, B);
        spliced_forward(e, B);
        for (int k = 0; k < K; k++)
            mse_forward_backward(e->stats + STAT_DS + k, (floatX*)nullptr, e->spliced_acts[k + 1].inp, e->ds_clean_v[k], NC, 0.0f, 0);
        ce_forward(e->rows, e->logits_clean, e->targets, N, e->V, e->Vp, 0);
        deterministic_sum(e->stats + STAT_CE_CLEAN, e->rows, N, true, 0);
        ce_forward(e->rows, e->logits_spliced, e->targets, N, e->V, e->Vp, 0);
        deterministic_sum(e->stats + STAT_CE_SPLICED, e->rows, N, true, 0);
        argmax_agree(e->agree_count, e->logits_clean, e->logits_spliced, N, e->V, e->Vp, 0);
        kl_fused_forward_backward(e->rows, e->logits_spliced, e->logits_clean, 0.0f, N, e->V, e->Vp, 0);
        deterministic_sum(e->stats + STAT_KL, e->rows, N, true, 0);
        tokens_seen += N;
    }
    sae_count_alive(e->alive_count, e->fired_eval, D, 0);
    std::vector<float> s(NUM_STATS_FIXED + K);
    int alive = 0, agree = 0;
    cudaCheck(cudaMemcpy(s.data(), e->stats, s.size() * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(&alive, e->alive_count, sizeof(int), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(&agree, e->agree_count, sizeof(int), cudaMemcpyDeviceToHost));
    EvalMetrics m;
    double ce_positions = (double)eval_rows * (T - 1);
    m.tokens = tokens_seen;
    m.ce_clean = s[STAT_CE_CLEAN] / ce_positions;
    m.ce_spliced = s[STAT_CE_SPLICED] / ce_positions;
    m.kl = s[STAT_KL] / tokens_seen;
    m.l0 = s[STAT_L0] / tokens_seen;
    m.explained_variance = s[STAT_EV] / tokens_seen;
    m.top1_agree = (double)agree / tokens_seen;
    m.mse = s[STAT_MSE] / ((double)tokens_seen * C);
    m.alive = alive;
    m.dead = D - alive;
    m.alive_train = alive_train;
    for (int k = 0; k < K; k++) m.ds_mse.push_back(s[STAT_DS + k] / ((double)tokens_seen * C));
    if (fire_count) {
        std::vector<unsigned long long> counts(D);
        cudaCheck(cudaMemcpy(counts.data(), e->fire_count_eval, D * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
        fire_count->assign(counts.begin(), counts.end());
    }
    return m;
}

// ----------------------------------------------------------------------------
// --dump-features: per-feature firing frequency and top activations over the first val tokens,
// kept on the device in (D,K) buffers, the same result as the CPU trainer's feature_dump_add

template <typename floatX>
void dump_features(Engine<floatX>* e, const DataLoader* val, const TrainConfig& cfg) {
    NvtxRange r("dump_features");
    int T = e->T, K = cfg.dump_topk;
    long long rows = std::min<long long>(val->num_rows, (cfg.dump_tokens + T - 1) / T);
    feature_dump_reset_gpu(e->dump_fire_count, e->dump_top_values, e->dump_top_pos, e->D, K, 0);
    sae_prepare_weights(e);
    std::vector<int> tokens((size_t)e->B * T);
    long long n_tokens = 0;
    for (long long row = 0; row < rows; row += e->B) {
        int B = (int)std::min<long long>(e->B, rows - row);
        dataloader_get_rows(val, row, B, tokens.data());
        upload_rows(e, tokens.data(), B);
        forward_to_sae(e, B);
        sae_forward(e, B);
        feature_dump_add_gpu(e->dump_fire_count, e->dump_top_values, e->dump_top_pos, e->c, B * T, e->D, K, row * T, 0);
        n_tokens += (long long)B * T;
    }
    FeatureDump fd;
    feature_dump_init(&fd, e->D, K);
    feature_dump_download(&fd, e->dump_fire_count, e->dump_top_values, e->dump_top_pos, n_tokens);
    std::vector<std::string> shards;
    for (const Shard& sh : val->shards) shards.push_back(sh.path);
    feature_dump_write(&fd, cfg.dump_features, feature_dump_meta(cfg.val, shards, T, n_tokens, e->D, K, cfg.layer,
                                                                 e->host_model.source, mode_name(cfg.mode)));
    long long alive = 0;
    for (long long n : fd.fire_count) alive += n > 0;
    printf("dumped %lld features' frequencies and top-%d activations over %lld val tokens to %s (%lld fired)\n", (long long)e->D, K,
           n_tokens, cfg.dump_features.c_str(), alive);
}

// ----------------------------------------------------------------------------
// checkpointing: device state <-> the host structures sae_io.h writes

template <typename floatX>
void download_state(Engine<floatX>* e, std::vector<float>& m, std::vector<float>& v, std::vector<float>& fired) {
    size_t P = e->host_sae.num_parameters;
    cudaCheck(cudaMemcpy(e->host_sae.memory.data(), e->params, P * sizeof(float), cudaMemcpyDeviceToHost));
    m.resize(P); v.resize(P);
    cudaCheck(cudaMemcpy(m.data(), e->adam_m, P * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(v.data(), e->adam_v, P * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<unsigned int> f(e->D);
    cudaCheck(cudaMemcpy(f.data(), e->fired_train, e->D * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    fired.resize(e->D);
    for (int i = 0; i < e->D; i++) fired[i] = f[i] ? 1.0f : 0.0f;
}

template <typename floatX>
void upload_state(Engine<floatX>* e, const std::vector<float>& m, const std::vector<float>& v, const std::vector<float>& fired) {
    size_t P = e->host_sae.num_parameters;
    cudaCheck(cudaMemcpy(e->params, e->host_sae.memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(e->adam_m, m.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(e->adam_v, v.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    std::vector<unsigned int> f(e->D);
    for (int i = 0; i < e->D; i++) f[i] = fired[i] > 0.0f ? 1u : 0u;
    cudaCheck(cudaMemcpy(e->fired_train, f.data(), e->D * sizeof(unsigned int), cudaMemcpyHostToDevice));
}

// ----------------------------------------------------------------------------
// the training loop

static double now_seconds() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

template <typename floatX>
int run(TrainConfig cfg, GPT2& host_model, SAE& host_sae) {
    Engine<floatX> e;
    e.host_model = host_model;
    e.host_sae = host_sae;
    sae_bind(&e.host_sae);  // the copy's pointers must point into its own block
    DataLoader train_loader, val_loader;
    const GPT2Config& mc = host_model.config;
    bool have_val = (cfg.eval_samples > 0 || !cfg.dump_features.empty()) && (cfg.val_given || glob_matches(cfg.val));
    if (cfg.eval_samples > 0 && !have_val)
        printf("note: no eval data at the default --val '%s' (scripts/download_starter_pack.sh gets it): eval skipped\n", cfg.val.c_str());
    if (!cfg.eval_only) dataloader_init(&train_loader, cfg.train, "--train", cfg.batch, cfg.seq_len, mc.vocab_size, cfg.shuffle, cfg.seed);
    if (have_val) dataloader_init(&val_loader, cfg.val, "--val", 1, cfg.seq_len, mc.vocab_size, false, 0);
    int eval_rows = have_val ? (int)std::min<long long>(cfg.eval_samples, val_loader.num_rows) : 0;
    if (!cfg.dump_features.empty() && !have_val) die("--dump-features needs --val data to stream through the SAE");
    engine_init(&e, cfg, cfg.batch);

    TrainState ts;
    ts.alive_fired.assign(e.D, 0.0f);
    std::vector<float> hm, hv;
    if (!cfg.resume.empty()) {
        hm.assign(e.host_sae.num_parameters, 0.0f); hv.assign(e.host_sae.num_parameters, 0.0f);
        train_state_load(cfg.resume, &e.host_sae, hm.data(), hv.data(), &ts, cfg);
        train_loader.rows_consumed = ts.rows_consumed;
        upload_state(&e, hm, hv, ts.alive_fired);
        printf("resumed from %s at step %lld\n", cfg.resume.c_str(), ts.step);
    }
    make_dir(cfg.out);
    Logger logger;
    logger_open(&logger, cfg.log, !cfg.resume.empty());
    long long eff_batch = (long long)cfg.batch * cfg.grad_accum;
    long long W = cfg.warmup_samples / eff_batch, S = cfg.samples / eff_batch;
    long long last_alive = -1;
    std::vector<float> sparsity;  // (D) from the latest eval; empty before the first, and no file is written then
    auto run_eval = [&](long long step) {
        if (!eval_rows) return;
        std::vector<long long> fire_count;
        EvalMetrics m = evaluate(&e, &val_loader, eval_rows, last_alive, &fire_count);
        sparsity = sae_log10_sparsity(fire_count, m.tokens);
        print_eval(step, m, cfg.layer + 1);
        logger_log_eval(&logger, step, m);
    };
    if (cfg.eval_only) {
        if (!eval_rows && cfg.dump_features.empty()) die("--eval-only needs eval data: --val '%s' has no rows", cfg.val.c_str());
        run_eval(0);
        if (!cfg.dump_features.empty()) dump_features(&e, &val_loader, cfg);
        logger_close(&logger);
        engine_free(&e);
        return 0;
    }
    std::string model_name = model_name_for_export(host_model.source);  // once per run: it may checksum 548 MB
    auto save = [&](long long step) {
        std::vector<float> fired;
        download_state(&e, hm, hv, fired);
        ts.step = step;
        ts.rows_consumed = train_loader.rows_consumed;
        ts.alive_fired = fired;
        train_state_save(cfg.out, &e.host_sae, hm.data(), hv.data(), ts, cfg);
        sae_export(&e.host_sae, cfg.out, cfg, model_name, step, sparsity.empty() ? nullptr : &sparsity);
        printf("saved SAE and training state to %s at step %lld\n", cfg.out.c_str(), step);
    };
    if (ts.step == 0) run_eval(0);
    std::vector<int> tokens((size_t)cfg.batch * cfg.seq_len);
    std::vector<float> s(NUM_STATS_FIXED + e.K);
    std::vector<float> zeros(NUM_STATS_FIXED + e.K, 0.0f);
    long long last_eval_samples = ts.step * eff_batch;
    long long step = ts.step, timed_steps = 0;
    PhaseTimes total_phases;
    double timed_seconds = 0.0;
    std::vector<double> step_seconds;  // after warm-up, for the median
    while (step < S && (cfg.max_steps < 0 || step < cfg.max_steps)) {
        NvtxRange r("step");
        double t0 = now_seconds();
        double lr = lr_at_step(cfg.lr, step, W, S, cfg.min_lr_factor);
        cudaCheck(cudaMemcpyAsync(e.stats, zeros.data(), zeros.size() * sizeof(float), cudaMemcpyHostToDevice, 0));
        sae_prepare_weights(&e);
        PhaseTimes pt;
        for (int a = 0; a < cfg.grad_accum; a++) {
            dataloader_next_batch(&train_loader, tokens.data());
            cudaCheck(cudaMemcpy(e.tokens, tokens.data(), tokens.size() * sizeof(int), cudaMemcpyHostToDevice));
            micro_step(&e, cfg.grad_accum, a == 0);
            if (a + 1 < cfg.grad_accum) { cudaCheck(cudaEventSynchronize(e.ev[PH_UPDATE])); collect_phases(&e, &pt, false); }
        }
        update(&e, lr, step + 1);
        cudaCheck(cudaMemcpy(s.data(), e.stats, s.size() * sizeof(float), cudaMemcpyDeviceToHost));  // the step's one sync
        collect_phases(&e, &pt, true);
        step++;
        double A = cfg.grad_accum, dN = (double)cfg.batch * cfg.seq_len, C = e.C;
        double kl = cfg.mode == MODE_LOCAL ? NAN : s[STAT_KL] / dN / A;
        double sparsity = s[STAT_L1] / dN / C / A, mse = s[STAT_MSE] / dN / C / A, l0 = s[STAT_L0] / dN / A;
        double ds_mse = NAN;
        if (cfg.mode != MODE_LOCAL && e.K > 0) {
            ds_mse = 0.0;
            for (int k = 0; k < e.K; k++) ds_mse += s[STAT_DS + k] / dN / C / A;
            ds_mse /= e.K;
        }
        double loss = cfg.sparsity_coeff * sparsity;
        if (cfg.mode == MODE_LOCAL) loss += cfg.mse_coeff * mse;
        else loss += cfg.kl_coeff * kl;
        if (cfg.mode == MODE_E2E_DS) loss += cfg.ds_coeff * ds_mse;
        double gnorm = sqrt((double)s[STAT_GNORM_SQ]);
        if (!isfinite(loss) || !isfinite(gnorm))
            die("loss is %f (grad norm %f) at step %lld: NaN/Inf in the model or SAE, or training diverged (try a lower --lr); "
                "nothing was saved", loss, gnorm, step);
        ts.alive_tokens += (long long)cfg.batch * cfg.seq_len * cfg.grad_accum;
        long long alive_now = -1;
        if (ts.alive_tokens >= cfg.alive_window) {
            int alive = 0;
            sae_count_alive(e.alive_count, e.fired_train, e.D, 0);
            cudaCheck(cudaMemcpy(&alive, e.alive_count, sizeof(int), cudaMemcpyDeviceToHost));
            cudaCheck(cudaMemset(e.fired_train, 0, e.D * sizeof(unsigned int)));
            alive_now = last_alive = alive;
            ts.alive_tokens = 0;
        }
        double dt = now_seconds() - t0;
        double tps = dN * A / dt;
        if (step - ts.step > 3) {  // after warm-up
            timed_steps++;
            timed_seconds += dt;
            step_seconds.push_back(dt);
            for (int p = 0; p < NUM_PHASES; p++) total_phases.ms[p] += pt.ms[p];
        }
        StepLog sl = {step, lr, loss, kl, sparsity, mse, ds_mse, l0, gnorm, tps, alive_now};
        logger_log_step(&logger, sl);
        printf("step %5lld/%lld | loss %.6f | kl %s | sparsity %.5f | mse %.6f | L0 %.1f | gnorm %.4f | lr %.3e | %.0f tok/s%s\n", step, S,
               loss, json_num(kl).c_str(), sparsity, mse, l0, gnorm, lr, tps, alive_now >= 0 ? (" | alive " + std::to_string(alive_now)).c_str() : "");
        bool last = step == S || step == cfg.max_steps;
        if (cfg.save_every > 0 && step % cfg.save_every == 0 && !last) save(step);
        if (cfg.eval_every > 0 && step * eff_batch - last_eval_samples >= cfg.eval_every && !last) {
            run_eval(step);
            last_eval_samples = step * eff_batch;
        }
    }
    if (timed_steps > 0) {
        double sum = 0;
        for (int p = 0; p < NUM_PHASES; p++) sum += total_phases.ms[p];
        std::sort(step_seconds.begin(), step_seconds.end());
        double median = step_seconds[step_seconds.size() / 2];
        printf("---- time per step over %lld steps after warm-up: median %.2f ms wall (%.0f tokens/s), mean %.2f ms ----\n",
               timed_steps, 1000.0 * median, (double)cfg.batch * cfg.seq_len * cfg.grad_accum / median, 1000.0 * timed_seconds / timed_steps);
        for (int p = 0; p < NUM_PHASES; p++)
            printf("  %-22s %8.3f ms  (%4.1f%%)\n", PHASE_NAMES[p], total_phases.ms[p] / timed_steps, 100.0 * total_phases.ms[p] / sum);
        size_t free_b, total_b;
        cudaCheck(cudaMemGetInfo(&free_b, &total_b));
        printf("  device memory in use: %.2f GiB of %.2f GiB\n", (total_b - free_b) / 1073741824.0, total_b / 1073741824.0);
    }
    run_eval(step);
    save(step);
    if (!cfg.dump_features.empty()) dump_features(&e, &val_loader, cfg);
    logger_close(&logger);
    dataloader_free(&train_loader);
    if (have_val) dataloader_free(&val_loader);
    engine_free(&e);
    return 0;
}

// loads the model and the SAE on the host, then runs in the chosen precision
int train_main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // step lines appear as they happen, also in a log file
    TrainConfig cfg = parse_args(argc, argv, true);
    apply_demo_presets(cfg, true);
    int ndev = 0;
    cudaError_t err = cudaGetDeviceCount(&ndev);
    if (err != cudaSuccess || ndev == 0) die("no CUDA device available (%s): use train_gpt2_sae_cpu on machines without a GPU", cudaGetErrorString(err));
    if (cfg.device >= ndev) die("--device %d is out of range: %d CUDA device(s) present", cfg.device, ndev);
    cudaCheck(cudaSetDevice(cfg.device));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, cfg.device));
    printf("device %d: %s, %d SMs, %.1f GiB\n", cfg.device, prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    GPT2 model;
    gpt2_load(&model, cfg.model);
    const GPT2Config& mc = model.config;
    printf("GPT-2 from %s: L %d, NH %d, C %d, V %d, maxT %d (%zu parameters, residual-writing weights centred)\n", model.source.c_str(),
           mc.num_layers, mc.num_heads, mc.channels, mc.vocab_size, mc.max_seq_len, model.num_parameters);
    check_config_against_model(cfg, mc.num_layers, mc.max_seq_len);
    SAE sae;
    if (!cfg.init_sae.empty()) {
        sae_load(&sae, cfg.init_sae, mc.channels);
        printf("SAE from %s: d_in %d, d_sae %d\n", cfg.init_sae.c_str(), sae.C, sae.D);
    } else {
        sae_allocate(&sae, mc.channels, config_d_sae(cfg, mc.channels));
        sae_init_random(&sae, cfg.seed);
    }
    print_config(cfg, sae.C, sae.D);
    return cfg.precision == "fp32" ? run<float>(cfg, model, sae) : run<bf16>(cfg, model, sae);
}

#ifndef TESTING
int main(int argc, char** argv) { return train_main(argc, argv); }
#endif
