/*
The SAE on the host, shared by both trainers: its parameter block (fp32 master copies, one
allocation: W_enc (C,D), b_enc (D), W_dec (D,C) raw, b_dec (C)) and the library's init (SPEC §3).
Files (the SAELens export, --init-sae, the training state) are in sae_io.h.
*/
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <vector>
#include "utils.h"

#define NUM_SAE_TENSORS 4
struct SAE {
    int C = 0, D = 0;
    size_t sizes[NUM_SAE_TENSORS];
    size_t num_parameters = 0;
    std::vector<float> memory;   // the block: W_enc, b_enc, W_dec, b_dec
    float* W_enc = nullptr;      // (C, D)
    float* b_enc = nullptr;      // (D)
    float* W_dec = nullptr;      // (D, C) raw; rows normalised in every forward
    float* b_dec = nullptr;      // (C)
};
static const char* SAE_TENSOR_NAMES[NUM_SAE_TENSORS] = {"W_enc", "b_enc", "W_dec", "b_dec"};

// points W_enc..b_dec into the block
inline void sae_bind(SAE* sae) {
    sae->W_enc = sae->memory.data();
    sae->b_enc = sae->W_enc + sae->sizes[0];
    sae->W_dec = sae->b_enc + sae->sizes[1];
    sae->b_dec = sae->W_dec + sae->sizes[2];
}

// W_enc (C,D) + b_enc (D) + W_dec (D,C) + b_dec (C)
inline size_t sae_num_parameters(int C, int D) { return 2 * (size_t)C * D + D + C; }

inline void sae_allocate(SAE* sae, int C, int D) {
    sae->C = C; sae->D = D;
    sae->sizes[0] = (size_t)C * D; sae->sizes[1] = D; sae->sizes[2] = (size_t)D * C; sae->sizes[3] = C;
    sae->num_parameters = sae_num_parameters(C, D);
    sae->memory.assign(sae->num_parameters, 0.0f);
    sae_bind(sae);
}

inline std::vector<int64_t> sae_tensor_shape(const SAE* sae, int i) {
    if (i == 0) return {sae->C, sae->D};
    if (i == 1) return {sae->D};
    if (i == 2) return {sae->D, sae->C};
    return {sae->C};
}

// ----------------------------------------------------------------------------
// init: nn.Linear defaults, then an orthogonal W_dec (SPEC §3)

inline double rng_uniform01(uint64_t* st) { return (double)(splitmix64(st) >> 11) * (1.0 / 9007199254740992.0); }

inline void sae_init_random(SAE* sae, uint64_t seed) {
    int C = sae->C, D = sae->D;
    uint64_t st = seed * 0x9E3779B97F4A7C15ULL + 0x5AE;
    float be = 1.0f / sqrtf((float)C), bd = 1.0f / sqrtf((float)D);
    for (size_t i = 0; i < sae->sizes[0]; i++) sae->W_enc[i] = (float)((2.0 * rng_uniform01(&st) - 1.0) * be);
    for (int i = 0; i < D; i++) sae->b_enc[i] = (float)((2.0 * rng_uniform01(&st) - 1.0) * be);
    for (int i = 0; i < C; i++) sae->b_dec[i] = (float)((2.0 * rng_uniform01(&st) - 1.0) * bd);
    // W_dec (D, C) with orthonormal columns: Gaussian matrix, then modified Gram-Schmidt over
    // its C columns (the Q of a QR with positive diagonal, which is what orthogonal_ returns
    // up to column signs). Columns are gathered so each inner loop is contiguous.
    std::vector<double> cols((size_t)C * D);  // cols[j*D + i] = W_dec[i][j]
    for (size_t k = 0; k < cols.size(); k += 2) {  // Box-Muller
        double u1 = rng_uniform01(&st), u2 = rng_uniform01(&st);
        double r = sqrt(-2.0 * log(u1 > 1e-300 ? u1 : 1e-300));
        cols[k] = r * cos(2 * M_PI * u2);
        if (k + 1 < cols.size()) cols[k + 1] = r * sin(2 * M_PI * u2);
    }
    if (D < C) printf("warning: d_sae %d < d_in %d: W_dec rows are made orthonormal instead of its columns\n", D, C);
    int ncols = D >= C ? C : D;  // if D < C orthonormalise the rows (the transpose), as orthogonal_ does
    int len = D >= C ? D : C;
    if (D < C) {  // regather as rows
        std::vector<double> rows((size_t)C * D);
        for (int i = 0; i < D; i++) for (int j = 0; j < C; j++) rows[(size_t)i * C + j] = cols[(size_t)j * D + i];
        cols.swap(rows);
    }
    // classical Gram-Schmidt applied twice ("CGS2"): as accurate as the modified form, and
    // each projection is parallel over the previous columns
    std::vector<double> dots(ncols);
    for (int j = 0; j < ncols; j++) {
        double* v = &cols[(size_t)j * len];
        for (int pass = 0; pass < 2; pass++) {
            #pragma omp parallel for schedule(static)
            for (int k = 0; k < j; k++) {
                const double* q = &cols[(size_t)k * len];
                double dot = 0.0;
                for (int i = 0; i < len; i++) dot += q[i] * v[i];
                dots[k] = dot;
            }
            #pragma omp parallel for schedule(static)
            for (int i = 0; i < len; i++) {
                double acc = v[i];
                for (int k = 0; k < j; k++) acc -= dots[k] * cols[(size_t)k * len + i];
                v[i] = acc;
            }
        }
        double nrm = 0.0;
        for (int i = 0; i < len; i++) nrm += v[i] * v[i];
        nrm = sqrt(nrm);
        for (int i = 0; i < len; i++) v[i] /= nrm;
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < C; j++)
            sae->W_dec[(size_t)i * C + j] = (float)(D >= C ? cols[(size_t)j * D + i] : cols[(size_t)i * C + j]);
}
