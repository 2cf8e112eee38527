/*
Optimiser kernels, llmc/adamw.cuh: the deterministic global gradient norm and the clipped
Adam(W) update, against a CPU reference over several steps of a small SAE (four tensors), with
clipping active on some steps and not others, a first update at lr 0, weight decay on and off,
clipping switched off, and a bit-identical rerun. Timing at the paper's W_enc size (768·46080).

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make adamw
  ./adamw [check|cpu|N]   no argument: everything; check: CPU self-test and GPU checks;
                          cpu: CPU self-test only (no GPU): the float reference update against a
                          double-precision transcription of torch.optim.Adam(W) + clip_grad_norm_;
                          N: check and time variant N alone
Variants (both llmc's adamw_update, which the trainer ships; SAE masters, gradients and Adam
state are fp32 in both precisions):
  1  the update alone (no copies), with global_norm_squared
  2  the update writing floatX copies of three ranges of the parameter block as it goes
     (ParamCopies: the trainer's bf16 W_enc and its bias copies), instead of cast_copy passes
     that read the masters again afterwards. Checked: the parameters bit-identical to variant 1's,
     each copy bit-identical to the parameters rounded on the host, the elements past each range
     untouched; timed against variant 1 + cast_copy of W_enc.
Tolerances: norms 1e-5 relative (fp32 block sums vs a double reference); params, m, v 1e-5
relative (the CPU mirrors the kernel's float operations; the GPU may fuse multiply-adds, and
its clip coefficient comes from its own fp32 norm). Exit code 1 on any mismatch.
*/
#include "common.h"
#include "../../llmc/adamw.cuh"

// ----------------------------------------------------------------------------
// CPU references

double global_norm_squared_cpu(const float* g, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

// the kernel's float operations in the kernel's order; grad_norm_sq < 0 turns clipping off
void adamw_update_cpu(float* params, float* m, float* v, const float* grads, size_t n, double lr, double beta1,
                      double beta2, double step_size, double bc2_sqrt, double eps, double weight_decay,
                      float grad_norm_sq, double max_grad_norm) {
    float clip = 1.0f;
    if (grad_norm_sq >= 0.0f && max_grad_norm > 0.0) {
        const float coef = (float)max_grad_norm / (sqrtf(grad_norm_sq) + 1e-6f);
        clip = coef > 1.0f ? 1.0f : coef;
    }
    const float one_minus_beta1 = (float)(1.0 - beta1), b2 = (float)beta2, one_minus_beta2 = (float)(1.0 - beta2);
    const float step = (float)step_size, bc2 = (float)bc2_sqrt, e = (float)eps, decay = (float)(1.0 - lr * weight_decay);
    for (size_t i = 0; i < n; i++) {
        const float g = grads[i] * clip;
        float mi = m[i] + one_minus_beta1 * (g - m[i]);
        float vi = v[i] * b2;
        vi = vi + one_minus_beta2 * g * g;
        const float denom = sqrtf(vi) / bc2 + e;
        const float p = params[i] * decay;
        params[i] = p - step * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

// ----------------------------------------------------------------------------
// CPU self-test: the float reference against PyTorch's algorithm written out in double

int cpu_self_test() {
    const size_t n = 1000;
    const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.05, max_norm = 1.0;
    std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f);
    std::vector<double> pd(n), md(n, 0.0), vd(n, 0.0);
    for (size_t i = 0; i < n; i++) pd[i] = p[i] = rand_uniform() * 2 - 1;
    double max_rel = 0.0;
    bool clipped_seen = false, unclipped_seen = false;
    for (int t = 1; t <= 4; t++) {
        std::vector<float> g(n);
        const float scale = t % 2 ? 0.01f : 1.0f;  // |g| ~ 0.18 (no clip) or ~18 (clip)
        for (size_t i = 0; i < n; i++) g[i] = scale * (rand_uniform() * 2 - 1);
        const double norm_sq = global_norm_squared_cpu(g.data(), n);
        double step_size, bc2_sqrt;
        adamw_scalars(t, lr, b1, b2, &step_size, &bc2_sqrt);
        adamw_update_cpu(p.data(), m.data(), v.data(), g.data(), n, lr, b1, b2, step_size, bc2_sqrt, eps, wd, (float)norm_sq, max_norm);
        // torch: clip_grad_norm_ then AdamW, in double
        const double total = sqrt(norm_sq), coef = fmin(1.0, max_norm / (total + 1e-6));
        (coef < 1.0 ? clipped_seen : unclipped_seen) = true;
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] * coef;
            pd[i] *= 1.0 - lr * wd;
            md[i] = b1 * md[i] + (1.0 - b1) * gi;
            vd[i] = b2 * vd[i] + (1.0 - b2) * gi * gi;
            double denom = sqrt(vd[i]) / sqrt(1.0 - pow(b2, t)) + eps;
            pd[i] -= lr / (1.0 - pow(b1, t)) * md[i] / denom;
        }
        // check_result's measure: error over |ref| + 0.1·max|ref| (m cancels to near 0 in places)
        double max_p = 0.0, max_m = 0.0;
        for (size_t i = 0; i < n; i++) { max_p = fmax(max_p, fabs(pd[i])); max_m = fmax(max_m, fabs(md[i])); }
        for (size_t i = 0; i < n; i++) {
            max_rel = fmax(max_rel, fabs(p[i] - pd[i]) / (fabs(pd[i]) + 0.1 * max_p));
            max_rel = fmax(max_rel, fabs(m[i] - md[i]) / (fabs(md[i]) + 0.1 * max_m));
        }
    }
    bool ok = max_rel < 1e-5 && clipped_seen && unclipped_seen;
    printf("  cpu Adam(W)+clip float reference vs double transcription, 4 steps (clip on 2): max rel err %.2e %s\n", max_rel, ok ? "ok" : "FAIL");
    // first update at lr 0 leaves the parameters exactly as they were
    std::vector<float> p0(p), g(n, 0.5f);
    double step_size, bc2_sqrt;
    adamw_scalars(5, 0.0, b1, b2, &step_size, &bc2_sqrt);
    adamw_update_cpu(p.data(), m.data(), v.data(), g.data(), n, 0.0, b1, b2, step_size, bc2_sqrt, eps, wd, -1.0f, 0.0);
    bool ok0 = memcmp(p.data(), p0.data(), n * sizeof(float)) == 0;
    printf("  cpu lr 0 update leaves params unchanged: %s\n", ok0 ? "ok" : "FAIL");
    return !ok + !ok0;
}

// ----------------------------------------------------------------------------
// GPU checks

int check_global_norm() {
    int failures = 0;
    const size_t sizes[] = {1, 7, 1000003, (size_t)768 * 46080};
    for (size_t n : sizes) {
        float* d_g = device_alloc<float>(n);
        float* d_out = device_alloc<float>(1);
        fill_random(d_g, n, 300 + n, -1.0f, 1.0f);
        std::vector<float> g = host_random_array<float>(n, 300 + n, -1.0f, 1.0f);
        const double ref = global_norm_squared_cpu(g.data(), n);
        poison(d_out, sizeof(float));
        global_norm_squared(d_out, d_g, n, false, 0);
        float out1, out2, out_acc;
        cudaCheck(cudaMemcpy(&out1, d_out, sizeof(float), cudaMemcpyDeviceToHost));
        global_norm_squared(d_out, d_g, n, true, 0);  // accumulate: 2·ref
        cudaCheck(cudaMemcpy(&out_acc, d_out, sizeof(float), cudaMemcpyDeviceToHost));
        global_norm_squared(d_out, d_g, n, false, 0);  // determinism
        cudaCheck(cudaMemcpy(&out2, d_out, sizeof(float), cudaMemcpyDeviceToHost));
        bool ok = fabs(out1 - ref) <= 1e-5 * ref && fabs(out_acc - 2 * ref) <= 1e-5 * 2 * ref && memcmp(&out1, &out2, sizeof(float)) == 0;
        printf("  global norm^2 n=%zu: %.8g (cpu %.8g), accumulated %.8g, rerun bit-identical %s: %s\n", n, out1, ref, out_acc,
               memcmp(&out1, &out2, sizeof(float)) == 0 ? "yes" : "NO", ok ? "ok" : "FAIL");
        failures += !ok;
        cudaCheck(cudaFree(d_g)); cudaCheck(cudaFree(d_out));
    }
    return failures;
}

// a small SAE's four parameter tensors, optimised for several steps on both sides
struct Tensors {
    int count;
    size_t sizes[4];
    std::vector<float> p[4], m[4], v[4];
    float *d_p[4], *d_m[4], *d_v[4], *d_g[4];
};

static void tensors_init(Tensors& T, int C, int D) {
    T.count = 4;
    const size_t sizes[4] = {(size_t)C * D, (size_t)D, (size_t)D * C, (size_t)C};  // W_enc b_enc W_dec b_dec
    for (int k = 0; k < 4; k++) {
        size_t n = T.sizes[k] = sizes[k];
        T.p[k] = host_random_array<float>(n, 400 + k, -0.1f, 0.1f);
        T.m[k].assign(n, 0.0f);
        T.v[k].assign(n, 0.0f);
        T.d_p[k] = to_device<float>(T.p[k].data(), n);
        T.d_m[k] = to_device<float>(T.m[k].data(), n);
        T.d_v[k] = to_device<float>(T.v[k].data(), n);
        T.d_g[k] = device_alloc<float>(n);
    }
}

static void tensors_free(Tensors& T) {
    for (int k = 0; k < T.count; k++) {
        cudaCheck(cudaFree(T.d_p[k])); cudaCheck(cudaFree(T.d_m[k])); cudaCheck(cudaFree(T.d_v[k])); cudaCheck(cudaFree(T.d_g[k]));
    }
}

// runs `steps` updates on GPU and CPU, comparing after each; returns failures. final_params
// receives the GPU's parameters at the end (for the determinism check).
static int run_optimizer(int C, int D, double weight_decay, double max_grad_norm, int steps, bool verbose,
                         std::vector<float>* final_params) {
    const double lrs[] = {0.0, 5e-4, 4e-4, 3e-4, 5e-4, 1e-4};
    const float scales[] = {0.01f, 0.01f, 1.0f, 0.015f, 0.01f, 0.5f};  // ~0.01·sqrt(n/3) ≈ 5 < 10; 1.0 ≈ 513: clipped
    const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    int failures = 0;
    Tensors T;
    tensors_init(T, C, D);
    float* d_norm_sq = device_alloc<float>(1);
    for (int s = 0; s < steps; s++) {
        const int t = s + 1;
        double norm_sq_ref = 0.0;
        std::vector<float> g[4];
        for (int k = 0; k < 4; k++) {
            g[k] = host_random_array<float>(T.sizes[k], 500 + 10 * s + k, -scales[s], scales[s]);
            cudaCheck(cudaMemcpy(T.d_g[k], g[k].data(), T.sizes[k] * sizeof(float), cudaMemcpyHostToDevice));
            norm_sq_ref += global_norm_squared_cpu(g[k].data(), T.sizes[k]);
        }
        poison(d_norm_sq, sizeof(float));
        for (int k = 0; k < 4; k++) global_norm_squared(d_norm_sq, T.d_g[k], T.sizes[k], k > 0, 0);
        double step_size, bc2_sqrt;
        adamw_scalars(t, lrs[s], beta1, beta2, &step_size, &bc2_sqrt);
        for (int k = 0; k < 4; k++)
            adamw_update(T.d_p[k], T.d_m[k], T.d_v[k], T.d_g[k], T.sizes[k], lrs[s], beta1, beta2, step_size, bc2_sqrt, eps,
                         weight_decay, d_norm_sq, max_grad_norm, 0);
        float norm_sq;
        cudaCheck(cudaMemcpy(&norm_sq, d_norm_sq, sizeof(float), cudaMemcpyDeviceToHost));
        const bool norm_ok = fabs(norm_sq - norm_sq_ref) <= 1e-5 * norm_sq_ref;
        failures += !norm_ok;
        // the CPU clips with the GPU's fp32 norm (its own is checked just above), so the
        // comparison isolates the update
        std::vector<float> p_before = T.p[0];
        for (int k = 0; k < 4; k++)
            adamw_update_cpu(T.p[k].data(), T.m[k].data(), T.v[k].data(), g[k].data(), T.sizes[k], lrs[s], beta1, beta2,
                             step_size, bc2_sqrt, eps, weight_decay, max_grad_norm > 0 ? norm_sq : -1.0f, max_grad_norm);
        const double coef = max_grad_norm > 0 ? fmin(1.0, max_grad_norm / (sqrt(norm_sq_ref) + 1e-6)) : 1.0;
        if (verbose)
            printf("  step %d lr %.0e wd %g: grad norm %.6g (cpu %.6g) %s, clip coef %.4g%s\n", t, lrs[s], weight_decay,
                   sqrt(norm_sq), sqrt(norm_sq_ref), norm_ok ? "ok" : "FAIL", coef, coef < 1.0 ? " (clipping)" : "");
        const char* names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
        for (int k = 0; k < 4; k++) {
            char name[64];
            snprintf(name, sizeof(name), "step %d %s params", t, names[k]);
            failures += !check_result(T.d_p[k], T.p[k].data(), name, T.sizes[k], 1e-5f);
            snprintf(name, sizeof(name), "step %d %s m", t, names[k]);
            failures += !check_result(T.d_m[k], T.m[k].data(), name, T.sizes[k], 1e-5f);
            snprintf(name, sizeof(name), "step %d %s v", t, names[k]);
            failures += !check_result(T.d_v[k], T.v[k].data(), name, T.sizes[k], 1e-5f);
        }
        if (lrs[s] == 0.0) {  // an lr-0 update must leave the parameters bit-identical
            std::vector<float> p_gpu = from_device(T.d_p[0], T.sizes[0]);
            bool same = memcmp(p_gpu.data(), p_before.data(), T.sizes[0] * sizeof(float)) == 0;
            printf("  step %d (lr 0) params unchanged: %s\n", t, same ? "ok" : "FAIL");
            failures += !same;
        }
    }
    if (final_params) *final_params = from_device(T.d_p[0], T.sizes[0]);
    tensors_free(T);
    cudaCheck(cudaFree(d_norm_sq));
    return failures;
}

int run_checks() {
    int failures = check_global_norm();
    const int C = 96, D = 4099;  // odd D: partial blocks everywhere
    printf(" Adam, no weight decay, max_grad_norm 10:\n");
    std::vector<float> run1, run2;
    failures += run_optimizer(C, D, 0.0, 10.0, 6, true, &run1);
    printf(" AdamW, weight decay 0.1, max_grad_norm 10:\n");
    failures += run_optimizer(C, D, 0.1, 10.0, 6, true, nullptr);
    printf(" clipping off (max_grad_norm 0):\n");
    failures += run_optimizer(C, D, 0.0, 0.0, 3, true, nullptr);
    failures += run_optimizer(C, D, 0.0, 10.0, 6, false, &run2);
    bool same = run1.size() == run2.size() && memcmp(run1.data(), run2.data(), run1.size() * sizeof(float)) == 0;
    printf("  6-step rerun bit-identical: %s\n", same ? "ok" : "FAIL");
    failures += !same;
    return failures;
}

// ----------------------------------------------------------------------------
// timing at the paper's largest tensor, W_enc (768·46080 fp32)

void timing(int only) {
    printf("timing, n = 768*46080 fp32 (median of 20):\n");
    const size_t n = (size_t)768 * 46080;
    float *d_p = device_alloc<float>(n), *d_m = device_alloc<float>(n), *d_v = device_alloc<float>(n), *d_g = device_alloc<float>(n);
    float* d_norm_sq = device_alloc<float>(1);
    fill_random(d_p, n, 1, -0.1f, 0.1f);
    fill_random(d_g, n, 2, -1e-3f, 1e-3f);
    cudaCheck(cudaMemset(d_m, 0, n * sizeof(float)));
    cudaCheck(cudaMemset(d_v, 0, n * sizeof(float)));
    float ms = benchmark_kernel(3, 20, [&] { global_norm_squared(d_norm_sq, d_g, n, false, 0); });
    report_bandwidth("global norm^2 (W_enc)", ms, 4.0 * n);
    double step_size, bc2_sqrt;
    adamw_scalars(10, 5e-4, 0.9, 0.999, &step_size, &bc2_sqrt);
    ms = benchmark_kernel(3, 20, [&] {
        adamw_update(d_p, d_m, d_v, d_g, n, 5e-4, 0.9, 0.999, step_size, bc2_sqrt, 1e-8, 0.0, d_norm_sq, 10.0, 0);
    });
    report_bandwidth("adamw update (W_enc)", ms, 28.0 * n);  // read p m v g, write p m v
    if (!only || only == 2) {  // the bf16 copy of W_enc: a cast_copy pass after the update, or written by it
        bf16* d_x = device_alloc<bf16>(n);
        ParamCopies<bf16> copies;
        copies.dst[0] = d_x;
        copies.n[0] = n;
        const float ms1 = benchmark_kernel(3, 20, [&] {
            adamw_update(d_p, d_m, d_v, d_g, n, 5e-4, 0.9, 0.999, step_size, bc2_sqrt, 1e-8, 0.0, d_norm_sq, 10.0, 0);
            cast_copy(d_x, d_p, n, 0);
        });
        report_bandwidth("v1 + cast_copy to bf16", ms1, 34.0 * n);
        const float ms2 = benchmark_kernel(3, 20, [&] {
            adamw_update(d_p, d_m, d_v, d_g, n, 5e-4, 0.9, 0.999, step_size, bc2_sqrt, 1e-8, 0.0, d_norm_sq, 10.0, copies, 0);
        });
        report_bandwidth("v2 update writing bf16", ms2, 30.0 * n);
        printf("  v2 is %.2fx v1 + cast_copy\n", ms1 / ms2);
        cudaCheck(cudaFree(d_x));
    }
    cudaCheck(cudaFree(d_p)); cudaCheck(cudaFree(d_m)); cudaCheck(cudaFree(d_v)); cudaCheck(cudaFree(d_g)); cudaCheck(cudaFree(d_norm_sq));
}

// variant 2: one parameter block (W_enc, b_enc, W_dec, b_dec) as the trainer keeps it, updated
// with and without copies of W_enc, b_enc and b_dec for `steps` steps
template <typename floatX>
int check_copies(int C, int D, int steps) {
    const size_t CD = (size_t)C * D, P = 2 * CD + D + C;
    const size_t begin[3] = {0, CD, 2 * CD + D}, len[3] = {CD, (size_t)D, (size_t)C};
    const int guard = 16;  // elements past each copy that must stay poisoned
    std::vector<float> p0 = host_random_array<float>(P, 900, -0.1f, 0.1f);
    float *d_p1 = to_device<float>(p0.data(), P), *d_p2 = to_device<float>(p0.data(), P);
    float *d_m1 = device_alloc<float>(P), *d_v1 = device_alloc<float>(P), *d_m2 = device_alloc<float>(P), *d_v2 = device_alloc<float>(P);
    for (float* d : {d_m1, d_v1, d_m2, d_v2}) cudaCheck(cudaMemset(d, 0, P * sizeof(float)));
    float *d_g = device_alloc<float>(P), *d_norm_sq = device_alloc<float>(1);
    ParamCopies<floatX> copies;
    for (int k = 0; k < 3; k++) {
        copies.dst[k] = device_alloc<floatX>(len[k] + guard);
        poison(copies.dst[k], (len[k] + guard) * sizeof(floatX));
        copies.begin[k] = begin[k];
        copies.n[k] = len[k];
    }
    int failures = 0;
    for (int s = 0; s < steps; s++) {
        fill_random(d_g, P, 910 + s, -0.02f, 0.02f);
        global_norm_squared(d_norm_sq, d_g, P, false, 0);
        double step_size, bc2_sqrt;
        adamw_scalars(s + 1, 5e-4, 0.9, 0.999, &step_size, &bc2_sqrt);
        adamw_update(d_p1, d_m1, d_v1, d_g, P, 5e-4, 0.9, 0.999, step_size, bc2_sqrt, 1e-8, 0.1, d_norm_sq, 1.0, 0);
        adamw_update(d_p2, d_m2, d_v2, d_g, P, 5e-4, 0.9, 0.999, step_size, bc2_sqrt, 1e-8, 0.1, d_norm_sq, 1.0, copies, 0);
    }
    std::vector<float> p1 = from_device(d_p1, P), p2 = from_device(d_p2, P);
    const bool same = memcmp(p1.data(), p2.data(), P * sizeof(float)) == 0;
    printf("  %s copies, %d steps: parameters bit-identical to variant 1: %s\n", type_name<floatX>(), steps, same ? "ok" : "FAIL");
    failures += !same;
    for (int k = 0; k < 3; k++) {
        std::vector<float> want(p2.begin() + begin[k], p2.begin() + begin[k] + len[k]);
        round_to_storage<floatX>(want.data(), len[k]);
        std::vector<float> got = from_device(copies.dst[k], len[k] + guard);
        size_t bad = 0, touched = 0;
        for (size_t j = 0; j < len[k]; j++) bad += memcmp(&got[j], &want[j], sizeof(float)) != 0;
        std::vector<floatX> tail(guard);
        cudaCheck(cudaMemcpy(tail.data(), copies.dst[k] + len[k], guard * sizeof(floatX), cudaMemcpyDeviceToHost));
        for (int j = 0; j < guard; j++) {
            unsigned char poisoned[sizeof(floatX)];
            memset(poisoned, 0xff, sizeof(floatX));
            touched += memcmp(&tail[j], poisoned, sizeof(floatX)) != 0;
        }
        printf("  %s copy %d (%zu at %zu): %zu differ from the rounded parameters, %zu guard elements written %s\n", type_name<floatX>(), k,
               len[k], begin[k], bad, touched, bad || touched ? "FAIL" : "ok");
        failures += bad > 0 || touched > 0;
        cudaCheck(cudaFree(copies.dst[k]));
    }
    for (float* d : {d_p1, d_p2, d_m1, d_v1, d_m2, d_v2, d_g, d_norm_sq}) cudaCheck(cudaFree(d));
    return failures;
}

int gpu_checks(int only) {
    printf("GPU checks:\n");
    int failures = 0;
    if (!only || only == 1) failures += run_checks();
    if (!only || only == 2) {
        failures += check_copies<bf16>(96, 4099, 3);  // odd sizes: no range starts or ends on a block or pack boundary
        failures += check_copies<float>(96, 4099, 3);
        failures += check_copies<bf16>(768, 46080, 2);
    }
    return failures;
}

int main(int argc, char** argv) { return bench_main(argc, argv, "adamw", 2, cpu_self_test, gpu_checks, timing); }
