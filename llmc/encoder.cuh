/*
GPT-2 embedding: out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]. Forward only: the model is frozen and
no gradient flows into token ids, so there is no encoder backward. Token ids are trusted to be
< V (the data loader checks them).
*/
#pragma once
#include "cuda_common.cuh"

// one thread per output element; consecutive threads read consecutive channels of one row
template <typename floatX>
__global__ void encoder_forward_kernel(floatX* out, const int* inp, const floatX* wte, const floatX* wpe,
                                       int B, int T, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * C) return;
    size_t bt = idx / C;
    int c = (int)(idx % C);
    int t = (int)(bt % T);
    int token = inp[bt];
    out[idx] = from_float<floatX>(to_float(wte[(size_t)token * C + c]) + to_float(wpe[(size_t)t * C + c]));
}

// out (B,T,C), inp (B,T) token ids, wte (V,C), wpe (maxT,C) with T <= maxT
template <typename floatX>
void encoder_forward(floatX* out, const int* inp, const floatX* wte, const floatX* wpe,
                     int B, int T, int C, cudaStream_t stream) {
    size_t n = (size_t)B * T * C;
    if (n == 0) return;
    const int block_size = 256;
    encoder_forward_kernel<<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, wte, wpe, B, T, C);
    cudaLaunchCheck();
}
