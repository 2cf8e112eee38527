// The benches' random inputs (dev/cuda/common.h), host only, so that CPU-only tests
// (test/test_feature_dump_emulated.cpp) draw the same: a deterministic xorshift, the same inputs
// on every run for a given seed.
#pragma once
static unsigned long long dev_rng_state = 1337;
inline float rand_uniform() {  // [0,1)
    dev_rng_state ^= dev_rng_state >> 12; dev_rng_state ^= dev_rng_state << 25; dev_rng_state ^= dev_rng_state >> 27;
    return (float)((dev_rng_state * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0f;
}
