/*
llmc/flash_attention.cuh's kernels run on the CPU (test/cuda_host_emulation.h), through the
launchers in llmc/attention.cuh that the trainer calls, against a double reference: the simple
kernels in fp32 and bf16, and the tensor-core ones (FA2: mma.sync, ldmatrix, cp.async) in bf16,
forward and backward. An emulation, not a GPU run: it checks the kernels'
indexing, masking, tiling, double buffering and fragment layouts, on every machine, before a
device runs dev/cuda/attention.cu's checks of the same kernels.

Shapes (B,T,NH) at head size 64: (1,2,1) and (1,17,1) (one partial tile), (2,100,2) (two tiles,
two heads, two rows), (1,130,1) (three tiles, the last holding 2 rows). Inputs and dout uniform in
[-1, 1], rounded to the storage type. Bounds as dev/cuda/attention.cu's, |ours − ref| <=
tol·(|ref| + 0.1·max|ref|): lse 1e-5 (fp32 from the same rounded inputs: one key too many or too
few moves it by ~1/T); out and dinp 1e-5 in fp32, 2e-2 in bf16 (only out and dinp are rounded in
the simple kernels; the tensor-core ones also round P and dS to bf16 as mma operands, as FA2 does:
this emulation put them at 1.1e-2 at worst over these shapes and T = 300 and 1024). A wrong index
or mask is O(1).
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <random>
#include <stdio.h>
#include "cuda_host_emulation.h"
#include "attention.cuh"  // build/emu/llmc/: llmc's with its launches rewritten for the emulation (it includes flash_attention.cuh)

// out (B,T,C), lse (B,NH,T), dinp (B,T,3C) in double from inp (B,T,3C) and dout (B,T,C)
static void attention_reference(std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dinp, const std::vector<float>& inp,
                                const std::vector<float>& dout, int B, int T, int NH) {
    const int hs = FLASH_HS, C = NH * hs;
    const double scale = 1.0 / sqrt((double)hs);
    out.assign((size_t)B * T * C, 0.0); lse.assign((size_t)B * NH * T, 0.0); dinp.assign((size_t)B * T * 3 * C, 0.0);
    auto at = [&](int b, int t, int part, int h) { return ((size_t)b * T + t) * 3 * C + (size_t)part * C + (size_t)h * hs; };
    std::vector<double> p(T), dp(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, sum = 0.0;
                for (int s = 0; s <= t; s++) {
                    double dot = 0.0;
                    for (int d = 0; d < hs; d++) dot += (double)inp[at(b, t, 0, h) + d] * inp[at(b, s, 1, h) + d];
                    p[s] = dot * scale;
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s <= t; s++) { p[s] = exp(p[s] - mx); sum += p[s]; }
                for (int s = 0; s <= t; s++) p[s] /= sum;
                lse[((size_t)b * NH + h) * T + t] = mx + log(sum);
                const float* dy = &dout[((size_t)b * T + t) * C + (size_t)h * hs];
                double D = 0.0;
                for (int s = 0; s <= t; s++) {
                    dp[s] = 0.0;
                    for (int d = 0; d < hs; d++) {
                        out[((size_t)b * T + t) * C + (size_t)h * hs + d] += p[s] * inp[at(b, s, 2, h) + d];
                        dp[s] += (double)dy[d] * inp[at(b, s, 2, h) + d];
                        dinp[at(b, s, 2, h) + d] += p[s] * dy[d];
                    }
                    D += p[s] * dp[s];
                }
                for (int s = 0; s <= t; s++) {
                    const double ds = scale * p[s] * (dp[s] - D);
                    for (int d = 0; d < hs; d++) {
                        dinp[at(b, t, 0, h) + d] += ds * inp[at(b, s, 1, h) + d];
                        dinp[at(b, s, 1, h) + d] += ds * inp[at(b, t, 0, h) + d];
                    }
                }
            }
}

// the smallest tol with |x − ref| <= tol·(|ref| + 0.1·max|ref|) for every element (a NaN: infinity)
template <typename T>
static double tol_needed(const std::vector<T>& x, const std::vector<double>& ref) {
    double mx = 0.0, worst = 0.0;
    for (double r : ref) mx = fmax(mx, fabs(r));
    for (size_t i = 0; i < ref.size(); i++) {
        const double e = fabs((double)to_float(x[i]) - ref[i]) / (fabs(ref[i]) + 0.1 * mx);
        if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

// one shape through the simple kernels (tensor_cores false) or the tensor-core ones (bf16 only)
template <typename floatX>
static void check_flash(int B, int T, int NH, bool tensor_cores) {
    const int C = NH * FLASH_HS;
    const size_t n_inp = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C, n_lse = (size_t)B * NH * T;
    std::mt19937 rng(1000 * B + 10 * T + NH);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<floatX> inp(n_inp), dout(n_out), out(n_out, from_float<floatX>(NAN)), dinp(n_inp, from_float<floatX>(NAN));
    std::vector<float> inp_f(n_inp), dout_f(n_out), lse(n_lse, NAN), dsum(n_lse, NAN);
    for (size_t i = 0; i < n_inp; i++) { inp[i] = from_float<floatX>(U(rng)); inp_f[i] = to_float(inp[i]); }
    for (size_t i = 0; i < n_out; i++) { dout[i] = from_float<floatX>(U(rng)); dout_f[i] = to_float(dout[i]); }
    // the trainer's launchers: bf16 on tensor cores (FA2), the simple kernels otherwise
    if (tensor_cores) {
        flash_attention_forward(out.data(), lse.data(), inp.data(), B, T, C, NH, 0);
        flash_attention_backward(dinp.data(), dsum.data(), dout.data(), out.data(), inp.data(), lse.data(), B, T, C, NH, 0);
    } else {
        flash_attention_forward_simple(out.data(), lse.data(), inp.data(), B, T, C, NH, 0);
        flash_attention_backward_simple(dinp.data(), dsum.data(), dout.data(), out.data(), inp.data(), lse.data(), B, T, C, NH, 0);
    }
    std::vector<double> ref_out, ref_lse, ref_dinp;
    attention_reference(ref_out, ref_lse, ref_dinp, inp_f, dout_f, B, T, NH);
    const bool fp32 = std::is_same<floatX, float>::value;
    const double tol = fp32 ? 1e-5 : 2e-2;
    const double e_out = tol_needed(out, ref_out), e_lse = tol_needed(lse, ref_lse), e_dinp = tol_needed(dinp, ref_dinp);
    printf("measured: emulated flash %s %s B=%d T=%d NH=%d: out %.2e lse %.2e dinp %.2e (bounds %.0e, 1e-05, %.0e)\n",
           tensor_cores ? "tensor cores" : "simple", fp32 ? "fp32" : "bf16", B, T, NH, e_out, e_lse, e_dinp, tol, tol);
    INFO((tensor_cores ? "tensor cores " : "simple ") << (fp32 ? "fp32" : "bf16") << " B=" << B << " T=" << T << " NH=" << NH);
    CHECK(e_out <= tol);
    CHECK(e_lse <= 1e-5);
    CHECK(e_dinp <= tol);
}

static const int SHAPES[][3] = {{1, 2, 1}, {1, 17, 1}, {2, 100, 2}, {1, 130, 1}};

TEST_CASE("the simple flash kernels match the double reference in fp32 and bf16 (emulated on the CPU)", "[flash]") {
    for (const auto& s : SHAPES) {
        check_flash<float>(s[0], s[1], s[2], false);
        check_flash<bf16>(s[0], s[1], s[2], false);
    }
}

TEST_CASE("the tensor-core flash kernels (mma.sync, ldmatrix, cp.async) match the double reference in bf16 (emulated on the CPU)", "[flash]") {
    for (const auto& s : SHAPES) check_flash<bf16>(s[0], s[1], s[2], true);
}
