/*
The learning-rate schedule (SPEC §5): linear warmup from 0, then cosine decay to
min_lr_factor * lr, both counted in optimizer updates. The very first update has lr 0
when there is any warmup, as in the reference library.
*/
#pragma once
#include <math.h>

// lr for update s (0-based: s updates already made); W, S in updates
inline double lr_at_step(double lr, long long s, long long W, long long S, double min_lr_factor) {
    if (s < W) return lr * (double)s / (double)(W > 1 ? W : 1);
    double p = (double)(s - W) / (double)(S - W > 1 ? S - W : 1);
    double m = min_lr_factor;
    double f = m + (1.0 - m) * 0.5 * (1.0 + cos(M_PI * p));
    return lr * (f > m ? f : m);
}
