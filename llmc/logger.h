/*
The JSON-lines training log (SPEC §8): one object per optimizer update, and one with
"eval": true per evaluation. Terms a mode does not compute are written as null.
Each line is flushed so a crashed run keeps its log.
*/
#pragma once
#include <math.h>
#include <string>
#include <vector>
#include "utils.h"

struct Logger {
    FILE* fp = nullptr;
    std::string path;
};

inline void logger_open(Logger* lg, const std::string& path, bool append) {
    lg->path = path;
    lg->fp = fopenCheck(path.c_str(), append ? "a" : "w");
}

inline void logger_close(Logger* lg) { if (lg->fp) fclose_check(lg->fp, lg->path.c_str()); lg->fp = nullptr; }

// ends a line: flushed, so a crashed run keeps its log, and checked, so a failed write (a full
// disk, /dev/full) stops the run with one line instead of losing the log
inline void logger_end_line(Logger* lg) {
    fprintf(lg->fp, "}\n");
    if (fflush(lg->fp) != 0 || ferror(lg->fp)) die("could not write the log '%s': %s", lg->path.c_str(), strerror(errno));
}

// a number, or null when NAN (a term the mode does not compute)
inline std::string json_num(double x) {
    if (isnan(x)) return "null";
    char buf[64];
    snprintf(buf, sizeof(buf), "%.9g", x);
    return buf;
}

struct StepLog {
    long long step; double lr, loss, kl, sparsity, mse, ds_mse, l0, grad_norm, tokens_per_s;
    long long alive;  // -1 unless an alive window closed at this step
};

inline void logger_log_step(Logger* lg, const StepLog& s) {
    if (!lg->fp) return;
    fprintf(lg->fp, "{\"step\": %lld, \"lr\": %s, \"loss\": %s, \"kl\": %s, \"sparsity\": %s, \"mse\": %s, \"ds_mse\": %s, "
                    "\"l0\": %s, \"grad_norm\": %s, \"tokens_per_s\": %s",
            s.step, json_num(s.lr).c_str(), json_num(s.loss).c_str(), json_num(s.kl).c_str(), json_num(s.sparsity).c_str(),
            json_num(s.mse).c_str(), json_num(s.ds_mse).c_str(), json_num(s.l0).c_str(), json_num(s.grad_norm).c_str(),
            json_num(s.tokens_per_s).c_str());
    if (s.alive >= 0) fprintf(lg->fp, ", \"alive_train\": %lld", s.alive);
    logger_end_line(lg);
}

// the step line, on stdout and in the log
inline void print_step(Logger* lg, const StepLog& s, long long S) {
    logger_log_step(lg, s);
    printf("step %5lld/%lld | loss %.6f | kl %s | sparsity %.5f | mse %.6f | L0 %.1f | gnorm %.4f | lr %.3e | %.0f tok/s%s\n", s.step, S,
           s.loss, json_num(s.kl).c_str(), s.sparsity, s.mse, s.l0, s.grad_norm, s.lr, s.tokens_per_s,
           s.alive >= 0 ? (" | alive " + std::to_string(s.alive)).c_str() : "");
}

// SPEC §6 metrics over the eval rows
struct EvalMetrics {
    double ce_clean = NAN, ce_spliced = NAN, kl = NAN, l0 = NAN, explained_variance = NAN, top1_agree = NAN, mse = NAN;
    long long alive = -1, dead = -1, alive_train = -1, tokens = 0;
    std::vector<double> ds_mse;  // per downstream layer (e2e+ds)
    std::vector<long long> fire_count;  // (D) eval tokens each feature fired on (the export's sparsity)
};

// what an eval adds up over its eval_rows rows of T tokens; eval_metrics_finish turns the sums
// into SPEC §6's metrics, the same way for both trainers
struct EvalSums {
    double ce_clean = 0, ce_spliced = 0, kl = 0, l0 = 0, explained_variance = 0, top1_agree = 0, mse = 0;
    std::vector<double> ds_mse;  // per downstream layer
    std::vector<long long> fire_count;  // (D) per feature
    long long tokens = 0;
};

inline EvalMetrics eval_metrics_finish(const EvalSums& s, int eval_rows, int T, int C, int D, long long alive_train) {
    EvalMetrics m;
    double ce_positions = (double)eval_rows * (T - 1);  // next-token CE stays within each row
    double tokens = (double)s.tokens;
    m.tokens = s.tokens;
    m.ce_clean = s.ce_clean / ce_positions;
    m.ce_spliced = s.ce_spliced / ce_positions;
    m.kl = s.kl / tokens;
    m.l0 = s.l0 / tokens;
    m.explained_variance = s.explained_variance / tokens;
    m.top1_agree = s.top1_agree / tokens;
    m.mse = s.mse / (tokens * C);
    m.alive = 0;
    for (long long n : s.fire_count) m.alive += n > 0;
    m.dead = D - m.alive;
    m.fire_count = s.fire_count;
    m.alive_train = alive_train;
    for (double ds : s.ds_mse) m.ds_mse.push_back(ds / (tokens * C));
    return m;
}

inline void logger_log_eval(Logger* lg, long long step, const EvalMetrics& e) {
    if (!lg->fp) return;
    fprintf(lg->fp, "{\"eval\": true, \"step\": %lld, \"tokens\": %lld, \"ce_clean\": %s, \"ce_spliced\": %s, \"ce_increase\": %s, "
                    "\"kl\": %s, \"l0\": %s, \"explained_variance\": %s, \"top1_agree\": %s, \"mse\": %s, \"alive\": %lld, \"dead\": %lld",
            step, e.tokens, json_num(e.ce_clean).c_str(), json_num(e.ce_spliced).c_str(), json_num(e.ce_spliced - e.ce_clean).c_str(),
            json_num(e.kl).c_str(), json_num(e.l0).c_str(), json_num(e.explained_variance).c_str(), json_num(e.top1_agree).c_str(),
            json_num(e.mse).c_str(), e.alive, e.dead);
    if (e.alive_train >= 0) fprintf(lg->fp, ", \"alive_train\": %lld", e.alive_train);
    if (!e.ds_mse.empty()) {
        fprintf(lg->fp, ", \"ds_mse\": [");
        for (size_t i = 0; i < e.ds_mse.size(); i++) fprintf(lg->fp, "%s%s", i ? ", " : "", json_num(e.ds_mse[i]).c_str());
        fprintf(lg->fp, "]");
    }
    logger_end_line(lg);
}

inline void print_eval(long long step, const EvalMetrics& e, int first_ds_layer) {
    printf("---- eval at step %lld over %lld tokens ----\n", step, e.tokens);
    printf("  CE clean       %.4f\n  CE spliced     %.4f\n  CE increase    %.4f\n", e.ce_clean, e.ce_spliced, e.ce_spliced - e.ce_clean);
    printf("  KL             %.5f\n  L0             %.2f\n  expl. variance %.4f\n  top-1 agree    %.4f\n  MSE            %.6g\n",
           e.kl, e.l0, e.explained_variance, e.top1_agree, e.mse);
    printf("  alive / dead   %lld / %lld (eval rows)\n", e.alive, e.dead);
    if (e.alive_train >= 0) printf("  alive (train)  %lld (last completed window)\n", e.alive_train);
    for (size_t i = 0; i < e.ds_mse.size(); i++) printf("  ds MSE L%-5zu  %.6g\n", first_ds_layer + i, e.ds_mse[i]);
    printf("--------------------------------------------\n");
}

// one SAE of a sweep: its eval on one line
inline void print_eval_line(const std::string& name, long long step, const EvalMetrics& e) {
    printf("eval at step %lld | %-14s | CE increase %.4f | KL %.5f | L0 %.2f | alive %lld/%lld | expl. var %.4f | MSE %.6g\n", step,
           name.c_str(), e.ce_spliced - e.ce_clean, e.kl, e.l0, e.alive, e.alive + e.dead, e.explained_variance, e.mse);
}

