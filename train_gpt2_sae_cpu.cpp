/*
train_gpt2_sae_cpu: the readable fp32 CPU reference of the e2e SAE trainer.

Trains a sparse autoencoder at blocks.L.hook_resid_pre of a frozen GPT-2 in one of three
modes (local, e2e, e2e+ds), exactly as docs/SPEC.md specifies. It favours clarity over
speed: plain loops with the same function names and argument order as the CUDA kernels in
the llmc/ .cuh files, so the two can be read side by side. OpenMP parallelises only over independent
outputs, so every run is bit-reproducible whatever the thread count.

Build and run:
    make train_gpt2_sae_cpu
    ./train_gpt2_sae_cpu --help
Left out on purpose: bf16 (the GPU trainer has it), GPT-2 weight gradients (frozen model).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <string>
#include <vector>
#include "llmc/utils.h"        // defines: die, fopenCheck, mallocCheck, now_seconds, check_finite
#include "llmc/gpt2_load.h"    // defines: GPT2, gpt2_load (HF safetensors / llm.c .bin, centring)
#include "llmc/dataloader.h"   // defines: DataLoader, dataloader_init/next_batch/get_rows
#include "llmc/schedule.h"     // defines: lr_at_step, adamw_scalars, Schedule, keep_training, is_last, should_save, should_eval
#include "llmc/train_config.h" // defines: TrainConfig, parse_args, apply_demo_presets, check_config_against_model
#include "llmc/sae.h"          // defines: SAE, sae_allocate, sae_init_random
#include "llmc/sae_io.h"       // defines: sae_export, sae_load, train_state_save/load
#include "llmc/logger.h"       // defines: Logger, StepLog, print_step, EvalSums, eval_metrics_finish, print_eval
#include "llmc/feature_dump.h" // defines: FeatureDump, feature_dump_add/_add_bands/_add_contexts, feature_dump_logit_effects
#include "llmc/run.h"          // defines: load_model, load_sae, RunData, open_loaders, RunState, runs_begin, save_runs, report_eval, step_end, run_end

// ----------------------------------------------------------------------------
// GPT-2 layer passes, fp32. N = B*T rows. Backward passes compute activation gradients only.

void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
    // out (B,T,C), inp (B,T), wte (V,C), wpe (maxT,C)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float* o = out + ((size_t)b * T + t) * C;
            const float* we = wte + (size_t)inp[b * T + t] * C;
            const float* pe = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) o[i] = we[i] + pe[i];
        }
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int N, int C) {
    // out (N,C), mean (N), rstd (N); biased variance, eps 1e-5 as GPT-2
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float m = 0.0f;
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        float v = 0.0f;
        for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
        v /= C;
        float s = 1.0f / sqrtf(v + 1e-5f);
        float* o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = (x[i] - m) * s * weight[i] + bias[i];
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = s;
    }
}

// with xhat = (x - mean) * rstd and g = dout * weight:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
void layernorm_backward_dinp(float* dinp, const float* dout, const float* inp, const float* weight, const float* mean,
                             const float* rstd, int N, int C) {
    // dinp (N,C) += ...
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        const float* dy = dout + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int i = 0; i < C; i++) {
            float xhat = (x[i] - m) * s;
            float g = dy[i] * weight[i];
            dnorm_mean += g;
            dnorm_norm_mean += g * xhat;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        float* dx = dinp + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            float xhat = (x[i] - m) * s;
            float g = dy[i] * weight[i];
            dx[i] += s * (g - dnorm_mean - xhat * dnorm_norm_mean);
        }
    }
}

// tiled so a block of weight rows stays in cache while every input row passes over it (the LM
// head's weight is 50257 x C: streaming it once per token would be memory-bound), and four
// tokens share each load of a weight row
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC) {
    // out (N,OC) = inp (N,C) . weight (OC,C)^T + bias (OC)
    const int OB = 64;
    #pragma omp parallel for schedule(dynamic)
    for (int ob = 0; ob < OC; ob += OB) {
        int oe = ob + OB < OC ? ob + OB : OC;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const float* x0 = inp + (size_t)n * C;
            const float *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
            for (int o = ob; o < oe; o++) {
                const float* w = weight + (size_t)o * C;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                #pragma omp simd reduction(+ : a0, a1, a2, a3)
                for (int i = 0; i < C; i++) { a0 += x0[i] * w[i]; a1 += x1[i] * w[i]; a2 += x2[i] * w[i]; a3 += x3[i] * w[i]; }
                float bo = bias ? bias[o] : 0.0f;
                out[(size_t)n * OC + o] = a0 + bo;
                out[(size_t)(n + 1) * OC + o] = a1 + bo;
                out[(size_t)(n + 2) * OC + o] = a2 + bo;
                out[(size_t)(n + 3) * OC + o] = a3 + bo;
            }
        }
        for (; n < N; n++) {
            const float* x = inp + (size_t)n * C;
            for (int o = ob; o < oe; o++) {
                const float* w = weight + (size_t)o * C;
                float acc = 0.0f;
                #pragma omp simd reduction(+ : acc)
                for (int i = 0; i < C; i++) acc += x[i] * w[i];
                out[(size_t)n * OC + o] = acc + (bias ? bias[o] : 0.0f);
            }
        }
    }
}

void matmul_backward_dinp(float* dinp, const float* dout, const float* weight, int N, int C, int OC, bool accumulate) {
    // dinp (N,C) (+)= dout (N,OC) . weight (OC,C); a block of rows of dinp stays in cache per
    // weight pass, and four weight rows are folded into each pass over a row of dinp
    const int NB = 16;
    #pragma omp parallel for schedule(dynamic)
    for (int nb = 0; nb < N; nb += NB) {
        int ne = nb + NB < N ? nb + NB : N;
        if (!accumulate) memset(dinp + (size_t)nb * C, 0, (size_t)(ne - nb) * C * sizeof(float));
        int o = 0;
        for (; o + 4 <= OC; o += 4) {
            const float* w0 = weight + (size_t)o * C;
            const float *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
            for (int n = nb; n < ne; n++) {
                const float* d = dout + (size_t)n * OC + o;
                float d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
                float* dx = dinp + (size_t)n * C;
                #pragma omp simd
                for (int i = 0; i < C; i++) dx[i] += d0 * w0[i] + d1 * w1[i] + d2 * w2[i] + d3 * w3[i];
            }
        }
        for (; o < OC; o++) {
            const float* w = weight + (size_t)o * C;
            for (int n = nb; n < ne; n++) {
                float d = dout[(size_t)n * OC + o];
                float* dx = dinp + (size_t)n * C;
                for (int i = 0; i < C; i++) dx[i] += d * w[i];
            }
        }
    }
}

void attention_forward(float* out, float* att, const float* inp, int B, int T, int C, int NH) {
    // out (B,T,C), att (B,NH,T,T) softmax probabilities (0 above the diagonal), inp (B,T,3C) = q,k,v
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float* q = inp + ((size_t)b * T + t) * 3 * C + h * hs;
                float* a = att + (((size_t)b * NH + h) * T + t) * T;
                float maxv = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* k = inp + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    float dot = 0.0f;
                    for (int i = 0; i < hs; i++) dot += q[i] * k[i];
                    a[t2] = dot * scale;
                    maxv = fmaxf(maxv, a[t2]);
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) { a[t2] = expf(a[t2] - maxv); sum += a[t2]; }
                for (int t2 = 0; t2 <= t; t2++) a[t2] /= sum;
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
                float* o = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* v = inp + ((size_t)b * T + t2) * 3 * C + 2 * C + h * hs;
                    for (int i = 0; i < hs; i++) o[i] += a[t2] * v[i];
                }
            }
}

// per (b,h,t): datt = dout . v; softmax backward dpre = att * (datt - sum(att * datt));
// dq = scale * dpre . k, dk += scale * dpre^T q, dv += att^T dout
void attention_backward(float* dinp, float* datt_buf, const float* dout, const float* inp, const float* att, int B, int T, int C, int NH) {
    // dinp (B,T,3C) overwritten; datt_buf (B,NH,T) scratch; dout (B,T,C); inp (B,T,3C); att (B,NH,T,T)
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) memset(dinp + ((size_t)b * T + t) * 3 * C, 0, (size_t)3 * C * sizeof(float));
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            float* datt = datt_buf + ((size_t)b * NH + h) * T;
            for (int t = 0; t < T; t++) {
                const float* a = att + (((size_t)b * NH + h) * T + t) * T;
                const float* dy = dout + ((size_t)b * T + t) * C + h * hs;
                const float* q = inp + ((size_t)b * T + t) * 3 * C + h * hs;
                float* dq = dinp + ((size_t)b * T + t) * 3 * C + h * hs;
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* v = inp + ((size_t)b * T + t2) * 3 * C + 2 * C + h * hs;
                    float* dv = dinp + ((size_t)b * T + t2) * 3 * C + 2 * C + h * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++) { d += dy[i] * v[i]; dv[i] += a[t2] * dy[i]; }
                    datt[t2] = d;
                    sum += a[t2] * d;
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    float dpre = a[t2] * (datt[t2] - sum) * scale;
                    const float* k = inp + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    float* dk = dinp + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    for (int i = 0; i < hs; i++) { dq[i] += dpre * k[i]; dk[i] += dpre * q[i]; }
                }
            }
        }
}

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)
void gelu_forward(float* out, const float* inp, int n) {
    #pragma omp parallel for
    for (int i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x)));
    }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int n) {
    // dinp = dout * gelu'(inp)
    #pragma omp parallel for
    for (int i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
        float th = tanhf(u);
        float sech2 = 1.0f - th * th;
        float local = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * local;
    }
}

void residual_forward(float* out, const float* inp1, const float* inp2, int n) {
    for (int i = 0; i < n; i++) out[i] = inp1[i] + inp2[i];
}

// ----------------------------------------------------------------------------
// GPT-2 blocks and head

// what one block keeps for its backward pass
struct BlockActs {
    std::vector<float> inp, ln1, ln1_mean, ln1_rstd, qkv, atty, att, attproj, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, fcproj;
};

void block_acts_allocate(BlockActs* a, int B, int T, int C, int NH) {
    size_t N = (size_t)B * T;
    a->inp.resize(N * C); a->ln1.resize(N * C); a->ln1_mean.resize(N); a->ln1_rstd.resize(N);
    a->qkv.resize(N * 3 * C); a->atty.resize(N * C); a->att.resize((size_t)B * NH * T * T); a->attproj.resize(N * C);
    a->res2.resize(N * C); a->ln2.resize(N * C); a->ln2_mean.resize(N); a->ln2_rstd.resize(N);
    a->fch.resize(N * 4 * C); a->fch_gelu.resize(N * 4 * C); a->fcproj.resize(N * C);
}

size_t block_acts_floats(int B, int T, int C, int NH) {
    size_t N = (size_t)B * T;
    return N * C * 8 + N * 4 + N * 3 * C + N * 8 * C + (size_t)B * NH * T * T;
}

void block_forward(const GPT2* model, int l, BlockActs* a, const float* inp, float* out, int B, int T) {
    // inp, out (B,T,C); out may alias inp
    const GPT2Weights& w = model->params;
    int C = model->config.channels, NH = model->config.num_heads, N = B * T;
    memcpy(a->inp.data(), inp, (size_t)N * C * sizeof(float));
    layernorm_forward(a->ln1.data(), a->ln1_mean.data(), a->ln1_rstd.data(), a->inp.data(), w.ln1w + l * C, w.ln1b + l * C, N, C);
    matmul_forward(a->qkv.data(), a->ln1.data(), w.qkvw + (size_t)l * 3 * C * C, w.qkvb + l * 3 * C, N, C, 3 * C);
    attention_forward(a->atty.data(), a->att.data(), a->qkv.data(), B, T, C, NH);
    matmul_forward(a->attproj.data(), a->atty.data(), w.attprojw + (size_t)l * C * C, w.attprojb + l * C, N, C, C);
    residual_forward(a->res2.data(), a->inp.data(), a->attproj.data(), N * C);
    layernorm_forward(a->ln2.data(), a->ln2_mean.data(), a->ln2_rstd.data(), a->res2.data(), w.ln2w + l * C, w.ln2b + l * C, N, C);
    matmul_forward(a->fch.data(), a->ln2.data(), w.fcw + (size_t)l * 4 * C * C, w.fcb + l * 4 * C, N, C, 4 * C);
    gelu_forward(a->fch_gelu.data(), a->fch.data(), N * 4 * C);
    matmul_forward(a->fcproj.data(), a->fch_gelu.data(), w.fcprojw + (size_t)l * C * 4 * C, w.fcprojb + l * C, N, 4 * C, C);
    residual_forward(out, a->res2.data(), a->fcproj.data(), N * C);
}

// scratch for the block backward, sized once
struct BlockGrads {
    std::vector<float> dres2, dfch, dln, datty, dqkv, datt;
};

void block_backward(const GPT2* model, int l, const BlockActs* a, BlockGrads* g, const float* dout, float* dinp, int B, int T) {
    // dout (B,T,C) gradient wrt the block output; dinp (B,T,C) overwritten (may alias dout)
    const GPT2Weights& w = model->params;
    int C = model->config.channels, NH = model->config.num_heads, N = B * T;
    g->dres2.assign(dout, dout + (size_t)N * C);
    g->dfch.resize((size_t)N * 4 * C); g->dln.resize((size_t)N * C); g->datty.resize((size_t)N * C);
    g->dqkv.resize((size_t)N * 3 * C); g->datt.resize((size_t)B * NH * T);
    // MLP: out = res2 + fcproj(gelu(fc(ln2(res2))))
    matmul_backward_dinp(g->dfch.data(), g->dres2.data(), w.fcprojw + (size_t)l * C * 4 * C, N, 4 * C, C, false);
    gelu_backward(g->dfch.data(), a->fch.data(), g->dfch.data(), N * 4 * C);
    matmul_backward_dinp(g->dln.data(), g->dfch.data(), w.fcw + (size_t)l * 4 * C * C, N, C, 4 * C, false);
    layernorm_backward_dinp(g->dres2.data(), g->dln.data(), a->res2.data(), w.ln2w + l * C, a->ln2_mean.data(), a->ln2_rstd.data(), N, C);
    // attention: res2 = inp + attproj(attn(qkv(ln1(inp))))
    matmul_backward_dinp(g->datty.data(), g->dres2.data(), w.attprojw + (size_t)l * C * C, N, C, C, false);
    attention_backward(g->dqkv.data(), g->datt.data(), g->datty.data(), a->qkv.data(), a->att.data(), B, T, C, NH);
    matmul_backward_dinp(g->dln.data(), g->dqkv.data(), w.qkvw + (size_t)l * 3 * C * C, N, C, 3 * C, false);
    memcpy(dinp, g->dres2.data(), (size_t)N * C * sizeof(float));
    layernorm_backward_dinp(dinp, g->dln.data(), a->inp.data(), w.ln1w + l * C, a->ln1_mean.data(), a->ln1_rstd.data(), N, C);
}

// final LayerNorm and the LM head, tied to the *uncentred* token embedding (SPEC §2)
void lm_head_forward(const GPT2* model, float* logits, float* lnf, float* lnf_mean, float* lnf_rstd, const float* resid, int N) {
    // logits (N,V), lnf (N,C), resid (N,C)
    const GPT2Weights& w = model->params;
    int C = model->config.channels, V = model->config.vocab_size;
    layernorm_forward(lnf, lnf_mean, lnf_rstd, resid, w.lnfw, w.lnfb, N, C);
    matmul_forward(logits, lnf, w.wte_unembed, nullptr, N, C, V);
}

void lm_head_backward(const GPT2* model, float* dresid, float* dlnf, const float* dlogits, const float* resid, const float* lnf_mean,
                      const float* lnf_rstd, int N) {
    // dresid (N,C) overwritten; dlnf (N,C) scratch; dlogits (N,V)
    const GPT2Weights& w = model->params;
    int C = model->config.channels, V = model->config.vocab_size;
    matmul_backward_dinp(dlnf, dlogits, w.wte_unembed, N, C, V, false);
    memset(dresid, 0, (size_t)N * C * sizeof(float));
    layernorm_backward_dinp(dresid, dlnf, resid, w.lnfw, lnf_mean, lnf_rstd, N, C);
}

// ----------------------------------------------------------------------------
// the SAE (SPEC §3)

void sae_decoder_normalize(float* W_dec_norm, float* inv_norm, const float* W_dec, int D, int C) {
    // W_dec_norm (D,C) = each row / max(||row||, 1e-12); inv_norm (D) = 1 / that
    #pragma omp parallel for
    for (int d = 0; d < D; d++) {
        const float* w = W_dec + (size_t)d * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += w[i] * w[i];
        float nrm = fmaxf(sqrtf(ss), 1e-12f);
        inv_norm[d] = 1.0f / nrm;
        for (int i = 0; i < C; i++) W_dec_norm[(size_t)d * C + i] = w[i] / nrm;
    }
}

// y = w / n, n = max(||w||, 1e-12): dw = (dy - y (y . dy)) / n, or dy / n below the floor (n is then
// a constant); y = w * inv_norm, the same arithmetic as the GPU kernel
void sae_decoder_normalize_backward(float* dW_dec, const float* dW_dec_norm, const float* W_dec, const float* inv_norm, int D, int C) {
    // dW_dec (D,C) = ... (overwritten); dW_dec_norm (D,C) is the gradient wrt W_dec_norm
    #pragma omp parallel for
    for (int d = 0; d < D; d++) {
        const float* dy = dW_dec_norm + (size_t)d * C;
        const float* w = W_dec + (size_t)d * C;
        float inv = inv_norm[d];
        float ss = 0.0f, w_dot_dy = 0.0f;
        for (int i = 0; i < C; i++) { ss += w[i] * w[i]; w_dot_dy += w[i] * dy[i]; }
        float y_dot_dy = sqrtf(ss) > 1e-12f ? w_dot_dy * inv : 0.0f;
        for (int i = 0; i < C; i++) dW_dec[(size_t)d * C + i] = (dy[i] - w[i] * inv * y_dot_dy) * inv;
    }
}

void sae_encoder_forward(float* c, const float* x, const float* W_enc, const float* b_enc, int N, int C, int D) {
    // c (N,D) = relu(x (N,C) . W_enc (C,D) + b_enc (D))
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float* row = c + (size_t)n * D;
        for (int d = 0; d < D; d++) row[d] = 0.0f;
        for (int i = 0; i < C; i++) {
            float xi = x[(size_t)n * C + i];
            const float* w = W_enc + (size_t)i * D;
            for (int d = 0; d < D; d++) row[d] += xi * w[d];
        }
        for (int d = 0; d < D; d++) row[d] = fmaxf(row[d] + b_enc[d], 0.0f);
    }
}

void sae_decoder_forward(float* x_hat, const float* c, const float* W_dec_norm, const float* b_dec, int N, int C, int D) {
    // x_hat (N,C) = c (N,D) . W_dec_norm (D,C) + b_dec (C); zero activations skipped
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float* o = x_hat + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = 0.0f;
        for (int d = 0; d < D; d++) {
            float cd = c[(size_t)n * D + d];
            if (cd == 0.0f) continue;
            const float* w = W_dec_norm + (size_t)d * C;
            for (int i = 0; i < C; i++) o[i] += cd * w[i];
        }
        for (int i = 0; i < C; i++) o[i] += b_dec[i];
    }
}

// SAE backward from dx_hat (N,C). With pre = x W_enc + b_enc, c = relu(pre), x_hat = c W_dec_norm + b_dec:
//   dW_dec_norm = c^T dx_hat, db_dec = sum_n dx_hat, dc = dx_hat W_dec_norm^T + l1_scale (d|c|/dc = 1 for c > 0),
//   dpre = dc * [c > 0] (abs'(0) = relu'(0) = 0 in torch), db_enc = sum_n dpre, dW_enc = x^T dpre.
// Everything accumulates (+=) across micro-batches; dW_dec comes from dW_dec_norm once per update
// (sae_finish_grads): the normalisation backward is linear in dW_dec_norm and W_dec does not change
// within an update. dpre_buf (N,D) is scratch.
void sae_backward(SAE* grads, float* dW_dec_norm, float* dpre_buf, const SAE* sae, const float* W_dec_norm, const float* x,
                  const float* c, const float* dx_hat, float l1_scale, int N) {
    int C = sae->C, D = sae->D;
    #pragma omp parallel for
    for (int i = 0; i < C; i++) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) acc += dx_hat[(size_t)n * C + i];
        grads->b_dec[i] += acc;
    }
    #pragma omp parallel for
    for (int d = 0; d < D; d++) {
        float* dy = dW_dec_norm + (size_t)d * C;
        for (int n = 0; n < N; n++) {
            float cd = c[(size_t)n * D + d];
            if (cd == 0.0f) continue;
            for (int i = 0; i < C; i++) dy[i] += cd * dx_hat[(size_t)n * C + i];
        }
    }
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float* g = dx_hat + (size_t)n * C;
        for (int d = 0; d < D; d++) {
            float cd = c[(size_t)n * D + d];
            float dpre = 0.0f;
            if (cd > 0.0f) {
                const float* w = W_dec_norm + (size_t)d * C;
                float acc = 0.0f;
                for (int i = 0; i < C; i++) acc += g[i] * w[i];
                dpre = acc + l1_scale;
            }
            dpre_buf[(size_t)n * D + d] = dpre;
        }
    }
    #pragma omp parallel for
    for (int d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) acc += dpre_buf[(size_t)n * D + d];
        grads->b_enc[d] += acc;
    }
    #pragma omp parallel for
    for (int i = 0; i < C; i++) {
        float* dw = grads->W_enc + (size_t)i * D;
        for (int n = 0; n < N; n++) {
            float xi = x[(size_t)n * C + i];
            const float* dp = dpre_buf + (size_t)n * D;
            for (int d = 0; d < D; d++) dw[d] += xi * dp[d];
        }
    }
}

// ----------------------------------------------------------------------------
// losses (SPEC §4)

// KL(clean || spliced) per row, summed; overwrites logits_spliced with grad_scale * (p_spliced - p_clean).
// Two expf per logit: the exponentials are kept in row buffers, and log p_clean - log p_spliced is
// (lc - ls) - (lse_c - lse_s), so no exp or log is taken twice (the LM head's V = 50257 makes this the
// CPU trainer's second-largest cost after the matmuls).
double kl_forward_backward(float* logits_spliced, const float* logits_clean, float grad_scale, int N, int V) {
    std::vector<double> rows(N);  // per-row KL, summed in row order below: the same bits for any thread count
    #pragma omp parallel
    {
        std::vector<float> es(V), ec(V);
        #pragma omp for
        for (int n = 0; n < N; n++) {
            float* ls = logits_spliced + (size_t)n * V;
            const float* lc = logits_clean + (size_t)n * V;
            float ms = -INFINITY, mc = -INFINITY;
            for (int v = 0; v < V; v++) { ms = ls[v] > ms ? ls[v] : ms; mc = lc[v] > mc ? lc[v] : mc; }
            double ss = 0.0, sc = 0.0;
            for (int v = 0; v < V; v++) {
                es[v] = expf(ls[v] - ms);
                ec[v] = expf(lc[v] - mc);
                ss += es[v];
                sc += ec[v];
            }
            float dlse = (mc + (float)log(sc)) - (ms + (float)log(ss));  // lse_c - lse_s
            float inv_ss = (float)(1.0 / ss), inv_sc = (float)(1.0 / sc);
            double kl = 0.0;
            for (int v = 0; v < V; v++) {
                float pc = ec[v] * inv_sc, ps = es[v] * inv_ss;
                kl += (double)pc * (double)((lc[v] - ls[v]) - dlse);
                ls[v] = grad_scale * (ps - pc);
            }
            rows[n] = kl;
        }
    }
    double total = 0.0;
    for (int n = 0; n < N; n++) total += rows[n];
    return total;
}

// next-token CE within each row (targets are the row's own tokens 1..T-1): sum over B*(T-1) positions
double ce_forward(const float* logits, const int* tokens, int B, int T, int V) {
    std::vector<double> rows((size_t)B * (T - 1));  // summed in order below: the same bits for any thread count
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T - 1; t++) {
            const float* l = logits + ((size_t)b * T + t) * V;
            float m = -INFINITY;
            for (int v = 0; v < V; v++) m = l[v] > m ? l[v] : m;
            double s = 0.0;
            for (int v = 0; v < V; v++) s += expf(l[v] - m);
            rows[(size_t)b * (T - 1) + t] = (double)m + log(s) - (double)l[tokens[b * T + t + 1]];
        }
    double total = 0.0;
    for (double r : rows) total += r;
    return total;
}

// sum of (a - b)^2; if da, da += grad_scale * 2 (a - b)
double mse_forward_backward(float* da, const float* a, const float* b, size_t n, float grad_scale) {
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        float diff = a[i] - b[i];
        total += (double)diff * diff;
        if (da) da[i] += grad_scale * 2.0f * diff;
    }
    return total;
}

// ----------------------------------------------------------------------------
// the engine: frozen GPT-2 and its clean pass, shared by every SAE of the run, and the scratch one
// SAE at a time uses; each SAE's own state is an SaeRun. A run trains one SAE, a --sweep several:
// each SAE's numbers are the same bits either way (SAEs never share a matmul, only inputs).

struct MicroLosses {
    double kl = NAN, sparsity = NAN, mse = NAN, ds_mse = NAN, l0 = NAN, loss = NAN;
};

// one SAE of the run: its flags, parameters, gradients, Adam moments, and its run on the host
struct SaeRun {
    TrainConfig cfg;                 // the run's flags with this SAE's --sweep line
    int L = 0, D = 0;
    SAE sae, grads;
    std::vector<float> adam_m, adam_v;
    std::vector<float> W_dec_norm, inv_norm;  // (D,C), (D): the normalised decoder of the current update
    std::vector<float> dW_dec_norm;  // (D,C) gradient wrt W_dec_norm, accumulated over an update's micro-batches
    std::vector<float> fired;        // (D) features that fired in the current alive window
    RunState run;                    // step, log, schedule (llmc/run.h)
};

struct Engine {
    GPT2 model;
    int B = 0, T = 0, C = 0, V = 0, NH = 0, n_layer = 0;
    int L_lo = 0, L_hi = 0;          // the lowest and highest SAE layer
    bool train_logits = false;       // some SAE trains on the KL: the clean pass goes to the logits
    // the clean pass: clean[l - L_lo] is resid_pre_l for l in [L_lo, n_layer), an SAE's input and
    // the e2e+ds targets; the clean logits every KL uses
    std::vector<std::vector<float>> clean;
    std::vector<float> logits_clean;
    std::vector<int> argmax_clean;   // (N) the eval's top-1 of the clean logits
    // scratch for one SAE at a time, sized for the largest
    std::vector<float> resid, c, x_hat, dpre, dx_hat, dresid, lnf, lnf_mean, lnf_rstd, dlnf, logits_spliced;
    std::vector<BlockActs> spliced_acts;           // blocks L..n_layer-1 of the spliced run
    BlockActs scratch_acts;                        // blocks run without a backward
    BlockGrads block_grads;
    std::vector<std::vector<float>> ds_spliced;    // spliced resid_pre_k, k = L+1..n_layer-1
};

// what one SAE holds: parameters, gradients, Adam m and v, W_dec_norm and dW_dec_norm, inv_norm and fired
size_t sae_run_floats(int C, int D) { return 4 * sae_num_parameters(C, D) + 2 * (size_t)D * C + 2 * (size_t)D; }

// The memory plan of the run, printed per SAE before anything is allocated: the engine (GPT-2, the
// clean pass and the scratch, sized for the largest SAE and the lowest layer) and each SAE. A sweep
// that does not fit says how many of its SAEs would.
void plan_memory(const Engine* e, const std::vector<TrainConfig>& cfgs, const std::vector<int>& d_sae, int B) {
    size_t N = (size_t)B * e->T, C = e->C, V = e->V;
    size_t acts = block_acts_floats(B, e->T, e->C, e->NH);
    // bytes of the engine for the first k SAEs: its clean pass starts at their lowest layer, its
    // scratch holds their largest activations, and the spliced activations are kept if one is e2e
    auto engine_bytes = [&](size_t k) {
        int L_lo = e->n_layer, D_max = 0;
        bool downstream = false;
        for (size_t i = 0; i < k; i++) {
            L_lo = std::min(L_lo, cfgs[i].layer);
            D_max = std::max(D_max, d_sae[i]);
            downstream = downstream || cfgs[i].mode != MODE_LOCAL;
        }
        return 4.0 * ((size_t)(e->n_layer - L_lo) * N * C + 2 * N * V + N * C * 6 + N * 3 + 2 * N * D_max + acts +
                      (downstream ? (size_t)(e->n_layer - L_lo) * acts : 0) + (size_t)std::max(e->n_layer - 1 - L_lo, 0) * N * C);
    };
    std::vector<double> per_sae;
    for (size_t i = 0; i < cfgs.size(); i++) per_sae.push_back(4.0 * sae_run_floats(e->C, d_sae[i]));
    auto total_bytes = [&](size_t k) {
        double t = engine_bytes(k);
        for (size_t i = 0; i < k; i++) t += per_sae[i];
        return t;
    };
    double engine = engine_bytes(cfgs.size()), total = total_bytes(cfgs.size());
    printf("host memory plan: GPT-2 %.1f MiB, clean pass and activations %.1f MiB, %s %.1f MiB\n", e->model.num_parameters * 4.0 / (1 << 20),
           engine / (1 << 20), cfgs.size() > 1 ? "SAEs with gradients and Adam moments" : "SAE with gradients and Adam moments",
           (total - engine) / (1 << 20));
    if (cfgs.size() > 1) {
        for (size_t i = 0; i < cfgs.size(); i++) printf("  SAE %-16s %9.1f MiB\n", cfgs[i].name.c_str(), per_sae[i] / (1 << 20));
        long long avail = host_memory_available();
        if (avail > 0 && total > (double)avail) {
            size_t fit = 0;
            while (fit < cfgs.size() && total_bytes(fit + 1) <= (double)avail) fit++;
            die("the sweep needs %.2f GiB of host memory but only %.2f GiB are available: %zu of its %zu SAEs would fit (in file order)",
                total / (1 << 30), avail / (double)(1 << 30), fit, cfgs.size());
        }
    }
    check_host_memory(per_sae[0], "the SAE with its gradients and Adam moments");
    check_host_memory(total, "the SAE, its gradients and Adam moments and the activations");
}

// the engine for SAEs at layers and in modes cfgs (d_sae each), B rows a micro-batch at most
void engine_init(Engine* e, const std::vector<TrainConfig>& cfgs, const std::vector<int>& d_sae, int B) {
    const GPT2Config& mc = e->model.config;
    e->B = B; e->T = cfgs[0].seq_len; e->C = mc.channels; e->V = mc.vocab_size; e->NH = mc.num_heads; e->n_layer = mc.num_layers;
    plan_memory(e, cfgs, d_sae, B);
    e->L_lo = e->n_layer; e->L_hi = 0;
    int D_max = 0;
    for (size_t i = 0; i < cfgs.size(); i++) {
        e->L_lo = std::min(e->L_lo, cfgs[i].layer);
        e->L_hi = std::max(e->L_hi, cfgs[i].layer);
        D_max = std::max(D_max, d_sae[i]);
        e->train_logits = e->train_logits || cfgs[i].mode != MODE_LOCAL;
    }
    size_t N = (size_t)B * e->T, C = e->C, V = e->V;
    e->clean.assign(e->n_layer - e->L_lo, std::vector<float>(N * C));
    e->logits_clean.resize(N * V); e->logits_spliced.resize(N * V); e->argmax_clean.resize(N);  // eval needs them in every mode
    e->resid.resize(N * C); e->x_hat.resize(N * C); e->dx_hat.resize(N * C); e->dresid.resize(N * C);
    e->c.resize(N * D_max); e->dpre.resize(N * D_max);
    e->lnf.resize(N * C); e->lnf_mean.resize(N); e->lnf_rstd.resize(N); e->dlnf.resize(N * C);
    block_acts_allocate(&e->scratch_acts, B, e->T, e->C, e->NH);
    if (e->train_logits) {
        e->spliced_acts.resize(e->n_layer - e->L_lo);
        for (auto& a : e->spliced_acts) block_acts_allocate(&a, B, e->T, e->C, e->NH);
    }
    e->ds_spliced.assign(std::max(e->n_layer - 1 - e->L_lo, 0), std::vector<float>(N * C));
}

// an SAE's training state beside its parameters (loaded or initialised already into s->sae)
void sae_run_init(SaeRun* s, const TrainConfig& cfg, int C) {
    s->cfg = cfg;
    s->L = cfg.layer;
    s->D = s->sae.D;
    sae_allocate(&s->grads, C, s->D);
    s->adam_m.assign(s->sae.num_parameters, 0.0f);
    s->adam_v.assign(s->sae.num_parameters, 0.0f);
    s->W_dec_norm.resize((size_t)s->D * C); s->inv_norm.resize(s->D); s->dW_dec_norm.resize((size_t)s->D * C);
    s->fired.assign(s->D, 0.0f);
}

// the SAE input of an SAE at layer L: the centred residual entering block L
const float* sae_input(const Engine* e, int L) { return e->clean[L - e->L_lo].data(); }

// The clean pass, once per micro-batch for every SAE: embedding, then blocks 0..n_layer-1 keeping
// each resid_pre_l from the lowest SAE layer on, then the LM head; to_logits false stops at the
// highest SAE layer (local mode needs no logits)
void clean_forward(Engine* e, const int* tokens, int B, bool to_logits) {
    const GPT2Weights& w = e->model.params;
    int N = B * e->T;
    std::vector<float>& r = e->resid;
    encoder_forward(r.data(), tokens, w.wte, w.wpe, B, e->T, e->C);
    size_t bytes = (size_t)N * e->C * sizeof(float);
    int blocks = to_logits ? e->n_layer : e->L_hi;
    for (int l = 0; l < blocks; l++) {
        if (l >= e->L_lo) memcpy(e->clean[l - e->L_lo].data(), r.data(), bytes);
        block_forward(&e->model, l, &e->scratch_acts, r.data(), r.data(), B, e->T);
    }
    if (!to_logits) memcpy(e->clean[e->L_hi - e->L_lo].data(), r.data(), bytes);  // the highest SAE layer's input
    if (to_logits) lm_head_forward(&e->model, e->logits_clean.data(), e->lnf.data(), nullptr, nullptr, r.data(), N);
}

void sae_forward(Engine* e, SaeRun* s, int B) {
    int N = B * e->T;
    sae_decoder_normalize(s->W_dec_norm.data(), s->inv_norm.data(), s->sae.W_dec, s->D, e->C);
    sae_encoder_forward(e->c.data(), sae_input(e, s->L), s->sae.W_enc, s->sae.b_enc, N, e->C, s->D);
    sae_decoder_forward(e->x_hat.data(), e->c.data(), s->W_dec_norm.data(), s->sae.b_dec, N, e->C, s->D);
}

// spliced run from x_hat at layer L to the logits; with_grad keeps every block's activations
void spliced_forward(Engine* e, int L, int B, bool with_grad) {
    int N = B * e->T;
    std::vector<float>& r = e->resid;
    memcpy(r.data(), e->x_hat.data(), (size_t)N * e->C * sizeof(float));
    for (int l = L; l < e->n_layer; l++) {
        if (l > L) memcpy(e->ds_spliced[l - L - 1].data(), r.data(), (size_t)N * e->C * sizeof(float));
        BlockActs* a = with_grad ? &e->spliced_acts[l - L] : &e->scratch_acts;
        block_forward(&e->model, l, a, r.data(), r.data(), B, e->T);
    }
    lm_head_forward(&e->model, e->logits_spliced.data(), e->lnf.data(), e->lnf_mean.data(), e->lnf_rstd.data(), r.data(), N);
}

// l1_sum += Σ|c|, l0_sum += count(c > 0), fired[d] = 1 where feature d fired; fire_count (D), if
// given, += the tokens each feature fired on. c (N,D) >= 0 after the ReLU.
void sae_sparsity_l0(double* l1_sum, double* l0_sum, float* fired, const float* c, int N, int D, long long* fire_count = nullptr) {
    for (size_t i = 0; i < (size_t)N * D; i++) {
        *l1_sum += c[i];
        if (c[i] > 0.0f) {
            *l0_sum += 1.0;
            if (fired) fired[i % D] = 1.0f;
            if (fire_count) fire_count[i % D]++;
        }
    }
}

// one micro-batch of one SAE, after the clean pass (clean_forward): forward, losses, backward into
// s->grads (+=), everything scaled by 1/accum
MicroLosses micro_step(Engine* e, SaeRun* s, int accum) {
    const TrainConfig& cfg = s->cfg;
    int B = e->B, T = e->T, C = e->C, N = B * T, L = s->L;
    const float* x = sae_input(e, L);
    MicroLosses out;
    sae_forward(e, s, B);
    double l1 = 0.0, l0 = 0.0;
    sae_sparsity_l0(&l1, &l0, s->fired.data(), e->c.data(), N, s->D);
    out.sparsity = l1 / N / C;
    out.l0 = l0 / N;
    std::fill(e->dx_hat.begin(), e->dx_hat.end(), 0.0f);
    out.loss = cfg.sparsity_coeff * out.sparsity;
    // MSE(x_hat, x) is logged in every mode; it is part of the loss only in local mode
    float mse_scale = cfg.mode == MODE_LOCAL ? (float)(cfg.mse_coeff / ((double)N * C * accum)) : 0.0f;
    out.mse = mse_forward_backward(cfg.mode == MODE_LOCAL ? e->dx_hat.data() : nullptr, e->x_hat.data(), x, (size_t)N * C, mse_scale) / ((double)N * C);
    if (cfg.mode == MODE_LOCAL) out.loss += cfg.mse_coeff * out.mse;
    if (cfg.mode != MODE_LOCAL) {
        spliced_forward(e, L, B, true);
        out.kl = kl_forward_backward(e->logits_spliced.data(), e->logits_clean.data(), (float)(cfg.kl_coeff / ((double)N * accum)), N, e->V) / N;
        out.loss += cfg.kl_coeff * out.kl;
        // backward: LM head, then blocks n_layer-1..L; the downstream MSE terms enter at resid_pre_k
        lm_head_backward(&e->model, e->dresid.data(), e->dlnf.data(), e->logits_spliced.data(), e->resid.data(), e->lnf_mean.data(),
                         e->lnf_rstd.data(), N);
        // the downstream MSE is trained on (and logged) in e2e+ds only; plain e2e has it as an eval metric
        int K = e->n_layer - 1 - L;
        bool ds = cfg.mode == MODE_E2E_DS;
        double ds_total = 0.0;
        for (int l = e->n_layer - 1; l >= L; l--) {
            const BlockActs* a = &e->spliced_acts[l - L];
            block_backward(&e->model, l, a, &e->block_grads, e->dresid.data(), e->dresid.data(), B, T);
            if (ds && l > L) {
                // dresid is now the gradient wrt resid_pre_l, where the e2e+ds term for layer l enters
                float scale = (float)(cfg.ds_coeff / K / ((double)N * C * accum));
                ds_total += mse_forward_backward(e->dresid.data(), e->ds_spliced[l - L - 1].data(), e->clean[l - e->L_lo].data(),
                                                 (size_t)N * C, scale) / ((double)N * C);
            }
        }
        if (ds) out.ds_mse = ds_total / K;
        if (cfg.mode == MODE_E2E_DS) out.loss += cfg.ds_coeff * out.ds_mse;
        for (size_t i = 0; i < (size_t)N * C; i++) e->dx_hat[i] += e->dresid[i];
    }
    sae_backward(&s->grads, s->dW_dec_norm.data(), e->dpre.data(), &s->sae, s->W_dec_norm.data(), x, e->c.data(),
                 e->dx_hat.data(), (float)(cfg.sparsity_coeff / ((double)N * C * accum)), N);
    return out;
}

// dW_dec from the dW_dec_norm the update's micro-batches accumulated
void sae_finish_grads(SaeRun* s) {
    sae_decoder_normalize_backward(s->grads.W_dec, s->dW_dec_norm.data(), s->sae.W_dec, s->inv_norm.data(), s->D, s->grads.C);
}

// Σ g² over all SAE parameters: torch's norm of the per-tensor norms, in double in one fixed order
double global_norm_squared(const float* g, size_t n) {
    double total_sq = 0.0;
    for (size_t i = 0; i < n; i++) total_sq += (double)g[i] * g[i];
    return total_sq;
}

// global-norm clipping as torch.nn.utils.clip_grad_norm_, then Adam(W) as PyTorch (SPEC §5); the
// arguments of the GPU's adamw_update (llmc/adamw.cuh), grad_norm_sq from global_norm_squared
void adamw_update(float* params, float* m, float* v, const float* grads, size_t n, double lr, double beta1, double beta2,
                  double step_size, double bc2_sqrt, double eps, double weight_decay, double grad_norm_sq, double max_grad_norm) {
    float clip = max_grad_norm > 0.0 ? fminf(1.0f, (float)max_grad_norm / ((float)sqrt(grad_norm_sq) + 1e-6f)) : 1.0f;
    float b1 = (float)beta1, omb1 = (float)(1.0 - beta1), b2 = (float)beta2, omb2 = (float)(1.0 - beta2);
    float step = (float)step_size, bc2 = (float)bc2_sqrt, epsf = (float)eps, decay = (float)(1.0 - lr * weight_decay);
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float gi = grads[i] * clip;
        if (weight_decay > 0) params[i] *= decay;
        m[i] = b1 * m[i] + omb1 * gi;
        v[i] = b2 * v[i] + omb2 * gi * gi;
        float denom = sqrtf(v[i]) / bc2 + epsf;
        params[i] -= step * (m[i] / denom);
    }
}

// one optimizer update t (1 for the first) at learning rate lr; returns the gradient norm before clipping
double update(SaeRun* s, double lr, long long t) {
    size_t n = s->sae.num_parameters;
    double norm_sq = global_norm_squared(s->grads.memory.data(), n);
    double step_size, bc2_sqrt;
    adamw_scalars((int)t, lr, 0.9, 0.999, &step_size, &bc2_sqrt);
    adamw_update(s->sae.memory.data(), s->adam_m.data(), s->adam_v.data(), s->grads.memory.data(), n, lr, 0.9, 0.999, step_size,
                 bc2_sqrt, 1e-8, s->cfg.weight_decay, norm_sq, s->cfg.max_grad_norm);
    return (float)sqrt(norm_sq);
}

// ----------------------------------------------------------------------------
// eval (SPEC §6) on the first eval_rows rows of the val data, for every SAE at once (one clean
// pass per batch), with the number of eval tokens each feature fired on (the export's sparsity)

std::vector<EvalMetrics> evaluate(Engine* e, std::vector<SaeRun>& saes, const DataLoader* val, int eval_rows) {
    int T = e->T, C = e->C;
    std::vector<EvalSums> sums(saes.size());
    for (size_t i = 0; i < saes.size(); i++) {
        sums[i].ds_mse.assign(std::max(e->n_layer - 1 - saes[i].L, 0), 0.0);
        sums[i].fire_count.assign(saes[i].D, 0);
    }
    std::vector<int> tokens((size_t)e->B * T);
    for (int row = 0; row < eval_rows; row += e->B) {
        int B = std::min(e->B, eval_rows - row);
        int N = B * T;
        dataloader_get_rows(val, row, B, tokens.data());
        clean_forward(e, tokens.data(), B, true);
        double ce_clean = ce_forward(e->logits_clean.data(), tokens.data(), B, T, e->V);
        for (int n = 0; n < N; n++) {
            const float* lc = e->logits_clean.data() + (size_t)n * e->V;
            int ac = 0;
            for (int v = 1; v < e->V; v++) if (lc[v] > lc[ac]) ac = v;
            e->argmax_clean[n] = ac;
        }
        for (size_t i = 0; i < saes.size(); i++) {
            SaeRun* s = &saes[i];
            EvalSums& su = sums[i];
            const float* x = sae_input(e, s->L);
            sae_forward(e, s, B);
            double l1 = 0.0;  // not an eval metric
            sae_sparsity_l0(&l1, &su.l0, nullptr, e->c.data(), N, s->D, su.fire_count.data());
            // explained variance against the mean of x over this batch's tokens
            std::vector<double> xmean(C, 0.0);
            for (int n = 0; n < N; n++) for (int j = 0; j < C; j++) xmean[j] += x[(size_t)n * C + j];
            for (int j = 0; j < C; j++) xmean[j] /= N;
            for (int n = 0; n < N; n++) {
                double num = 0, den = 0;
                for (int j = 0; j < C; j++) {
                    double xi = x[(size_t)n * C + j], d = e->x_hat[(size_t)n * C + j] - xi;
                    num += d * d;
                    den += (xi - xmean[j]) * (xi - xmean[j]);
                    su.mse += d * d;
                }
                su.explained_variance += 1.0 - num / den;
            }
            spliced_forward(e, s->L, B, false);
            for (size_t k = 0; k < su.ds_mse.size(); k++)
                su.ds_mse[k] += mse_forward_backward(nullptr, e->ds_spliced[k].data(), e->clean[s->L + 1 + k - e->L_lo].data(), (size_t)N * C, 0.0f);
            su.ce_clean += ce_clean;
            su.ce_spliced += ce_forward(e->logits_spliced.data(), tokens.data(), B, T, e->V);
            for (int n = 0; n < N; n++) {
                const float* ls = e->logits_spliced.data() + (size_t)n * e->V;
                int as = 0;
                for (int v = 1; v < e->V; v++) if (ls[v] > ls[as]) as = v;
                su.top1_agree += e->argmax_clean[n] == as;
            }
            su.kl += kl_forward_backward(e->logits_spliced.data(), e->logits_clean.data(), 0.0f, N, e->V);
            su.tokens += N;
        }
    }
    std::vector<EvalMetrics> out;
    for (size_t i = 0; i < saes.size(); i++)
        out.push_back(eval_metrics_finish(sums[i], eval_rows, T, C, saes[i].D, saes[i].run.ts.last_alive));
    return out;
}

// ----------------------------------------------------------------------------
// --dump-features, the ablation effect: for the features that fire most often on the eval rows,
// the mean change in KL and in CE on the eval tokens when that feature alone is zeroed in the
// spliced model (its activations set to 0 and x_hat decoded again, exactly as the decoder does)

AblationEffects ablation_effects(Engine* e, SaeRun* s, const DataLoader* val, int eval_rows) {
    AblationEffects ab;
    ab.features = most_frequent_features(s->run.sparsity, ABLATION_FEATURES);
    int T = e->T, D = s->D, F = (int)ab.features.size();
    std::vector<double> kl(F, 0.0), ce(F, 0.0);
    std::vector<float> column((size_t)e->B * T);
    std::vector<int> tokens((size_t)e->B * T);
    for (int row = 0; row < eval_rows; row += e->B) {
        int B = std::min(e->B, eval_rows - row), N = B * T;
        dataloader_get_rows(val, row, B, tokens.data());
        clean_forward(e, tokens.data(), B, true);
        sae_forward(e, s, B);
        spliced_forward(e, s->L, B, false);
        ab.ce += ce_forward(e->logits_spliced.data(), tokens.data(), B, T, e->V);
        ab.kl += kl_forward_backward(e->logits_spliced.data(), e->logits_clean.data(), 0.0f, N, e->V);
        for (int j = 0; j < F; j++) {
            long long f = ab.features[j];
            for (int n = 0; n < N; n++) { column[n] = e->c[(size_t)n * D + f]; e->c[(size_t)n * D + f] = 0.0f; }
            sae_decoder_forward(e->x_hat.data(), e->c.data(), s->W_dec_norm.data(), s->sae.b_dec, N, e->C, D);
            for (int n = 0; n < N; n++) e->c[(size_t)n * D + f] = column[n];
            spliced_forward(e, s->L, B, false);
            ce[j] += ce_forward(e->logits_spliced.data(), tokens.data(), B, T, e->V);
            kl[j] += kl_forward_backward(e->logits_spliced.data(), e->logits_clean.data(), 0.0f, N, e->V);
        }
        ab.tokens += N;
    }
    ablation_finish(&ab, kl, ce, eval_rows, T);
    return ab;
}

// ----------------------------------------------------------------------------
// --dump-features (llmc/feature_dump.h), for every SAE (one clean pass per batch): pass 1 over the
// first val tokens gives firing counts, histograms and the top-K; pass 2 over the same tokens the
// band examples (which need each feature's maximum) and every example's context; then the logit
// effects from the decoder and the unembedding. Only the encoder runs: c is all the dump reads.

void dump_features(Engine* e, std::vector<SaeRun>& saes, const DataLoader* val) {
    double t0 = now_seconds();
    std::vector<FeatureDump> fds(saes.size());
    for (size_t i = 0; i < saes.size(); i++) feature_dump_begin(&fds[i], saes[i].cfg, saes[i].D);
    feature_dump_stream(val, saes[0].cfg, e->B, [&](const int* tokens, int B, long long first_pos) {
        clean_forward(e, tokens, B, false);
        for (size_t i = 0; i < saes.size(); i++) {
            sae_encoder_forward(e->c.data(), sae_input(e, saes[i].L), saes[i].sae.W_enc, saes[i].sae.b_enc, B * e->T, e->C, saes[i].D);
            feature_dump_add(&fds[i], e->c.data(), B * e->T, first_pos);
        }
    });
    feature_dump_stream(val, saes[0].cfg, e->B, [&](const int* tokens, int B, long long first_pos) {
        clean_forward(e, tokens, B, false);
        for (size_t i = 0; i < saes.size(); i++) {
            sae_encoder_forward(e->c.data(), sae_input(e, saes[i].L), saes[i].sae.W_enc, saes[i].sae.b_enc, B * e->T, e->C, saes[i].D);
            feature_dump_add_bands(&fds[i], e->c.data(), B * e->T, first_pos);
            feature_dump_add_contexts(&fds[i], e->c.data(), B * e->T, first_pos, e->T);
        }
    });
    const GPT2Weights& w = e->model.params;
    const float* mean = e->model.unembed_mean.empty() ? nullptr : e->model.unembed_mean.data();
    for (size_t i = 0; i < saes.size(); i++) {
        SaeRun* s = &saes[i];
        sae_decoder_normalize(s->W_dec_norm.data(), s->inv_norm.data(), s->sae.W_dec, s->D, e->C);
        feature_dump_logit_effects(&fds[i], s->W_dec_norm.data(), w.lnfw, w.wte_unembed, mean, e->C, e->V);
        feature_dump_finish(&fds[i], val, s->cfg, e->model.source, now_seconds() - t0);
    }
}

// ----------------------------------------------------------------------------
// main: the training loop

int train_main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // step lines appear as they happen, also in a log file
    TrainConfig raw = parse_flags(argc, argv, false);
    apply_demo_presets(raw, false);
    std::vector<TrainConfig> cfgs = run_configs(raw, false);  // one per SAE
    const TrainConfig& cfg = cfgs[0];                         // what the SAEs share
    Engine e;
    load_model(&e.model, cfg);
    std::vector<int> d_sae;
    for (const TrainConfig& c : cfgs) d_sae.push_back(planned_d_sae(c, e.model.config));
    RunData data;
    open_loaders(&data, cfg, e.model.config.vocab_size);
    engine_init(&e, cfgs, d_sae, cfg.batch);
    std::vector<SaeRun> saes(cfgs.size());
    for (size_t i = 0; i < cfgs.size(); i++) {
        load_sae(&saes[i].sae, cfgs[i], e.C);
        sae_run_init(&saes[i], cfgs[i], e.C);
    }
    if (!raw.sweep.empty()) print_sweep(cfgs, d_sae);
    print_config(cfg, e.C, saes[0].D);

    std::vector<RunState*> runs = runs_begin(saes, raw, d_sae, &data, e.model.source);
    auto run_eval = [&](long long step) {
        if (!data.eval_rows) return;
        std::vector<EvalMetrics> ms = evaluate(&e, saes, &data.val, data.eval_rows);
        for (size_t i = 0; i < saes.size(); i++) report_eval(&saes[i].run, saes[i].cfg, step, ms[i]);
    };
    auto save = [&](long long step) { save_runs(saes, raw.out, step, data); };
    if (saes[0].run.ts.step == 0 || cfg.eval_only) run_eval(0);
    std::vector<int> tokens((size_t)cfg.batch * cfg.seq_len);
    long long step = saes[0].run.ts.step;
    while (keep_training(saes[0].run.sched, cfg, step)) {
        double t0 = now_seconds();
        std::vector<MicroLosses> sums(saes.size());
        for (size_t i = 0; i < saes.size(); i++) {
            std::fill(saes[i].grads.memory.begin(), saes[i].grads.memory.end(), 0.0f);
            std::fill(saes[i].dW_dec_norm.begin(), saes[i].dW_dec_norm.end(), 0.0f);
            sums[i].kl = sums[i].sparsity = sums[i].mse = sums[i].ds_mse = sums[i].l0 = sums[i].loss = 0.0;
        }
        for (int a = 0; a < cfg.grad_accum; a++) {
            dataloader_next_batch(&data.train, tokens.data());
            clean_forward(&e, tokens.data(), cfg.batch, e.train_logits);
            for (size_t i = 0; i < saes.size(); i++) {
                MicroLosses ml = micro_step(&e, &saes[i], cfg.grad_accum);
                MicroLosses& su = sums[i];
                su.kl += ml.kl; su.sparsity += ml.sparsity; su.mse += ml.mse; su.ds_mse += ml.ds_mse; su.l0 += ml.l0; su.loss += ml.loss;
            }
        }
        double A = cfg.grad_accum;
        double lr = lr_at_step(cfg.lr, step, saes[0].run.sched.W, saes[0].run.sched.S, cfg.min_lr_factor);
        std::vector<double> gnorm(saes.size());
        for (size_t i = 0; i < saes.size(); i++) {
            sae_finish_grads(&saes[i]);
            gnorm[i] = update(&saes[i], lr, step + 1);
        }
        step++;
        double tps = cfg.batch * cfg.seq_len * A / (now_seconds() - t0);
        std::vector<StepLog> sls;
        for (size_t i = 0; i < saes.size(); i++) {
            SaeRun& s = saes[i];
            die_context() = sweep_context(s.cfg);
            check_finite(sums[i].loss, gnorm[i], step);
            die_context().clear();
            s.run.ts.alive_tokens += (long long)cfg.batch * cfg.seq_len * cfg.grad_accum;
            long long alive_now = -1;
            if (s.run.ts.alive_tokens >= cfg.alive_window) {
                alive_now = 0;
                for (float f : s.fired) alive_now += f > 0.0f;
                s.run.ts.last_alive = alive_now;
                std::fill(s.fired.begin(), s.fired.end(), 0.0f);
                s.run.ts.alive_tokens = 0;
            }
            const MicroLosses& su = sums[i];
            sls.push_back({step, lr, su.loss / A, su.kl / A, su.sparsity / A, su.mse / A, su.ds_mse / A, su.l0 / A, gnorm[i], tps, alive_now});
        }
        step_end(runs, cfg, sls, save, run_eval);
    }
    run_end(runs, cfg, &data, step, save, run_eval, [&] {
        dump_features(&e, saes, &data.val);
        for (SaeRun& s : saes)
            if (data.eval_rows && !s.run.sparsity.empty()) ablation_write(ablation_effects(&e, &s, &data.val, data.eval_rows), s.cfg.dump_features);
    });
    gpt2_free(&e.model);
    return 0;
}

#ifndef TESTING
int main(int argc, char** argv) { return run_main(train_main, argc, argv); }
#endif
