/*
The learning-rate schedule (SPEC §5): linear warmup from 0, then cosine decay to
min_lr_factor * lr, both counted in optimizer updates. The very first update has lr 0
when there is any warmup, as in the reference library. Also the run's cadence both trainers
follow: how many updates, when to save, when to eval.
*/
#pragma once
#include <math.h>
#include "train_config.h"

// lr for update s (0-based: s updates already made); W, S in updates
inline double lr_at_step(double lr, long long s, long long W, long long S, double min_lr_factor) {
    if (s < W) return lr * (double)s / (double)(W > 1 ? W : 1);
    double p = (double)(s - W) / (double)(S - W > 1 ? S - W : 1);
    double m = min_lr_factor;
    double f = m + (1.0 - m) * 0.5 * (1.0 + cos(M_PI * p));
    return lr * (f > m ? f : m);
}

// Adam's scalar factors for update number t (1 for the first), in double as PyTorch computes
// them in Python: step_size = lr / (1 − β1^t), bc2_sqrt = sqrt(1 − β2^t). Both trainers.
inline void adamw_scalars(int t, double lr, double beta1, double beta2, double* step_size, double* bc2_sqrt) {
    *step_size = lr / (1.0 - pow(beta1, (double)t));
    *bc2_sqrt = sqrt(1.0 - pow(beta2, (double)t));
}

// the run in updates: eff_batch rows each, W of warmup, S in the schedule
struct Schedule {
    long long eff_batch, W, S;
};

inline Schedule schedule_from_config(const TrainConfig& cfg) {
    long long eff_batch = (long long)cfg.batch * cfg.grad_accum;
    return {eff_batch, cfg.warmup_samples / eff_batch, cfg.samples / eff_batch};
}

// another update to make: not --eval-only, the schedule is not done and --max-steps not reached
inline bool keep_training(const Schedule& s, const TrainConfig& cfg, long long step) {
    return !cfg.eval_only && step < s.S && (cfg.max_steps < 0 || step < cfg.max_steps);
}

// the last update of the run: the end-of-run eval and save follow it, so the periodic ones skip it
inline bool is_last(const Schedule& s, const TrainConfig& cfg, long long step) { return step == s.S || step == cfg.max_steps; }

inline bool should_save(const TrainConfig& cfg, long long step, bool last) {
    return cfg.save_every > 0 && step % cfg.save_every == 0 && !last;
}

// every --eval-every training rows since the last eval
inline bool should_eval(const Schedule& s, const TrainConfig& cfg, long long step, long long last_eval_samples, bool last) {
    return cfg.eval_every > 0 && step * s.eff_batch - last_eval_samples >= cfg.eval_every && !last;
}
